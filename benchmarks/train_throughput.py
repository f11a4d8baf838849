"""Samples/s of robusthp's Lightning training path vs a plain PyTorch loop.

Same in-memory tensors, same model, same batch size, same optimizer; one epoch
of warm-up, then the median of ``--repeats`` timed epochs for each, interleaved
so that background load hits both alike. Target (issue #2): >= 0.95x at batch 32.

    python benchmarks/train_throughput.py [--samples 16384] [--threads 2]
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

from robusthp.data import TensorBatches, get_spec
from robusthp.experiment import RunSettings, TrainSettings, _build_trainer  # noqa: F401
from robusthp.lit_module import ClassifierModule
from robusthp.models import build_model
from robusthp.optim import build_optimizer, resolve_sgd

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    spec = get_spec("mnist")
    torch.manual_seed(seed)
    return build_model(name, in_channels=1, num_classes=10, image_size=28, mean=spec.mean, std=spec.std)


def plain_epoch(model, loader, optimizer) -> float:
    t0 = time.perf_counter()
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


class _EpochTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t0)


def lightning_epochs(name, loader, sgd, epochs: int) -> list[float]:
    """robusthp's training path: ClassifierModule + the Trainer flags runs use, no validation."""
    timer = _EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[timer],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50,
    )
    trainer.fit(ClassifierModule(make_model(name), sgd), train_dataloaders=loader)
    return timer.times[1:]  # drop the warm-up epoch


def measure(name: str, batch_size: int, samples: int, repeats: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (samples, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    loader = TensorBatches(x, y, batch_size, shuffle=True)
    sgd = resolve_sgd("lr", batch_size=batch_size, momentum=0.0)
    model = make_model(name)
    optimizer, _ = build_optimizer(model.parameters(), sgd)
    plain_epoch(model, loader, optimizer)  # warm-up
    plain, light = [], []
    for _ in range(repeats):
        plain.append(plain_epoch(model, loader, optimizer))
        light.extend(lightning_epochs(name, loader, sgd, epochs=2))
    return samples / statistics.median(plain), samples / statistics.median(light)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="stdcnn,m1")
    parser.add_argument("--batch-sizes", default="32,256")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, lightning {pl.__version__}, threads {torch.get_num_threads()}, "
          f"{args.samples} samples/epoch, median of {args.repeats} epochs each")
    print(f"{'model':8} {'batch':>6} {'plain/s':>10} {'lightning/s':>12} {'ratio':>7}")
    for name in args.models.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            plain, light = measure(name, bs, args.samples, args.repeats)
            print(f"{name:8} {bs:>6} {plain:>10.0f} {light:>12.0f} {light / plain:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
