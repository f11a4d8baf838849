"""Top Hessian eigenvalue: robusthp's Lanczos vs PyHessian's power iteration, same model and data.

For M1 and StdCNN, trained briefly on the first 1000 MNIST training images (so the Hessian is
that of a trained net), on those same 1000 images:

1. reference: Lanczos from a random start converged tightly (tol 1e-10, max_iter 200);
2. each backend at its defaults (tol 1e-3, max_iter 100, seed 0): value, error, HVPs, time;
3. equal accuracy (``--target``, relative), over ``--seeds`` start vectors (seeds 0, 1, ...;
   per seed the backends run in turn: PyHessian, Lanczos with its default warm start,
   Lanczos from a random start (``warm_start=False``, the earlier default; ``--no-cold``
   skips it)). From one traced run per seed and backend (``HessianResult.history``: the
   estimate after each Hessian-vector product; the wall time at which each product
   finished is recorded from the start of the call, so the graph building and Lanczos's
   warm start are included):
   - the fewest products after which the estimate stays within the target, and the time at
     which that product had finished (the best case for each backend: it assumes you knew
     when to stop);
   - the largest tol that gives the target on every seed, i.e. what a user must set, and
     per seed the products and time a run with that tol takes: PyHessian's stopping rule
     replayed on its trace (tol 1e-3, 1e-4, ...), Lanczos's on its
     ``HessianResult.residual_history`` (tol 1e-1, 1e-2, 1e-3; a run with a tol stops at
     the first residual below it). Lanczos's tol bounds the Ritz residual, whose square
     bounds the eigenvalue error, so it is far more accurate than PyHessian at the same tol.
   Ratios are PyHessian's time / Lanczos's, the median of the per-seed ratios. One seed
   says little: on StdCNN, PyHessian needed 8 to 35 products over seeds 0-4.

Ways to make a product cheaper, measured on this kind of machine (1 CPU thread, 1000
images, per-product medians of alternated rounds; a product of the kept graph, the double
backward both backends use: StdCNN 1.3-1.4 s, M1 1.1 s): forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad`` through ``functional_call``) 2.2 s and 1.9 s
(it redoes the forward and backward every product: no graph to keep; batch by batch, where
the double backward redoes them too, 2.2 s vs 2.2 s and 1.9 s vs 2.0 s);
``torch.func.linearize`` 2.0 s (StdCNN); ``channels_last`` 1.11x faster on StdCNN, 0.92x
(slower) on M1; several vectors per pass (``is_grads_batched``, 4 vectors) 1.33 s per vector
vs 1.16 s one at a time (StdCNN, channels_last); oneDNN off 2.2-2.4x slower. ~90% of a
product is convolution kernels of the double backward running at 8-16 GFLOP/s, so a
product costs the same in both backends and what Lanczos gains is products.

Lanczos's advantage grows as lambda_2 / lambda_1 nears 1 (power iteration converges like
(lambda_2 / lambda_1)^(2k)); the script prints that ratio.

Both backends see the 1000 images as one batch, whose gradient graph they keep across
products (PyHessian's single-batch mode; with one batch ``top_eigenvalues`` keeps it
whatever ``reuse_graph`` says, the peak memory being that batch's graph either way), so a
product costs the same in both: the time ratio is the ratio of products (Lanczos's warm
start adds ~8 products on 125 images). For several batches, the bounded default against the
kept graph: benchmarks/hessian_memory.py. Data: torchvision MNIST under $ROBUSTHP_DATA_DIR
or ../shared/datasets (download=False). ~15 minutes on one CPU thread (5 seeds).

    python benchmarks/hessian.py --threads 1

With ``--spectrum`` only the cost of the spectrum beyond the top eigenvalue, on the same
models and 1000 images: per start seed, the top eigenvalue at the defaults (each backend),
the trace (Hutchinson, to ``--trace-tol`` relative standard error) and the density
(stochastic Lanczos quadrature, ``--density-vectors`` x ``--density-iter``, the settings'
defaults 1 x 20; PyHessian's are 1 x 100); each one's time over the top eigenvalue's (the callback's default
backend, pyhessian, and lanczos), medians over ``--seeds`` seeds. It also prints how far the
density of fewer Lanczos steps (the first k steps of the same run) is from that of
``--density-iter`` steps: the Wasserstein-1 distance of the two quadratures (the area
between their distribution functions) over the spectrum's span, and the largest relative
error of the top ``TOP_NODES`` nodes (the outliers). The L1 distance of smoothed densities
says little here: nearly all the weight is in the bulk near 0, resolved by any k.

    python benchmarks/hessian.py --threads 1 --spectrum --seeds 3

Measured (1 thread, AMD EPYC, a sweep sharing the 2 cores; medians over start seeds 0-2 of
per-seed ratios over PyHessian's top eigenvalue at its defaults, the callback's default
backend; over Lanczos's in brackets):

- trace to 5% relative standard error: M1 1.46x (4.43x), StdCNN 1.53x (2.91x). A product
  costs the same in all three, so the ratio is that of products: Hutchinson's per-vector
  spread (about 35% of the trace) sets it, and deflating the first 5-30 Lanczos vectors
  (Hutch++-like) cut the products needed by less than 1.5x on M1 (the spread is in the
  bulk, not the outliers).
- density, 1 vector x 20 steps: M1 1.21x (2.73x), StdCNN 1.90x (2.52x). At PyHessian's 1 x
  100: M1 5.4x, StdCNN 8.2x (seeds 0-1). The first 20 steps of a 100-step run give the same
  top-5 nodes (M1 to 1e-15; StdCNN to ~4e-6 of a 30-step run) and a distribution within
  <= 5e-4 of the span (W1): hence ``eval.hessian.density_iter`` 20 by default (30 measured
  3.2x on StdCNN).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from robusthp.hessian import (
    HessianResult,
    hessian_density,
    hessian_trace,
    pyhessian_relative_change,
    top_eigenvalues,
)
from robusthp.models import build_model
from robusthp.settings import HessianSettings

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
TINY_TOL = 1e-12  # "never stop on tol": run exactly max_iter products
PYHESSIAN_TOLS = tuple(10.0**-e for e in range(3, 9))  # 1e-3 ... 1e-8
LANCZOS_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
DENSITY_STEPS = (10, 20, 30, 40, 50, 60, 80)  # truncations compared with the full run
TOP_NODES = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--models", nargs="+", default=["m1", "stdcnn"])
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", type=float, default=1e-4, help="relative error to reach")
    p.add_argument("--trace-iters", type=int, default=400, help="PyHessian traced-run cap")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--seeds", type=int, default=5, help="start-vector seeds 0..N-1")
    p.add_argument("--no-cold", action="store_true", help="skip Lanczos from a random start")
    p.add_argument("--spectrum", action="store_true",
                   help="only the trace's and the density's cost over the top eigenvalue's")
    p.add_argument("--trace-tol", type=float, default=HessianSettings.trace_tol,
                   help="trace relative std error")
    p.add_argument("--density-vectors", type=int, default=HessianSettings.density_vectors,
                   help="SLQ start vectors (n_v)")
    p.add_argument("--density-iter", type=int, default=HessianSettings.density_iter,
                   help="SLQ Lanczos steps (iter); 100 (PyHessian's) also compares its first k")
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


def trace_pyhessian(model, data, lam: float, args, seed: int) -> Traced:
    """PyHessian with no tol stop, long enough to show where it reaches the target.

    For a given seed its estimates are a prefix of any longer run's (and of any run with a
    tol): double max_iter until the target is reached with a few products to spare.
    """
    m = 32
    while True:
        t = traced(model, data, backend="pyhessian", tol=TINY_TOL, max_iter=m, seed=seed)
        k = hvps_to_reach(t.result.history, lam, args.target)
        if (k is not None and k + 4 <= m) or m >= args.trace_iters:
            return t
        m = min(2 * m, args.trace_iters)


def trace_lanczos(model, data, lam: float, target: float, seed: int, warm: bool) -> Traced:
    """Lanczos run to tol 1e-3 (tighter if that does not reach ``target``): a run with a
    larger tol is a prefix of it (same seed, same start)."""
    for tol in LANCZOS_TOLS[2:]:
        t = traced(model, data, backend="lanczos", tol=tol, seed=seed, warm_start=warm)
        if hvps_to_reach(t.result.history, lam, target) is not None:
            return t
    return t


def pyhessian_stop(history: list[float], tol: float) -> int | None:
    """How many products PyHessian (top_n=1) takes with this tol; it returns history[k - 2]."""
    for k in range(2, len(history) + 1):
        if pyhessian_relative_change(history[k - 2], history[k - 1]) < tol:
            return k
    return None


def stop_at(trace: Traced, backend: str, tol: float):
    """(HVPs, value, seconds) of a run of ``backend`` with this tol, replayed on its trace."""
    hist = trace.result.history
    if backend == "pyhessian":
        k = pyhessian_stop(hist, tol)
        return None if k is None else (k, hist[k - 2], trace.stamps[k - 1])
    res = trace.result.residual_history
    k = next((i + 1 for i, r in enumerate(res) if r < tol), None)
    return None if k is None else (k, hist[k - 1], trace.stamps[k - 1])


def fewest(trace: Traced, lam: float, target: float):
    """(HVPs, value, seconds) at the first product after which it stays within target."""
    k = hvps_to_reach(trace.result.history, lam, target)
    return None if k is None else (k, trace.result.history[k - 1], trace.stamps[k - 1])


def largest_tol(traces: list[Traced], backend: str, lam: float, target: float):
    """The largest tol of the backend's grid that gives ``target`` on every trace, and the
    (HVPs, value, seconds) of each run with it; (None, []) if none does."""
    grid = PYHESSIAN_TOLS if backend == "pyhessian" else LANCZOS_TOLS
    for tol in grid:
        stops = [stop_at(t, backend, tol) for t in traces]
        if all(st is not None and rel_err(st[1], lam) <= target for st in stops):
            return tol, stops
    return None, []


def line(label: str, value: float, ref: float, hvps: int, seconds: float) -> None:
    print(f"  {label:<50} {value:>12.6f} {rel_err(value, ref):>9.1e} {hvps:>5d} {seconds:>7.2f}")


def per_seed_runs(model, data, lam: float, args) -> dict[str, list[Traced]]:
    """Per seed, in turn: PyHessian, Lanczos (warm start), Lanczos (random start)."""
    runs: dict[str, list[Traced]] = {"pyhessian": [], "lanczos": []}
    if not args.no_cold:
        runs["lanczos random start"] = []
    for seed in range(args.seeds):
        runs["pyhessian"].append(trace_pyhessian(model, data, lam, args, seed))
        runs["lanczos"].append(trace_lanczos(model, data, lam, args.target, seed, True))
        if not args.no_cold:
            t = trace_lanczos(model, data, lam, args.target, seed, False)
            runs["lanczos random start"].append(t)
    return runs


def table(
    title: str, stops: dict[str, list], runs: dict[str, list[Traced]], lam: float, label: str
) -> None:
    """Per seed HVPs (+ warm-start subsample HVPs, "w"), time and error; medians; ratios."""
    names = list(stops)
    print(f"  {title}")
    print("  seed " + "".join(f"| {n:>30} " for n in names))
    for seed in range(len(stops[names[0]])):
        row = []
        for n in names:
            st, warm = stops[n][seed], runs[n][seed].result.warm_hvp
            if st is None:
                row.append(f"| {'not reached':>30} ")
                continue
            hvps = f"{st[0]}+{warm}w" if warm else str(st[0])
            row.append(f"| {hvps:>7} HVPs {st[2]:>6.2f} s {rel_err(st[1], lam):>7.1e} ")
        print(f"  {seed:>4} " + "".join(row))
    med = []
    for n in names:
        ok = [st for st in stops[n] if st is not None]
        med.append(
            f"| {statistics.median(st[0] for st in ok):>7g} HVPs "
            f"{statistics.median(st[2] for st in ok):>6.2f} s {'':>7} "
            if ok
            else f"| {'-':>30} "
        )
    print("   med " + "".join(med))
    for n in names[1:]:
        pairs = [(p, q) for p, q in zip(stops["pyhessian"], stops[n], strict=True) if p and q]
        if pairs:
            r_t = statistics.median(p[2] / q[2] for p, q in pairs)
            r_h = statistics.median(p[0] / q[0] for p, q in pairs)
            print(
                f"  {label}: {n} {r_t:.2f}x faster than pyhessian, {r_h:.2f}x fewer full "
                f"HVPs (medians of {len(pairs)} per-seed ratios)"
            )


def bench_model(name: str, x, y, args) -> None:
    print(f"\n=== {name} ({sum(p.numel() for p in build_params(name))} params) ===")
    model = train(name, x, y, args)
    data = [(x, y)]
    ref = top_eigenvalues(
        model, data, backend="lanczos", top_n=2, tol=1e-10, max_iter=200, warm_start=False
    )
    lam, lam2 = ref.eigenvalues
    print(
        f"  reference (lanczos tol 1e-10): {lam:.8f}, {ref.num_hvp} HVPs, "
        f"{ref.seconds:.2f} s; second eigenvalue {lam2:.4f} (ratio {lam2 / lam:.3f}, "
        f"the power iteration's rate)"
    )
    print(
        f"  {'backend / setting (seed 0)':<50} {'eigenvalue':>12} {'rel err':>9} {'HVPs':>5} "
        f"{'time s':>7}"
    )
    default = {}
    for backend in ("pyhessian", "lanczos"):
        default[backend] = r = top_eigenvalues(model, data, backend=backend)
        label = f"{backend} defaults (tol 1e-3, max_iter 100)"
        line(
            label + (f" +{r.warm_hvp} warm" if r.warm_hvp else ""), r.top, lam, r.num_hvp, r.seconds
        )
    p, d = default["pyhessian"], default["lanczos"]
    print(
        f"  defaults: pyhessian takes {p.seconds / d.seconds:.1f}x lanczos's time, errors "
        f"{rel_err(p.top, lam):.1e} (pyhessian) vs {rel_err(d.top, lam):.1e} (lanczos)"
    )
    runs = per_seed_runs(model, data, lam, args)
    last = max(rel_err(t.result.history[-1], lam) for t in runs["pyhessian"])
    print(f"  pyhessian traced runs end within {last:.1e} of the reference (all seeds)")
    target = args.target
    table(
        f"fewest HVPs to {target:g}",
        {n: [fewest(t, lam, target) for t in ts] for n, ts in runs.items()},
        runs,
        lam,
        f"at {target:g}, fewest HVPs each",
    )
    stops, tols = {}, []
    for n, ts in runs.items():
        tol, stops[n] = largest_tol(ts, "pyhessian" if n == "pyhessian" else "lanczos", lam, target)
        tols.append(f"{n} {tol:g}" if tol else f"{n} none in its grid")
        if tol is None:
            stops[n] = [None] * len(ts)
    title = f"largest tol to {target:g} on every seed ({', '.join(tols)})"
    table(title, stops, runs, lam, f"at {target:g}, largest tol each")


def w1_over_span(nodes_a, weights_a, nodes_b, weights_b) -> float:
    """Wasserstein-1 distance of two discrete measures on the line, over b's span."""
    import numpy as np

    xs = np.sort(np.concatenate([nodes_a, nodes_b]))
    cdf = [np.array([np.asarray(w)[np.asarray(n) <= x].sum() for x in xs[:-1]])
           for n, w in ((nodes_a, weights_a), (nodes_b, weights_b))]
    return float(np.sum(abs(cdf[0] - cdf[1]) * np.diff(xs)) / (max(nodes_b) - min(nodes_b)))


def top_nodes_error(nodes, ref) -> float:
    """Largest relative error of the top TOP_NODES nodes against ``ref``'s."""
    a, b = sorted(nodes)[-TOP_NODES:], sorted(ref)[-TOP_NODES:]
    return max(abs(u - v) / abs(v) for u, v in zip(a, b, strict=True))


def bench_spectrum(name: str, x, y, args) -> None:
    """Time of the trace and the density over the top eigenvalue's, same model and data."""
    print(f"\n=== {name} ({sum(p.numel() for p in build_params(name))} params): spectrum ===")
    model = train(name, x, y, args)
    data = [(x, y)]
    ratios: dict[str, list[float]] = {}
    print(f"  {'seed':>4} {'pyhessian top':>16} {'lanczos top':>16} {'trace':>26} "
          f"{'density':>16}")
    for seed in range(args.seeds):
        top = {b: top_eigenvalues(model, data, backend=b, seed=seed) for b in backends_()}
        tr = hessian_trace(model, data, tol=args.trace_tol, seed=seed)
        de = hessian_density(model, data, n_v=args.density_vectors, iter=args.density_iter,
                             seed=seed)
        p, lz = top["pyhessian"], top["lanczos"]
        print(f"  {seed:>4} {p.top:>7.3f} {p.num_hvp:>3d}h {p.seconds:>4.1f}s "
              f"{lz.top:>7.3f} {lz.num_hvp:>3d}h {lz.seconds:>4.1f}s "
              f"{tr.trace:>8.2f}+-{tr.se:<6.2f} {tr.num_hvp:>3d}h {tr.seconds:>5.1f}s "
              f"{max(de.nodes[0]):>7.3f} {de.num_hvp:>3d}h {de.seconds:>5.1f}s")
        for what, t in (("trace", tr.seconds), ("density", de.seconds)):
            for backend, r in top.items():
                ratios.setdefault(f"{what} / top eigenvalue ({backend})", []).append(t / r.seconds)
        if seed == 0:
            parts = []
            for k in (k for k in DENSITY_STEPS if k < args.density_iter):
                nodes, weights = de.truncated(k)
                w1 = w1_over_span(nodes[0], weights[0], de.nodes[0], de.weights[0])
                cost = de.seconds * k / args.density_iter / top["pyhessian"].seconds
                parts.append(f"k={k}: W1/span {w1:.1e}, top-{TOP_NODES} nodes "
                             f"{top_nodes_error(nodes[0], de.nodes[0]):.1e}, ~{cost:.2f}x "
                             "pyhessian's top eigenvalue (the measured time per product)")
            print(f"  density of the first k steps vs all {args.density_iter} (seed 0, vector "
                  "0):\n    " + "\n    ".join(parts))
    for label, values in ratios.items():
        print(f"  {label}: {statistics.median(values):.2f}x (median of {len(values)} seeds; "
              f"{', '.join(f'{v:.2f}' for v in values)})")


def backends_() -> tuple[str, ...]:
    return ("pyhessian", "lanczos")


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
        (bench_spectrum if args.spectrum else bench_model)(name, x, y, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
