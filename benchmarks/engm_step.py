"""ms per training step of ENGM (exact and cheap, robusthp.engm) vs momentum SGD, on CPU.

One step is what training pays: forward, backward, SGD step (momentum 0.9), plus for ENGM
its per-example weights: ``exact`` takes the per-example gradient norms (vmap, chunks of
64), ``cheap`` one input-gradient backward per step and the exact norms at every
``refit_every``-th step (100: each timed block of ``--steps`` = 100 steps holds one refit).
MNIST-shaped random data (N, 1, 28, 28) in [0, 1]. Each model's three variants start from
the same weights; every repeat times one block of each, in a rotated order, so that drift
hits all alike; the table gives the median ms/step over repeats and the median ratio to SGD.

    python benchmarks/engm_step.py [--models m1,stdcnn] [--batch-size 128] [--repeats 5]
                                   [--threads 2] [--steps 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.data import get_spec
from robusthp.engm import ExampleWeights, input_grad_norms, reweighted_loss
from robusthp.models import build_model
from robusthp.optim import build_optimizer, example_weights, resolve_sgd

VARIANTS = ("sgd", "engm exact", "engm cheap")
WARMUP = 3  # untimed steps per variant before the first repeat
REFIT_EVERY = 100


class Trainer:
    """One variant's model, optimizer and (for ENGM) example weights."""

    def __init__(self, variant: str, model: nn.Module, batch_size: int) -> None:
        self.model = model.train()
        if variant == "sgd":
            sgd = resolve_sgd("lr", batch_size, 0.9)
        else:
            sgd = resolve_sgd("engm", batch_size, 0.9, mode=variant.split()[1], refit_every=REFIT_EVERY)
        self.optimizer, _ = build_optimizer(model.parameters(), sgd)
        self.weights: ExampleWeights | None = example_weights(sgd)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.weights is None:
            loss = F.cross_entropy(self.model(x), y)
        else:
            # cheap: the input-gradient backward a PGD attack's last step would have done
            s = input_grad_norms(self.model, x, y) if self.weights.mode == "cheap" else None
            w = self.weights(self.model, x, y, input_norms=s)
            loss = reweighted_loss(self.model(x), y, w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def time_block(trainer: Trainer, batches: list, steps: int, first: int) -> float:
    """ms per step over ``steps`` steps, cycling through ``batches`` from ``first``."""
    t0 = time.perf_counter()
    for i in range(first, first + steps):
        trainer.step(*batches[i % len(batches)])
    return 1000 * (time.perf_counter() - t0) / steps


def bench_model(name: str, batches: list, batch_size: int, repeats: int, steps: int) -> dict:
    spec = get_spec("mnist")
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, image_size=28, mean=spec.mean, std=spec.std)
    trainers = {v: Trainer(v, copy.deepcopy(model), batch_size) for v in VARIANTS}
    for trainer in trainers.values():
        for x, y in batches[:WARMUP]:
            trainer.step(x, y)
    if trainers["engm cheap"].weights is not None:  # the block of steps starts at a refit
        trainers["engm cheap"].weights.calls = 0
    ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for v in order:
            ms[v].append(time_block(trainers[v], batches, steps, r * steps))
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="m1,stdcnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=REFIT_EVERY, help="timed steps per block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch_size, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (args.batch_size,), generator=gen)) for _ in range(10)]
    print(f"torch {torch.__version__}; {args.threads} threads; batch {args.batch_size}; "
          f"{args.steps} steps x {args.repeats} repeats; cheap refits every {REFIT_EVERY} steps")
    print(f"{'model':8} {'variant':11} {'ms/step':>9} {'vs sgd':>7}")
    for name in args.models.split(","):
        ms = bench_model(name, batches, args.batch_size, args.repeats, args.steps)
        for v in VARIANTS:
            ratio = statistics.median(a / b for a, b in zip(ms[v], ms["sgd"], strict=True))
            print(f"{name:8} {v:11} {statistics.median(ms[v]):>9.1f} {ratio:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
