"""Top Hessian eigenvalue: robusthp's Lanczos vs PyHessian's power iteration, same model and data.

For M1 and StdCNN, trained briefly on the first 1000 MNIST training images (so the Hessian is
that of a trained net), on those same 1000 images:

1. reference: Lanczos converged tightly (tol 1e-10, max_iter 200);
2. each backend at its defaults (tol 1e-3, max_iter 100): value, error, HVPs, time;
3. equal accuracy (``--target``, relative): from one traced run per backend (no tol stop;
   ``HessianResult.history`` holds the estimate after each Hessian-vector product, and
   the wall time at which each product finished is recorded):
   - the fewest products after which the estimate stays within the target, and the time
     at which that product had finished (the best case for each backend: it assumes you
     knew when to stop);
   - the largest tol that gives the target, i.e. what a user must set: PyHessian's stopping
     rule replayed on its trace (tol 1e-3, 1e-4, ...); Lanczos measured (tol 1e-1, 1e-2,
     1e-3). Lanczos's tol bounds the Ritz residual, whose square bounds the eigenvalue
     error, so it is far more accurate than PyHessian at the same tol.

Lanczos's advantage grows as lambda_2 / lambda_1 nears 1 (power iteration converges like
(lambda_2 / lambda_1)^(2k)); the script prints that ratio.

Both backends see the 1000 images as one batch, whose gradient graph they keep across
products (PyHessian's single-batch mode; with one batch ``top_eigenvalues`` keeps it
whatever ``reuse_graph`` says, the peak memory being that batch's graph either way). For
several batches, the bounded default against the kept graph: benchmarks/hessian_memory.py. Data: torchvision MNIST under $ROBUSTHP_DATA_DIR
or ../shared/datasets (download=False).

    python benchmarks/hessian.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from robusthp.hessian import HessianResult, pyhessian_relative_change, top_eigenvalues
from robusthp.models import build_model

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
TINY_TOL = 1e-12  # "never stop on tol": run exactly max_iter products


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--models", nargs="+", default=["m1", "stdcnn"])
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", type=float, default=1e-4, help="relative error to reach")
    p.add_argument("--trace-iters", type=int, default=400, help="PyHessian traced-run cap")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    root = os.environ.get("ROBUSTHP_DATA_DIR") or str(default)
    ds = MNIST(root, train=True, download=False)
    x = ds.data[:n].float().div(255).unsqueeze(1)  # (n, 1, 28, 28) in [0, 1]
    return x, ds.targets[:n].clone()


def train(name: str, x: torch.Tensor, y: torch.Tensor, args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = build_model(
        name, in_channels=1, num_classes=10, image_size=28, mean=MNIST_MEAN, std=MNIST_STD
    )
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.eval()
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(
        f"  trained {args.train_steps} SGD steps (lr {args.lr}, batch 64): "
        f"last loss {loss.item():.3f}, train acc {acc:.3f}"
    )
    return model


def rel_err(value: float, ref: float) -> float:
    return abs(value - ref) / abs(ref)


def hvps_to_reach(history: list[float], ref: float, target: float) -> int | None:
    """Fewest products after which every later estimate is within ``target`` of ``ref``."""
    k = None
    for i in range(len(history) - 1, -1, -1):
        if rel_err(history[i], ref) > target:
            break
        k = i + 1
    return k


@dataclass
class Traced:
    """A run, with the wall time (from the call) at which each HVP had finished."""

    result: HessianResult
    stamps: list[float]


def traced(model, data, **kwargs) -> Traced:
    stamps: list[float] = []
    start = time.perf_counter()
    r = top_eigenvalues(
        model, data, on_hvp=lambda _n: stamps.append(time.perf_counter() - start), **kwargs
    )
    return Traced(r, stamps)


def trace_pyhessian(model, data, lam: float, args) -> Traced:
    """PyHessian with no tol stop, long enough to show where it reaches the target.

    For a given seed its estimates are a prefix of any longer run's (and of any run with a
    tol): double max_iter until the target is reached with a few products to spare.
    """
    m = 32
    while True:
        t = traced(model, data, backend="pyhessian", tol=TINY_TOL, max_iter=m)
        k = hvps_to_reach(t.result.history, lam, args.target)
        if (k is not None and k + 4 <= m) or m >= args.trace_iters:
            return t
        m = min(2 * m, args.trace_iters)


def pyhessian_stop(history: list[float], tol: float) -> int:
    """How many products PyHessian (top_n=1) takes with this tol; it returns history[k - 2]."""
    for k in range(2, len(history) + 1):
        if pyhessian_relative_change(history[k - 2], history[k - 1]) < tol:
            return k
    raise ValueError("trace too short")


def pyhessian_tol_needed(trace: Traced, lam: float, target: float):
    """(tol, HVPs, value, seconds) for the largest tol in 1e-3..1e-8 that gives ``target``."""
    hist = trace.result.history
    for exp in range(3, 9):
        tol = 10.0**-exp
        try:
            k = pyhessian_stop(hist, tol)
        except ValueError:
            return None
        if rel_err(hist[k - 2], lam) <= target:
            return tol, k, hist[k - 2], trace.stamps[k - 1]
    return None


def line(label: str, value: float, ref: float, hvps: int, seconds: float) -> None:
    print(f"  {label:<50} {value:>12.6f} {rel_err(value, ref):>9.1e} {hvps:>5d} {seconds:>7.2f}")


def fewest_hvps(traces: dict[str, Traced], lam: float, target: float) -> dict:
    """Per backend (HVPs, seconds) at the first product after which it stays within target."""
    best = {}
    for backend, t in traces.items():
        k = hvps_to_reach(t.result.history, lam, target)
        if k is None:
            print(f"  {backend}: not within {target:g} after {t.result.num_hvp} HVPs")
            continue
        best[backend] = (k, t.stamps[k - 1])
        line(
            f"{backend} fewest HVPs to {target:g} (traced)",
            t.result.history[k - 1],
            lam,
            k,
            t.stamps[k - 1],
        )
    return best


def by_tolerance(model, data, traces, default: HessianResult, lam: float, target: float):
    """Per backend (HVPs, seconds) at the largest tol that gives the target (or None)."""
    knob = {"pyhessian": None, "lanczos": None}
    found = pyhessian_tol_needed(traces["pyhessian"], lam, target)
    if found is not None:
        tol, k, value, seconds = found
        line(f"pyhessian tol {tol:g}, largest to {target:g} (traced)", value, lam, k, seconds)
        knob["pyhessian"] = (k, seconds)
    for tol in (1e-1, 1e-2, 1e-3):  # lanczos: measured runs (tol 1e-3 is the default run)
        r = default if tol == 1e-3 else top_eigenvalues(model, data, backend="lanczos", tol=tol)
        if rel_err(r.top, lam) <= target:
            line(f"lanczos tol {tol:g}, largest to {target:g}", r.top, lam, r.num_hvp, r.seconds)
            knob["lanczos"] = (r.num_hvp, r.seconds)
            break
    return knob


def ratio(label: str, pyh, lan) -> None:
    if pyh and lan:
        print(
            f"  {label}: lanczos {pyh[1] / lan[1]:.1f}x faster, {pyh[0] / lan[0]:.1f}x fewer HVPs"
        )


def bench_model(name: str, x, y, args) -> None:
    print(f"\n=== {name} ({sum(p.numel() for p in build_params(name))} params) ===")
    model = train(name, x, y, args)
    data = [(x, y)]
    ref = traced(model, data, backend="lanczos", top_n=2, tol=1e-10, max_iter=200)
    lam, lam2 = ref.result.eigenvalues
    print(
        f"  reference (lanczos tol 1e-10): {lam:.8f}, {ref.result.num_hvp} HVPs, "
        f"{ref.result.seconds:.2f} s; second eigenvalue {lam2:.4f} (ratio {lam2 / lam:.3f}, "
        f"the power iteration's rate)"
    )
    print(
        f"  {'backend / setting':<50} {'eigenvalue':>12} {'rel err':>9} {'HVPs':>5} {'time s':>7}"
    )
    default = {}
    for backend in ("pyhessian", "lanczos"):
        default[backend] = r = top_eigenvalues(model, data, backend=backend)
        line(f"{backend} defaults (tol 1e-3, max_iter 100)", r.top, lam, r.num_hvp, r.seconds)
    traces = {"pyhessian": trace_pyhessian(model, data, lam, args), "lanczos": ref}
    best = fewest_hvps(traces, lam, args.target)
    knob = by_tolerance(model, data, traces, default["lanczos"], lam, args.target)
    ratio(f"at {args.target:g}, fewest HVPs each", best.get("pyhessian"), best.get("lanczos"))
    ratio(f"at {args.target:g}, largest tol each", knob["pyhessian"], knob["lanczos"])
    p, d = default["pyhessian"], default["lanczos"]
    print(
        f"  defaults: pyhessian takes {p.seconds / d.seconds:.1f}x lanczos's time, errors "
        f"{rel_err(p.top, lam):.1e} (pyhessian) vs {rel_err(d.top, lam):.1e} (lanczos)"
    )


def build_params(name: str):
    return build_model(
        name, in_channels=1, num_classes=10, image_size=28, mean=MNIST_MEAN, std=MNIST_STD
    ).parameters()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x, y = load_mnist(args.num_images)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"{len(y)} MNIST training images as one batch; target rel err {args.target:g}"
    )
    for name in args.models:
        bench_model(name, x, y, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
