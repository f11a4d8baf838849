"""L-inf evasion attacks (FGSM, PGD) and robust accuracy, in pure torch.

Contract shared by every attack here:

- ``x``: float tensor ``(N, ...)`` (images ``(N, C, H, W)``), pixels in ``[0, 1]``; any
  normalization lives inside the model. ``y``: ``(N,)`` integer class indices.
- The model returns **logits** ``(N, num_classes)``; the loss is cross-entropy (mean
  over the batch, as torchattacks). Outputs that look like probabilities warn.
- Returns the adversarial ``x_adv`` (same shape and dtype as ``x``, detached, on
  ``x``'s device) with ``|x_adv - x|_inf <= eps`` and ``x_adv`` in ``[0, 1]``.
- Side effects: none. The model runs in eval mode and each submodule's own
  train/eval flag is restored afterwards; no parameter's ``.grad`` is written
  (``torch.autograd.grad`` w.r.t. the input only); the global RNG is never drawn
  from; works under ``torch.no_grad``/``torch.inference_mode`` (inference-tensor
  inputs are cloned); runs in fp32 even inside ``torch.autocast``.

Defaults and why (Kamath et al. evaluate on test inputs, L-inf, the eps of Yao et al.):

- ``eps``: no default; the paper uses 0.3 for MNIST/Fashion-MNIST and 0.02 for CIFAR-10.
- ``steps = 40`` for PGD (the paper's Appendix A); ``DEFAULT_PGD_STEPS``, from
  ``robusthp.settings.AdversarialSettings`` (the callback's and the CLI's default too).
- ``alpha = 2.5 * eps / steps`` when not given (Madry et al. 2018's rule of thumb:
  enough step budget to cross the eps-ball 2.5 times). The paper states no step
  size. For eps 0.3 and 40 steps this gives 0.01875; Madry et al.'s own MNIST
  setting is 0.01 (pass ``alpha=0.01`` to use it).
- ``random_start = False``: the paper states no random start; without one the
  attack is deterministic and FGSM is exactly its one-step case. Madry et al.
  start at a uniform random point in the eps-ball (pass ``random_start=True``;
  the draw comes from ``generator`` or a private generator seeded 0).

FGSM is PGD with one step of size eps and no random start. Both use torchattacks'
arithmetic in the same order, so they give torchattacks' ``FGSM`` and ``PGD`` images
(tests/test_attacks.py checks them to 1e-6; they were bit-identical on CPU in every
case measured; with ``random_start`` too, given the same seed).

Example::

    >>> from robusthp.attacks import bind, fgsm, pgd, robust_accuracy
    >>> x_adv = pgd(model, x, y, eps=0.3, steps=40)            # alpha = 0.01875
    >>> accs = robust_accuracy(model, [(x, y)], {"fgsm": bind("fgsm", eps=0.3),
    ...                                          "pgd": bind("pgd", eps=0.3)})
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.settings import AdversarialSettings
from robusthp.side_effects import eval_mode, fp32, gradients_on

__all__ = [
    "ATTACKS",
    "AttackWarning",
    "acc_key",
    "bind",
    "check_attack_args",
    "default_alpha",
    "fgsm",
    "get_attack",
    "pgd",
    "register_attack",
    "robust_accuracy",
]

PIXEL_TOL = 1e-5  # x may exceed [0, 1] by this much (float rounding of a normalization)
DEFAULT_PGD_STEPS = AdversarialSettings.pgd_steps  # 40, Kamath et al., Appendix A
ALPHA_EPS_BUDGET = 2.5  # Madry et al.: alpha = 2.5 * eps / steps

# (model, x, y) -> x_adv, once the attack's own settings are bound (functools.partial)
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


class AttackWarning(UserWarning):
    """A suspicious evaluation: zero gradients, probabilities, PGD weaker than FGSM."""


def default_alpha(eps: float, steps: int) -> float:
    """PGD step size when none is given: ``2.5 * eps / steps`` (Madry et al. 2018)."""
    return ALPHA_EPS_BUDGET * eps / steps


# ---------------------------------------------------------------- attacks


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples'
    (Goodfellow, Shlens, Szegedy, ICLR 2015) [https://arxiv.org/abs/1412.6572].

    Distance measure: L-inf. ``x_adv = clip_[0,1](x + eps * sign(grad_x CE(model(x), y)))``,
    computed as one PGD step of size eps without random start.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels in ``[0, num_classes)``.
        eps (float): maximum perturbation (>= 0), in pixel units. Paper: 0.3 (MNIST,
            Fashion-MNIST), 0.02 (CIFAR-10).

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = fgsm(model, images, labels, eps=0.3)
    """
    return _linf_pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False, name="fgsm")


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float | None = None,
    steps: int = DEFAULT_PGD_STEPS,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018) [https://arxiv.org/abs/1706.06083].

    Distance measure: L-inf. ``steps`` times: ``x_adv += alpha * sign(grad)``, then
    project onto the eps-ball around ``x`` and clip to ``[0, 1]``.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels in ``[0, num_classes)``.
        eps (float): maximum perturbation (>= 0), in pixel units.
        alpha (float | None): step size (> 0). Default ``2.5 * eps / steps``.
        steps (int): number of steps (>= 1). Default 40 (Kamath et al.).
        random_start (bool): start at a uniform random point of the eps-ball.
            Default False (the paper states none).
        generator (torch.Generator | None): source of the random start; default a
            private generator seeded 0 on ``x``'s device. The global RNG is never used.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = pgd(model, images, labels, eps=0.3, alpha=0.01, steps=40)
    """
    if alpha is None:
        _check_steps(steps)
        alpha = default_alpha(eps, steps)
    else:
        check_attack_args(eps=eps, alpha=alpha)
    return _linf_pgd(
        model, x, y, eps=eps, alpha=alpha, steps=steps,
        random_start=random_start, generator=generator, name="pgd",
    )


def _linf_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None = None,
    name: str,
) -> Tensor:
    """The one attack loop (torchattacks' PGD arithmetic, done in place)."""
    check_attack_args(eps=eps, alpha=alpha if eps > 0 else None, steps=steps)
    _check_xy(x, y)
    with eval_mode(model), gradients_on(), fp32():
        x = x.detach().clone()  # a normal tensor even if x is an inference tensor
        if eps == 0:
            return x
        y = y.detach().to(x.device).clone()
        adv = x.clone()
        if random_start:
            adv.add_(_uniform_like(adv, eps, generator)).clamp_(0.0, 1.0)
        for step in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            loss = F.cross_entropy(logits, y)
            (grad,) = torch.autograd.grad(loss, adv)
            if step == 0:
                _warn_if_suspicious(logits.detach(), grad, name)
            adv = adv.detach()  # the graph is freed: updating in place is safe
            adv.add_(grad.sign_(), alpha=alpha)
            adv.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)  # = clip(x + clip(adv-x))
    return adv


def _uniform_like(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """U(-eps, eps) noise shaped like ``x``, never from the global RNG."""
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    noise = torch.empty(x.shape, dtype=x.dtype, device=generator.device)
    noise.uniform_(-eps, eps, generator=generator)
    return noise.to(x.device)


# ---------------------------------------------------------------- checks


def check_attack_args(*, eps: float, alpha: float | None = None, steps: int | None = None) -> None:
    """One-line ValueErrors for attack settings (also used by the callback)."""
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (pixel units, [0, 1] images); got {eps!r}")
    if alpha is not None and (not isinstance(alpha, (int, float)) or not alpha > 0):
        raise ValueError(f"alpha (PGD step size) must be a number > 0; got {alpha!r}")
    if steps is not None:
        _check_steps(steps)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")


def _check_xy(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of [0, 1] pixels; got {_describe(x)}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must be a 1-D tensor of integer class indices; got {_describe(y)}")
    if x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of samples: x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if lo < -PIXEL_TOL or hi > 1 + PIXEL_TOL or math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"x must be pixels in [0, 1] (normalize inside the model); got min {lo:.4g}, max {hi:.4g}"
        )


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _warn_if_suspicious(logits: Tensor, grad: Tensor, name: str) -> None:
    """Probabilities instead of logits; inputs whose gradient is exactly zero."""
    if logits.dim() == 2 and logits.shape[1] > 1:
        rows_sum_to_one = torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4)
        if rows_sum_to_one and bool((logits >= 0).all()):
            warnings.warn(
                f"{name}: the model's outputs look like probabilities (rows >= 0 summing to 1), "
                "not logits; cross-entropy on probabilities weakens the attack: drop the softmax",
                AttackWarning,
                stacklevel=4,
            )
    zero = grad.flatten(1).abs().amax(1) == 0
    if bool(zero.any()):
        warnings.warn(
            f"{name}: some inputs have an exactly zero input gradient, so the attack cannot "
            "move them (saturated softmax, non-differentiable layers or gradient masking)",
            AttackWarning,
            stacklevel=4,
        )


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
