"""Peak memory of Hessian-vector products: bounded (batch by batch) vs everything at once.

For C1 and ResNet18 (CIFAR form) on CIFAR-shaped synthetic data (seeded random [0, 1]
images, random labels; untrained nets: the memory and time of a product do not depend on
the weights), ``top_eigenvalues(backend=..., max_iter=K, tol=1e-12)`` makes exactly K
Hessian-vector products over the same ``--num-samples`` images, two ways:

- bounded: the images in batches of ``--batch-size``, ``reuse_graph=False`` (the default):
  each product runs batch by batch and frees each batch's graph;
- all-at-once: the images as one batch, ``reuse_graph=True``: the gradient graph of all
  images built once and kept across the products (the old path).

Each configuration runs in a fresh subprocess. Peak memory: ``ru_maxrss`` after the run
minus ``ru_maxrss`` after the model and data were made (the high-water mark the run added);
with ``--device cuda``, ``torch.cuda.max_memory_allocated`` minus the memory allocated
after the model and data were made (the tensors the run added, on the GPU).
Time: the whole call (graph building included); "per later HVP" is the mean time of the
products after the first, the cost per product of a long run. The configurations
alternate over ``--rounds`` rounds (machines shared with other jobs drift); the table
shows every run and the ratios bounded / all-at-once of the per-model medians.

``--alternatives`` instead compares two ways to make one batch's product (each in a fresh
subprocess, alternating): double backward (``torch.autograd.grad`` with create_graph,
then a second ``grad``; what robusthp uses) and forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad`` through ``torch.func.functional_call``).

    python benchmarks/hessian_memory.py                  # C1 and ResNet18, CPU, ~9 min
    python benchmarks/hessian_memory.py --models c1 --products 5 --rounds 2
    python benchmarks/hessian_memory.py --alternatives   # per-batch product, two ways
    python benchmarks/hessian_memory.py --device cuda --models resnet18 --num-samples 4096 \
        --products 3 --rounds 2                          # on a GPU (benchmarks/gpu_checks.sh)

Defaults sized for ~10 minutes on 2 CPU cores: C1 3 HVPs x 2 rounds (an HVP of 1024
images: ~10-14 s); ResNet18 1 HVP x 1 round (~150-210 s per HVP, and the all-at-once run
needs ~15 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CIFAR = {
    "in_channels": 3,
    "num_classes": 10,
    "image_size": 32,
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
}
PATHS = ("bounded", "all-at-once")
TINY_TOL = 1e-12  # never stop on tol: exactly max_iter products


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["c1", "resnet18"])
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=128, help="the bounded path's batches")
    p.add_argument(
        "--products",
        nargs="+",
        default=["c1=3", "resnet18=1"],
        help="HVPs per run: one number for every model, or model=K pairs",
    )
    p.add_argument("--rounds", nargs="+", default=["c1=2", "resnet18=1"],
                   help="rounds (each runs every path once): a number or model=R pairs")
    p.add_argument("--backend", default="lanczos", choices=["lanczos", "pyhessian"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: GPU allocations)")
    p.add_argument("--alternatives", action="store_true",
                   help="instead: double backward vs forward-over-reverse on one batch")
    p.add_argument("--alt-models", nargs="+", default=["c1", "resnet18"])
    p.add_argument("--alt-reps", type=int, default=3, help="products per alternative run")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # internal: one run
    return p.parse_args(argv)


def per_model(values: list[str], model: str) -> int:
    """``["3"]`` or ``["c1=3", "resnet18=1"]`` -> the number for ``model``."""
    for v in values:
        if "=" not in v:
            return int(v)
        name, n = v.split("=", 1)
        if name == model:
            return int(n)
    raise SystemExit(f"no value for model {model!r} in {values}")


def peak_mb(device: str = "cpu") -> float:
    """The process's high-water mark so far, MB: resident memory, or GPU allocations."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def allocated_mb(device: str) -> float:
    """What the run starts from: GPU memory in use now (CPU: the high-water mark so far)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return peak_mb(device)


# --------------------------------------------------------------------------- in a subprocess


def make(model_name: str, args):
    import torch

    from robusthp.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(model_name, **CIFAR).eval().to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.num_samples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.num_samples,), generator=g)
    return model, x.to(args.device), y.to(args.device)


def worker_run(model_name: str, path: str, products: int, args) -> dict:
    from robusthp.hessian import top_eigenvalues

    model, x, y = make(model_name, args)
    if path == "bounded":
        batches = list(zip(x.split(args.batch_size), y.split(args.batch_size), strict=True))
    else:
        batches = [(x, y)]
    base = allocated_mb(args.device)
    stamps: list[float] = []
    start = time.perf_counter()
    res = top_eigenvalues(
        model, batches, backend=args.backend, max_iter=products, tol=TINY_TOL,
        reuse_graph=path == "all-at-once",
        on_hvp=lambda _n: stamps.append(time.perf_counter() - start),
    )
    peak = peak_mb(args.device)  # synchronizes a GPU first
    seconds = time.perf_counter() - start
    return {
        "peak_mb": peak - base, "base_mb": base, "seconds": seconds,
        "stamps": stamps, "num_hvp": res.num_hvp, "top": res.top,
    }


def worker_alternative(model_name: str, method: str, reps: int, args) -> dict:
    """``reps`` products of one batch of ``--batch-size`` images by ``method``."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp

    model, x, y = make(model_name, args)
    x, y = x[: args.batch_size], y[: args.batch_size]
    named = dict(model.named_parameters())
    params = list(named.values())
    g = torch.Generator().manual_seed(args.seed + 1)
    v = [torch.randn(p.shape, generator=g).to(args.device) for p in params]

    def double_backward():
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return list(torch.autograd.grad(grads, params, v))

    primals = {n: p.detach() for n, p in named.items()}
    tangents = dict(zip(named, v, strict=True))

    def loss_of(ps):
        return F.cross_entropy(functional_call(model, ps, (x,)), y)

    def forward_over_reverse():
        return list(jvp(grad(loss_of), (primals,), (tangents,))[1].values())

    fn = {"double-backward": double_backward, "fwd-over-rev": forward_over_reverse}[method]
    base = allocated_mb(args.device)
    times, check = [], 0.0
    for _ in range(reps):
        t = time.perf_counter()
        hv = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        check = sum(float((h.double() * u.double()).sum()) for h, u in zip(hv, v, strict=True))
    return {"peak_mb": peak_mb(args.device) - base, "times": times, "vHv": check}


# --------------------------------------------------------------------------- driver


def spawn(args, *worker: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *worker,
           "--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size),
           "--backend", args.backend, "--threads", str(args.threads), "--seed", str(args.seed),
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:  # -9: most likely out of memory (all-at-once ResNet18: ~15 GB)
        raise SystemExit(f"worker {worker} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def later_mean(stamps: list[float]) -> float | None:
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.mean(gaps) if gaps else None


def fmt(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f}"


def alternatives(args) -> None:
    print(f"\n--- one batch of {args.batch_size}: double backward vs forward-over-reverse, "
          f"{args.alt_reps} products per run, fresh process each, alternating ---")
    print(f"{'model':<9} {'method':<16} {'peak MB':>8} {'first s':>8} {'later s (mean)':>15} "
          f"{'vHv':>14}")
    summary: dict = {}
    for name in args.alt_models:
        for rnd in range(2):
            order = ("double-backward", "fwd-over-rev")
            for method in order if rnd == 0 else order[::-1]:
                r = spawn(args, "alt", name, method, str(args.alt_reps))
                later = statistics.mean(r["times"][1:]) if len(r["times"]) > 1 else None
                summary.setdefault((name, method), []).append((r["peak_mb"], later))
                print(f"{name:<9} {method:<16} {r['peak_mb']:>8.0f} {r['times'][0]:>8.2f} "
                      f"{fmt(later):>15} {r['vHv']:>14.6e}", flush=True)
        (m_db, t_db), (m_fr, t_fr) = (
            [statistics.median(col) for col in zip(*summary[(name, m)], strict=True)]
            for m in ("double-backward", "fwd-over-rev")
        )
        print(f"{name:<9} fwd-over-rev / double-backward: memory {m_fr / m_db:.2f}x, "
              f"time per later product {t_fr / t_db:.2f}x (medians)")


def main() -> None:
    args = parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "run":
            out = worker_run(rest[0], rest[1], int(rest[2]), args)
        else:
            out = worker_alternative(rest[0], rest[1], int(rest[2]), args)
        print(json.dumps(out))
        return
    import torch

    start = time.perf_counter()
    where = (torch.cuda.get_device_name(args.device) + " (peak MB: GPU allocations)"
             if args.device.startswith("cuda") else "CPU (peak MB: resident memory)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {where}; {args.num_samples} "
          f"CIFAR-shaped synthetic images; backend {args.backend}; bounded = batches of "
          f"{args.batch_size}, reuse_graph=False; all-at-once = one batch, reuse_graph=True")
    if args.alternatives:
        alternatives(args)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return
    print(f"\n{'model':<9} {'path':<12} {'round':>5} {'HVPs':>4} {'peak MB':>8} {'seconds':>8} "
          f"{'1st HVP s':>9} {'per later HVP s':>15}")
    rows: dict = {}
    for name in args.models:
        products, rounds = per_model(args.products, name), per_model(args.rounds, name)
        for rnd in range(rounds):
            for path in PATHS if rnd % 2 == 0 else PATHS[::-1]:
                r = spawn(args, "run", name, path, str(products))
                rows.setdefault((name, path), []).append(r)
                print(f"{name:<9} {path:<12} {rnd + 1:>5} {r['num_hvp']:>4} {r['peak_mb']:>8.0f} "
                      f"{r['seconds']:>8.1f} {r['stamps'][0]:>9.1f} "
                      f"{fmt(later_mean(r['stamps'])):>15}", flush=True)
    print("\nratios bounded / all-at-once (medians over rounds):")
    print(f"{'model':<9} {'peak memory':>12} {'time (whole run)':>17} {'time per later HVP':>19}")
    for name in args.models:
        b, a = rows[(name, "bounded")], rows[(name, "all-at-once")]

        def med(runs, key):
            vals = [key(r) for r in runs]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        mem = med(b, lambda r: r["peak_mb"]) / med(a, lambda r: r["peak_mb"])
        tim = med(b, lambda r: r["seconds"]) / med(a, lambda r: r["seconds"])
        lb, la = med(b, lambda r: later_mean(r["stamps"])), med(a, lambda r: later_mean(r["stamps"]))
        later = f"{lb / la:.2f}x" if lb and la else "-"
        same = all(abs(r["top"] - a[0]["top"]) <= 1e-4 * abs(a[0]["top"]) for r in b + a)
        print(f"{name:<9} {mem:>11.2f}x {tim:>16.2f}x {later:>19}   "
              f"(same top estimate to 1e-4: {same})")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
