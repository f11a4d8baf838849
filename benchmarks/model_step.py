"""SGD steps/s of each MNIST model, one thread: memory format x in-place ReLU.

Why the models' defaults are what they are: ``channels_last`` (on by default on CPU,
``trainer.channels_last=auto``) and in-place ReLUs (always; same numbers, fewer large
allocations). For each model, four variants train from the same weights on the same
batches, interleaved round-robin (``--repeats`` rounds) so that the machine's drift hits
all alike; the table gives the median samples/s and each variant's median ratio to the
NCHW / out-of-place baseline, and checks that in-place ReLU leaves the weights bit-equal.

    python benchmarks/model_step.py [--models stdcnn,m1] [--batch-size 32] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from robusthp.data import get_spec
from robusthp.models import build_model
from robusthp.optim import build_optimizer, resolve_sgd

VARIANTS = [("nchw", False), ("nchw", True), ("channels_last", False), ("channels_last", True)]


@contextmanager
def relu_in_place(enabled: bool):
    """With ``enabled=False``, every ``F.relu(..., inplace=True)`` runs out of place."""
    original = F.relu
    if not enabled:
        F.relu = lambda x, inplace=False: original(x)
    try:
        yield
    finally:
        F.relu = original


def train(name: str, fmt: str, in_place: bool, x, y, batch_size: int, steps: int) -> tuple[float, torch.Tensor]:
    """(samples/s of ``steps`` SGD steps after 20 warm-up steps, the final flat weights)."""
    spec = get_spec("mnist")
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, image_size=28, mean=spec.mean, std=spec.std)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    optimizer, _ = build_optimizer(model.parameters(), resolve_sgd("lr", batch_size, 0.9))
    model.train()

    def run(first: int, count: int) -> None:
        for i in range(first, first + count):
            xb, yb = x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    with relu_in_place(in_place):
        run(0, 20)
        t0 = time.perf_counter()
        run(20, steps)
        rate = steps * batch_size / (time.perf_counter() - t0)
    return rate, torch.cat([p.detach().flatten() for p in model.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="stdcnn,m1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = (args.steps + 20) * args.batch_size
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    print(f"torch {torch.__version__}; 1 thread; batch {args.batch_size}; {args.steps} steps x {args.repeats} rounds")
    print(f"{'model':8} {'format':14} {'relu':12} {'samples/s':>10} {'vs base':>8}  in place vs out of place")
    for name in args.models.split(","):
        rates: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
        weights: dict[tuple[str, bool], torch.Tensor] = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                rate, weights[variant] = train(name, *variant, x, y, args.batch_size, args.steps)
                rates[variant].append(rate)
        base = rates[VARIANTS[0]]
        for fmt, in_place in VARIANTS:
            r = rates[(fmt, in_place)]
            ratio = statistics.median(a / b for a, b in zip(r, base, strict=True))
            same = ""
            if in_place:
                diff = (weights[(fmt, True)] - weights[(fmt, False)]).abs().max().item()
                gain = statistics.median(a / b for a, b in zip(r, rates[(fmt, False)], strict=True))
                same = f"{gain:.2f}x out of place; weights max |diff| {diff:.1e}"
            relu = "in place" if in_place else "out of place"
            print(f"{name:8} {fmt:14} {relu:12} {statistics.median(r):>10.0f} {ratio:>8.2f}  {same}", flush=True)


if __name__ == "__main__":
    main()
