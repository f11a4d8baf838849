"""Samples/s of robusthp's Lightning training path vs a plain PyTorch loop.

Same in-memory tensors, same model (same initial weights), same batch size, same
optimizer and batch order: each repeat trains a fresh copy for two epochs in each
path and times the second (the first warms up), interleaved so that background
load hits both alike; the median over ``--repeats`` is reported, and the ratio is the median of the
per-repeat (paired) ratios. Both paths then
do the same arithmetic (checked: the final training loss agrees).
Both in channels_last by default, the layout runs use on the CPU (``--nchw``: the other).
Target: >= 0.95x at batch 32 (training adds at most 5% over a plain loop).

    python benchmarks/train_throughput.py [--samples 16384] [--threads 2] [--nchw]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from robusthp.data import DataSettings, StepChunks, TensorBatches, get_spec
from robusthp.lit_module import ClassifierModule
from robusthp.models import build_model
from robusthp.optim import build_optimizer, resolve_sgd

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def make_model(name: str, seed: int = 0, channels_last: bool = False) -> torch.nn.Module:
    spec = get_spec("mnist")
    torch.manual_seed(seed)
    model = build_model(name, in_channels=1, num_classes=10, image_size=28, mean=spec.mean, std=spec.std)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def plain_epochs(name, loader, sgd, epochs: int, channels_last: bool) -> tuple[list[float], float]:
    """The plain PyTorch loop: per-epoch times and the last loss."""
    model = make_model(name, channels_last=channels_last)
    optimizer, _ = build_optimizer(model.parameters(), sgd)
    model.train()
    times = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - t0)
    return times, _weights_norm(model)


class _EpochTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t0)


def lightning_epochs(name, loader, sgd, epochs: int, channels_last: bool) -> tuple[list[float], float]:
    """robusthp's training path: ClassifierModule fed StepChunks of the default size, as runs
    are, and the Trainer flags runs use; no validation."""
    timer = _EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[timer],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50,
    )
    module = ClassifierModule(make_model(name, channels_last=channels_last), sgd)
    trainer.fit(module, train_dataloaders=StepChunks(loader, DataSettings().steps_per_call))
    return timer.times, _weights_norm(module.model)


def _weights_norm(model: torch.nn.Module) -> float:
    """A fingerprint of the trained weights: equal in both paths when they did the same steps."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))


def measure(name: str, batch_size: int, samples: int, repeats: int, channels_last: bool):
    """(plain samples/s, lightning samples/s, relative weight difference) for one setting."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (samples, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    loader = TensorBatches(x, y, batch_size, shuffle=True, channels_last=channels_last)
    sgd = resolve_sgd("lr", batch_size=batch_size, momentum=0.0)
    plain, light = [], []
    for _ in range(repeats):
        times, plain_w = plain_epochs(name, loader, sgd, 2, channels_last)
        plain.append(times[-1])  # the first epoch warms up
        times, light_w = lightning_epochs(name, loader, sgd, 2, channels_last)
        light.append(times[-1])
    diff = abs(plain_w - light_w) / plain_w
    # paired: each repeat's two epochs ran back to back, so their ratio cancels slow drifts of
    # this shared machine's speed; the median over repeats drops the outliers
    ratio = statistics.median(p / q for p, q in zip(plain, light, strict=True))
    return samples / statistics.median(plain), samples / statistics.median(light), ratio, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="stdcnn,m1")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--nchw", action="store_true",
                        help="both paths in NCHW (default: channels_last, as runs on the CPU: "
                             "trainer.channels_last=auto)")
    args = parser.parse_args()
    args.channels_last = not args.nchw
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, lightning {pl.__version__}, threads {torch.get_num_threads()}, "
          f"{args.samples} samples/epoch, channels_last {args.channels_last}, "
          f"median of {args.repeats} repeats")
    print(f"{'model':8} {'batch':>6} {'plain/s':>10} {'lightning/s':>12} {'ratio':>7} {'weights differ':>15}")
    print("(samples/s: medians; ratio: median of the paired per-repeat ratios lightning/plain;"
          " weights differ: relative, after the same steps)")
    for name in args.models.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            plain, light, ratio, diff = measure(name, bs, args.samples, args.repeats, args.channels_last)
            print(f"{name:8} {bs:>6} {plain:>10.0f} {light:>12.0f} {ratio:>7.3f} {diff:>15.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
