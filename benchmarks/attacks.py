"""PGD-40 throughput: robusthp.attacks.pgd vs torchattacks.PGD on the same model and inputs;
then the cost and strength of the minimal-perturbation curve (robusthp.attacks.minimal_eps).

Both PGDs run without random start at eps 0.3 with the same alpha (robusthp's default,
2.5 * eps / steps = 0.01875), on M1 and StdCNN built by robusthp.models (MNIST
shapes). Each model is first trained briefly on real MNIST if it is found
(``$ROBUSTHP_DATA_DIR`` or ``../shared/datasets``); otherwise it keeps random weights
and the table says so. The two attacks alternate batch by batch (which one goes first
alternates too), so load from other processes hits both alike.

The curve section (StdCNN by default, the same trained weights) times one PGD-40 pass
at eps 0.3 against ``minimal_eps`` (eps_max 0.6, the callback's default of twice the
largest eps) + ``robustness_curve`` + ``min_eps_summary`` on 1,000 test images, the two
alternating over a few repeats (median of each; target: ratio <= 3), and
prints the curve's accuracy at the listed eps next to PGD-40's at each (the curve should
be no weaker than PGD-40: curve <= PGD-40 + 0.005).

    python benchmarks/attacks.py            # ~5 min on 2 CPU cores
    python benchmarks/attacks.py --quick    # fewer images and training steps
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from robusthp.attacks import (
    DEFAULT_PGD_STEPS,
    default_alpha,
    min_eps_summary,
    minimal_eps,
    pgd,
    robustness_curve,
)
from robusthp.models import build_model

EPS, STEPS = 0.3, DEFAULT_PGD_STEPS  # 40
CURVE_EPS = (0.05, 0.1, 0.15, 0.2, 0.3)  # where the curve is compared with PGD-40
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
REPO = Path(__file__).resolve().parents[1]


def mnist_root() -> Path | None:
    for root in (os.environ.get("ROBUSTHP_DATA_DIR"), REPO.parent / "shared" / "datasets"):
        if root and (Path(root) / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
            return Path(root)
    return None


def load_mnist(root: Path | None, n_test: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(x_test, y_test, x_train, y_train) in [0, 1]; random images when there is no MNIST."""
    if root is None:
        gen = torch.Generator().manual_seed(0)
        return torch.rand(n_test, 1, 28, 28, generator=gen), torch.randint(0, 10, (n_test,), generator=gen), None, None
    from torchvision.datasets import MNIST

    def tensors(train: bool) -> tuple[Tensor, Tensor]:
        ds = MNIST(str(root), train=train, download=False)
        return ds.data.unsqueeze(1).float().div(255), ds.targets  # (N, 1, 28, 28), (N,)

    x_train, y_train = tensors(train=True)
    x_test, y_test = tensors(train=False)
    return x_test[:n_test], y_test[:n_test], x_train, y_train


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int = 64) -> float:
    """Plain SGD (lr 0.05, momentum 0.9); returns seconds taken."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
    """Seconds and adversarial correct counts of both PGDs, alternating per batch."""
    model.eval()
    alpha = default_alpha(EPS, STEPS)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=STEPS, random_start=False)
    ours = lambda bx, by: pgd(model, bx, by, eps=EPS, alpha=alpha, steps=STEPS)  # noqa: E731
    ours(x[:8], y[:8]), theirs(x[:8], y[:8])  # warm-up
    stats = {"t_ours": 0.0, "t_theirs": 0.0, "ok_ours": 0, "ok_theirs": 0, "max_diff": 0.0}
    for i, (bx, by) in enumerate(zip(x.split(batch_size), y.split(batch_size), strict=True)):
        order = [("ours", ours), ("theirs", theirs)]
        adv = {}
        for name, attack in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            adv[name] = attack(bx, by)
            stats[f"t_{name}"] += time.perf_counter() - start
        with torch.no_grad():
            for name in adv:
                stats[f"ok_{name}"] += int((model(adv[name]).argmax(1) == by).sum())
        stats["max_diff"] = max(stats["max_diff"], (adv["ours"] - adv["theirs"]).abs().max().item())
    with torch.no_grad():
        stats["clean"] = int((model(x).argmax(1) == y).sum())
    return stats


def bench_curve(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, eps_max: float, repeats: int
) -> dict[str, object]:
    """Median seconds of one PGD-40 pass at EPS and of minimal_eps + curve (alternating),
    and accuracies at CURVE_EPS of both."""
    model.eval()
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))

    def pgd_pass(eps: float) -> float:
        correct = 0
        for bx, by in batches:
            adv = pgd(model, bx, by, eps=eps)  # last iterate, no random start (the default)
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == by).sum())
        return correct / len(y)

    def curve_pass() -> tuple[Tensor, dict[str, object]]:
        eps_star = torch.cat([minimal_eps(model, bx, by, eps_max=eps_max) for bx, by in batches])
        return robustness_curve(eps_star, CURVE_EPS), min_eps_summary(eps_star, eps_max)

    times: dict[str, list[float]] = {"pgd": [], "curve": []}
    jobs = [("pgd", lambda: pgd_pass(EPS)), ("curve", curve_pass)]
    out = {}
    for i in range(repeats):
        for name, job in jobs if i % 2 == 0 else jobs[::-1]:
            start = time.perf_counter()
            out[name] = job()
            times[name].append(time.perf_counter() - start)
    curve, summary = out["curve"]
    return {
        "t_pgd": statistics.median(times["pgd"]), "t_curve": statistics.median(times["curve"]),
        "times": times, "curve": curve.tolist(), "summary": summary,
        "pgd": [out["pgd"] if eps == EPS else pgd_pass(eps) for eps in CURVE_EPS],
    }


def print_curve(name: str, n_images: int, eps_max: float, s: dict[str, object]) -> None:
    t_pgd, t_curve = s["t_pgd"], s["t_curve"]
    summary = s["summary"]
    print(f"\nminimal_eps curve vs PGD-{STEPS}: {name}, {n_images} MNIST test images, eps_max {eps_max:g} "
          f"(pixels), {len(s['times']['pgd'])} alternating repeats")
    print(f"  PGD-{STEPS} at eps {EPS:g}: {t_pgd:.1f} s   minimal_eps + curve: {t_curve:.1f} s   "
          f"ratio {t_curve / t_pgd:.2f}x (target <= 3)")
    print("  all times (s): pgd " + ", ".join(f"{t:.1f}" for t in s["times"]["pgd"])
          + "; curve " + ", ".join(f"{t:.1f}" for t in s["times"]["curve"]))
    print(f"  median eps* {summary['median_min_eps']:.4f}, AUC {summary['min_eps_auc']:.4f}, "
          f"above eps_max {summary['min_eps_above_max']:.4f}, clean {summary['min_eps_curve']['acc'][0]:.4f}")
    print(f"  {'eps':>6} {'PGD-40 acc':>10} {'curve acc':>10} {'curve - PGD':>12}")
    for eps, acc_pgd, acc_curve in zip(CURVE_EPS, s["pgd"], s["curve"], strict=True):
        flag = "" if acc_curve <= acc_pgd + 0.005 else "  WEAKER than PGD-40"
        print(f"  {eps:6g} {acc_pgd:10.4f} {acc_curve:10.4f} {acc_curve - acc_pgd:+12.4f}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images in batches of 32, 100 training steps")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: one core per process, as the parallel sweeps run)")
    parser.add_argument("--curve-models", default="stdcnn", help="comma-separated models for the minimal_eps section ('' to skip)")
    parser.add_argument("--curve-images", type=int, default=1000)
    parser.add_argument("--curve-batch-size", type=int, default=500)
    parser.add_argument("--eps-max", type=float, default=2 * EPS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images, train_steps = (64, 100) if args.quick else (args.n_images, args.train_steps)
    batch_size = 32 if args.quick else args.batch_size

    curve_models = [m for m in args.curve_models.split(",") if m]
    n_curve, repeats = (128, 1) if args.quick else (args.curve_images, args.repeats)
    root = mnist_root()
    x_all, y_all, x_train, y_train = load_mnist(root, max(n_images, n_curve))
    x, y = x_all[:n_images], y_all[:n_images]
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"{torch.get_num_threads()} threads, {n_images} MNIST test images, batch {batch_size}")
    print(f"PGD-{STEPS}, L-inf eps {EPS}, alpha {default_alpha(EPS, STEPS):g}, no random start")
    print("weights: " + (f"trained {train_steps} SGD steps on MNIST ({root})" if root else
                         "RANDOM (no MNIST found; set ROBUSTHP_DATA_DIR)"))
    header = f"{'model':8} {'train s':>7} {'clean':>6} {'robusthp img/s':>14} {'torchattacks img/s':>18} {'ratio':>6}  {'adv acc (ours/theirs)':>22}  identical"
    print(header)
    curves = {}
    for name in ("m1", "stdcnn"):
        torch.manual_seed(0)
        model = build_model(name, in_channels=1, num_classes=10, image_size=28, mean=MNIST_MEAN, std=MNIST_STD)
        t_train = train(model, x_train, y_train, train_steps) if x_train is not None else 0.0
        s = bench(model, x, y, batch_size)
        ours, theirs = n_images / s["t_ours"], n_images / s["t_theirs"]
        same = s["ok_ours"] == s["ok_theirs"]
        accs = f"{s['ok_ours'] / n_images:.4f}/{s['ok_theirs'] / n_images:.4f}"
        print(f"{name:8} {t_train:7.1f} {s['clean'] / n_images:6.3f} {ours:14.1f} {theirs:18.1f} "
              f"{ours / theirs:5.2f}x  {accs:>22}  {'yes' if same else 'NO'} (max |diff| {s['max_diff']:.1e})")
        if name in curve_models:
            curves[name] = bench_curve(model, x_all[:n_curve], y_all[:n_curve], args.curve_batch_size,
                                       args.eps_max, repeats)
    for name, s in curves.items():
        print_curve(name, n_curve, args.eps_max, s)


if __name__ == "__main__":
    main()
