"""Attacks by name, and accuracy under them over all evaluated points.

Apart from the attack loop because it only sees attacks as ``(model, x, y) -> x_adv``
(``bind``): the callback's and the CLI's attack names resolve here, and any registered
attack is evaluated the same way. Random perturbations (Gaussian and DCT band noise,
``robusthp.attacks.noise``) have the same call shape and are registered beside the
attacks, so one loop evaluates both.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks.auto_attack import autoattack
from robusthp.attacks.l2 import pgd_l2
from robusthp.attacks.linf import AttackWarning, fgsm, pgd
from robusthp.attacks.noise import band_noise, gaussian_noise
from robusthp.side_effects import eval_mode, fp32

# (model, x, y) -> x_adv, once the attack's own settings are bound (functools.partial)
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- registry

ATTACKS: dict[str, Callable[..., Tensor]] = {}
# what each registered name is: "linf" (takes an L-inf box ``eps``, float or tensor, as
# fgsm/pgd: what AdversarialRobustness runs), "l2" (an L2 radius), "noise" (random, a
# variance instead of eps) or "autoattack" (its norm is an argument)
ATTACK_KINDS: dict[str, str] = {}
KINDS = ("linf", "l2", "noise", "autoattack")


def register_attack(name: str, fn: Callable[..., Tensor], kind: str = "linf") -> None:
    """Add an attack ``fn(model, x, y, **settings) -> x_adv`` (its budget, ``eps`` or a
    noise ``var``, among the settings) of ``kind`` (one of ``KINDS``); a taken name is an
    error."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered ({ATTACKS[name].__name__})")
    if kind not in KINDS:
        raise ValueError(f"attack kind must be one of {', '.join(KINDS)}, got {kind!r}")
    ATTACKS[name], ATTACK_KINDS[name] = fn, kind


def attack_names(kind: str) -> list[str]:
    """The registered names of one kind, sorted: ``attack_names("linf") == ["fgsm", "pgd"]``."""
    return sorted(name for name, k in ATTACK_KINDS.items() if k == kind)


register_attack("fgsm", fgsm)
register_attack("pgd", pgd)
register_attack("pgd_l2", pgd_l2, kind="l2")  # eps: the L2 radius
register_attack("gaussian", gaussian_noise, kind="noise")  # var, not eps
register_attack("band", band_noise, kind="noise")  # band (and bands, var), not eps
register_attack("autoattack", autoattack, kind="autoattack")  # eps, norm "Linf" | "L2"; torchattacks


def get_attack(name: str) -> Callable[..., Tensor]:
    """The attack function registered under ``name``."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(sorted(ATTACKS))}") from None


# ---------------------------------------------------------------- robust accuracy


def acc_key(name: str) -> str:
    """Result key of an attack name: ``"pgd" -> "pgd_acc"``, ``"pgd@0.1" -> "pgd_acc@0.1"``."""
    base, at, eps = name.partition("@")
    return f"{base}_acc{at}{eps}"


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attack_fns: Mapping[str, AttackFn],
    *,
    device: torch.device | str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    worst: bool = False,
) -> dict[str, float]:
    """Clean and attacked accuracy over ALL evaluated points (as RobustBench).

    An attacked point counts as correct when the model still classifies its
    adversarial version correctly; points misclassified when clean are attacked
    too (an attack can only lower their count, never help it).

    Arguments:
        model: maps ``[0, 1]`` pixels to logits; evaluated in eval mode (restored after).
        batches: iterable of ``(x, y)``; ``x`` ``(N, ...)`` in ``[0, 1]``, ``y`` ``(N,)``.
        attack_fns: ``{name: fn(model, x, y) -> x_adv}``, e.g.
            ``{"fgsm": partial(fgsm, eps=0.3)}``. A name may carry ``@eps``.
        device: move each batch there first (default: leave batches where they are).
        progress: called as ``progress(batches_done, total_batches_or_None)`` after each batch.
        worst: also ``worst_acc[@eps]``: the points that every attack of that ``@eps``
            failed to fool (``worst_case``), <= each of their accuracies.

    Returns:
        ``{"clean_acc": float, "<name>_acc[@eps]": float, ..., "num_samples": float}``;
        warns (AttackWarning) when a PGD accuracy exceeds the FGSM one of the same eps.

    Example::
        >>> robust_accuracy(model, loader, {"fgsm": partial(fgsm, eps=0.3),
        ...                                  "pgd": partial(pgd, eps=0.3)})
        {'clean_acc': 0.99, 'fgsm_acc': 0.61, 'pgd_acc': 0.12, 'num_samples': 10000.0}  # illustrative
    """
    masks = correct_masks(model, batches, attack_fns, device=device, progress=progress)
    if worst:
        masks.update(worst_case(masks))
    return accuracies(masks)


def correct_masks(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attack_fns: Mapping[str, AttackFn],
    *,
    device: torch.device | str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, Tensor]:
    """Per point, whether the model classifies it correctly clean (``"clean"``) and under
    each attack (its name): ``(N,)`` bool CPU tensors in the batches' order, the raw
    material of ``robust_accuracy`` for per-point comparisons across attacks."""
    total = len(batches) if hasattr(batches, "__len__") else None
    parts: dict[str, list[Tensor]] = {name: [] for name in ["clean", *attack_fns]}
    for done, (x, y) in enumerate(batches, start=1):
        if device is not None:
            x, y = x.to(device), y.to(device)
        parts["clean"].append(_correct(model, x, y))
        for name, attack in attack_fns.items():
            parts[name].append(_correct(model, attack(model, x, y), y))
        if progress is not None:
            progress(done, total)
    if not parts["clean"] or sum(p.numel() for p in parts["clean"]) == 0:
        raise ValueError("no data to evaluate on: batches yielded no samples")
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def worst_case(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"worst[@eps]": mask}``: a point is robust at an ``@eps`` only if it is correct
    under every attack of that suffix (the per-point minimum over attacks, as AutoAttack
    and RobustBench count), so its accuracy is <= each of those attacks'. An attack run on
    only the first n points (a shorter mask) limits the worst case to those n."""
    groups: dict[str, list[Tensor]] = {}
    for name, mask in masks.items():
        if name != "clean":
            _, at, eps = name.partition("@")
            groups.setdefault(f"worst{at}{eps}", []).append(mask)
    out = {}
    for name, group in groups.items():
        n = min(int(mask.numel()) for mask in group)
        out[name] = torch.stack([mask[:n] for mask in group]).all(0)
    return out


def accuracies(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """``{acc_key(name): fraction correct of its points, ..., "num_samples": N}`` of
    per-point masks (N: the clean mask's points; a shorter mask counts its own)."""
    seen = int(masks["clean"].numel())
    accs = {acc_key(name): int(mask.sum()) / max(int(mask.numel()), 1) for name, mask in masks.items()}
    _warn_if_pgd_weaker(accs)
    return {**accs, "num_samples": float(seen)}


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with eval_mode(model), torch.no_grad(), fp32():
        return (model(x).argmax(1) == y.to(x.device)).cpu()


def _warn_if_pgd_weaker(accs: Mapping[str, float]) -> None:
    for key, acc in accs.items():
        partner = "fgsm" + key[len("pgd"):]
        # the L-inf PGD only ("pgd_acc[@eps]"): pgd_l2 and the noises have no FGSM partner
        if key.partition("@")[0] == "pgd_acc" and partner in accs and acc > accs[partner]:
            warnings.warn(
                f"{key} = {acc:.4f} > {partner} = {accs[partner]:.4f}: PGD is weaker than FGSM "
                "at the same eps; check alpha/steps or gradient masking",
                AttackWarning,
                stacklevel=3,
            )


def bind(name: str, **settings: Any) -> AttackFn:
    """``get_attack(name)`` with its settings bound: ``bind("pgd", eps=0.3, steps=40)``."""
    return functools.partial(get_attack(name), **settings)
