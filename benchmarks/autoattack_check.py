"""Cross-check of robusthp's AutoAttack on trained models: its robust accuracy must be
<= PGD-100 with 5 random restarts + 0.01, and it should be no weaker than torchattacks'
own ``AutoAttack`` (whose APGD, APGD-T and FAB run 10 iterations, not the reference's 100).

For each finished run directory given (``results.json`` + ``model.pt``, e.g. the cells of
a sweep), on the first ``--num-samples`` test points at one eps and reading, it prints
the accuracy and time of: clean, PGD-40 (the paper's single run, as
``AdversarialRobustness`` runs it), PGD-100 x 5 restarts (random starts), robusthp's
``autoattack``, ``torchattacks.AutoAttack`` and, with ``--reference DIR`` (a checkout of
the reference implementation, fra31/auto-attack, whose ``autoattack`` package is imported
from there), the reference's ``AutoAttack(version="standard")``.

    python benchmarks/autoattack_check.py outputs/sweeps/<sweep>/<cell> --eps 0.3 --space normalized
    python benchmarks/autoattack_check.py RUN [RUN ...] --num-samples 500 --reference ~/auto-attack
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from robusthp.attacks import autoattack, default_alpha, pgd
from robusthp.config import settings_from_config
from robusthp.data import ImageDataModule
from robusthp.experiment import build_model_for


def load_run(run_dir: Path) -> tuple[torch.nn.Module, object]:
    record = json.loads((run_dir / "results.json").read_text())
    cfg = OmegaConf.create(record["config"])
    if os.environ.get("ROBUSTHP_DATA_DIR"):
        OmegaConf.update(cfg, "data.root", os.environ["ROBUSTHP_DATA_DIR"], force_add=True)
    settings = settings_from_config(cfg)
    model = build_model_for(settings)
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), settings


def test_points(settings, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = ImageDataModule(settings.data)
    data.setup("test")
    xs, ys, seen = [], [], 0
    for x, y in data.test_dataloader():
        xs.append(x.float())
        ys.append(y)
        seen += len(y)
        if seen >= n:
            break
    return torch.cat(xs)[:n].contiguous(), torch.cat(ys)[:n]


def pixel_eps(model: torch.nn.Module, eps: float, space: str) -> float | torch.Tensor:
    if space == "pixel":
        return eps
    from robusthp.models.normalize import Normalize

    std = next(m.std.flatten() for m in model.modules() if isinstance(m, Normalize))
    box = eps * std.view(-1, 1, 1)
    return float(box[0]) if len(set(box.flatten().tolist())) == 1 else box


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def reference_autoattack(path: str, model, x, y, eps: float, num_classes: int) -> torch.Tensor:
    sys.path.insert(0, path)
    module = importlib.import_module("autoattack")
    attack = module.AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu",
                               verbose=False, seed=0)
    return attack.run_standard_evaluation(x, y, bs=len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--space", choices=("pixel", "normalized"), default="normalized")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reference", default=None, help="a checkout of fra31/auto-attack")
    parser.add_argument("--skip-torchattacks", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"eps {args.eps:g} ({args.space} reading), first {args.num_samples} test points, "
          f"{torch.get_num_threads()} threads; accuracy (seconds)")
    for run in args.runs:
        model, settings = load_run(run)
        x, y = test_points(settings, args.num_samples)
        eps = pixel_eps(model, args.eps, args.space)
        rows = {"clean": (accuracy(model, x, y), 0.0)}
        adv, t = timed(pgd, model, x, y, eps=eps, steps=40, alpha=default_alpha(eps, 40))
        rows["pgd40"] = (accuracy(model, adv, y), t)
        adv, t = timed(pgd, model, x, y, eps=eps, steps=100, random_start=True, restarts=5,
                         generator=torch.Generator().manual_seed(0))
        rows["pgd100x5"] = (accuracy(model, adv, y), t)
        adv, t = timed(autoattack, model, x, y, eps=eps)
        rows["autoattack"] = (accuracy(model, adv, y), t)
        if not args.skip_torchattacks and not isinstance(eps, torch.Tensor):
            import torchattacks

            adv, t = timed(torchattacks.AutoAttack(model, eps=eps, n_classes=10, seed=0), x, y)
            rows["torchattacks_aa"] = (accuracy(model, adv, y), t)
        if args.reference and not isinstance(eps, torch.Tensor):
            adv, t = timed(reference_autoattack, args.reference, model, x, y, eps, 10)
            rows["reference_aa"] = (accuracy(model, adv, y), t)
        cell = f"B{settings.data.batch_size} seed {settings.train.seed}"
        line = "  ".join(f"{k} {a:.3f} ({t:.0f}s)" for k, (a, t) in rows.items())
        ok = rows["autoattack"][0] <= rows["pgd100x5"][0] + 0.01
        print(f"{cell}: {line}  [AA <= PGD-100x5 + 0.01: {ok}]", flush=True)


if __name__ == "__main__":
    main()
