"""Attacks by name, and accuracy under them over all evaluated points.

Apart from the attack loop because it only sees attacks as ``(model, x, y) -> x_adv``
(``bind``): the callback's and the CLI's attack names resolve here, and any registered
attack is evaluated the same way.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks.linf import AttackWarning, fgsm, pgd
from robusthp.side_effects import eval_mode, fp32

# (model, x, y) -> x_adv, once the attack's own settings are bound (functools.partial)
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- registry

ATTACKS: dict[str, Callable[..., Tensor]] = {}


def register_attack(name: str, fn: Callable[..., Tensor]) -> None:
    """Add an attack ``fn(model, x, y, eps, **settings) -> x_adv``; a taken name is an error."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered ({ATTACKS[name].__name__})")
    ATTACKS[name] = fn


register_attack("fgsm", fgsm)
register_attack("pgd", pgd)


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

    Returns:
        ``{"clean_acc": float, "<name>_acc[@eps]": float, ..., "num_samples": float}``;
        warns (AttackWarning) when a PGD accuracy exceeds the FGSM one of the same eps.

    Example::
        >>> robust_accuracy(model, loader, {"fgsm": partial(fgsm, eps=0.3),
        ...                                  "pgd": partial(pgd, eps=0.3)})
        {'clean_acc': 0.99, 'fgsm_acc': 0.61, 'pgd_acc': 0.12, 'num_samples': 10000.0}  # illustrative
    """
    total = len(batches) if hasattr(batches, "__len__") else None
    correct = {name: 0 for name in ["clean", *attack_fns]}
    seen = 0
    for done, (x, y) in enumerate(batches, start=1):
        if device is not None:
            x, y = x.to(device), y.to(device)
        correct["clean"] += _num_correct(model, x, y)
        for name, attack in attack_fns.items():
            correct[name] += _num_correct(model, attack(model, x, y), y)
        seen += int(y.shape[0])
        if progress is not None:
            progress(done, total)
    if seen == 0:
        raise ValueError("no data to evaluate on: batches yielded no samples")
    accs = {acc_key(name): n / seen for name, n in correct.items()}
    _warn_if_pgd_weaker(accs)
    return {**accs, "num_samples": float(seen)}


def _num_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with eval_mode(model), torch.no_grad(), fp32():
        return int((model(x).argmax(1) == y.to(x.device)).sum())


def _warn_if_pgd_weaker(accs: Mapping[str, float]) -> None:
    for key, acc in accs.items():
        partner = "fgsm" + key[len("pgd"):]
        if key.startswith("pgd_acc") and partner in accs and acc > accs[partner]:
            warnings.warn(
                f"{key} = {acc:.4f} > {partner} = {accs[partner]:.4f}: PGD is weaker than FGSM "
                "at the same eps; check alpha/steps or gradient masking",
                AttackWarning,
                stacklevel=3,
            )


def bind(name: str, **settings: Any) -> AttackFn:
    """``get_attack(name)`` with its settings bound: ``bind("pgd", eps=0.3, steps=40)``."""
    return functools.partial(get_attack(name), **settings)
