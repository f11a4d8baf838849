"""PGD-40 throughput: robusthp.attacks.pgd vs torchattacks.PGD on the same model and inputs.

Both run without random start at eps 0.3 with the same alpha (robusthp's default,
2.5 * eps / steps = 0.01875), on M1 and StdCNN built by robusthp.models (MNIST
shapes). Each model is first trained briefly on real MNIST if it is found
(``$ROBUSTHP_DATA_DIR`` or ``../shared/datasets``); otherwise it keeps random weights
and the table says so. The two attacks alternate batch by batch (which one goes first
alternates too), so load from other processes hits both alike.

    python benchmarks/attacks.py            # ~1-2 min on 2 CPU cores
    python benchmarks/attacks.py --quick    # fewer images and training steps
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from robusthp.attacks import DEFAULT_PGD_STEPS, default_alpha, pgd
from robusthp.models import build_model

EPS, STEPS = 0.3, DEFAULT_PGD_STEPS  # 40
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images in batches of 32, 100 training steps")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: one core per process, as the parallel sweeps run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images, train_steps = (64, 100) if args.quick else (args.n_images, args.train_steps)
    batch_size = 32 if args.quick else args.batch_size

    root = mnist_root()
    x, y, x_train, y_train = load_mnist(root, n_images)
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"{torch.get_num_threads()} threads, {n_images} MNIST test images, batch {batch_size}")
    print(f"PGD-{STEPS}, L-inf eps {EPS}, alpha {default_alpha(EPS, STEPS):g}, no random start")
    print("weights: " + (f"trained {train_steps} SGD steps on MNIST ({root})" if root else
                         "RANDOM (no MNIST found; set ROBUSTHP_DATA_DIR)"))
    header = f"{'model':8} {'train s':>7} {'clean':>6} {'robusthp img/s':>14} {'torchattacks img/s':>18} {'ratio':>6}  {'adv acc (ours/theirs)':>22}  identical"
    print(header)
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


if __name__ == "__main__":
    main()
