"""L-inf evasion attacks (FGSM, PGD) and robust accuracy, in pure torch.

Contract shared by every attack here:

- ``x``: float tensor ``(N, ...)`` (images ``(N, C, H, W)``), pixels in ``[0, 1]``; any
  normalization lives inside the model. ``y``: ``(N,)`` integer class indices.
- The model returns **logits** ``(N, num_classes)``; the loss is cross-entropy (mean
  over the batch, as torchattacks). Outputs that look like probabilities warn.
- Returns the adversarial ``x_adv`` (same shape and dtype as ``x``, detached, on
  ``x``'s device) with ``|x_adv - x|_inf <= eps`` and ``x_adv`` in ``[0, 1]``.
- ``eps`` (and ``alpha``) is a float (one box for everything: torchattacks' exact
  arithmetic) or a tensor broadcastable to ``x``, an elementwise box
  ``|x_adv - x| <= eps``: ``(C, 1, 1)`` per channel (CIFAR-10's "normalized" reading,
  ``eps_pixel_c = eps * std_c``), ``(N, 1, 1, 1)`` per sample, or ``(N, C, 1, 1)``.
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

``pgd(..., stop_when_fooled=True)`` returns each sample's FIRST misclassified iterate
(checked at every iterate, the starting point included, as AutoAttack counts a
success), or its last iterate if none was; fooled samples leave the batch, so later
steps cost less. ``minimal_eps`` builds on it: the per-example minimal L-inf
perturbation eps*(x), and ``robustness_curve`` / ``min_eps_summary`` turn eps* into
accuracy at every eps at once.

FGSM is PGD with one step of size eps and no random start. Both use torchattacks'
arithmetic in the same order, so they give torchattacks' ``FGSM`` and ``PGD`` images
(tests/test_attacks.py checks them to 1e-6; they were bit-identical on CPU in every
case measured; with ``random_start`` too, given the same seed).

Example::

    >>> from robusthp.attacks import bind, fgsm, pgd, robust_accuracy
    >>> x_adv = pgd(model, x, y, eps=0.3, steps=40)            # alpha = 0.01875
    >>> accs = robust_accuracy(model, [(x, y)], {"fgsm": bind("fgsm", eps=0.3),
    ...                                          "pgd": bind("pgd", eps=0.3)})
    >>> eps_star = minimal_eps(model, x, y, eps_max=0.6)      # (N,) pixels, inf = > 0.6
    >>> acc = robustness_curve(eps_star, torch.linspace(0, 0.6, 101))
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "min_eps_summary",
    "minimal_adversarial",
    "minimal_eps",
    "pgd",
    "register_attack",
    "robust_accuracy",
    "robustness_curve",
]

PIXEL_TOL = 1e-5  # x may exceed [0, 1] by this much (float rounding of a normalization)
DEFAULT_PGD_STEPS = AdversarialSettings.pgd_steps  # 40, Kamath et al., Appendix A
ALPHA_EPS_BUDGET = 2.5  # Madry et al.: alpha = 2.5 * eps / steps

# (model, x, y) -> x_adv, once the attack's own settings are bound (functools.partial)
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
Box = float | Tensor  # an L-inf radius: one number, or a tensor broadcastable to x


class AttackWarning(UserWarning):
    """A suspicious evaluation: zero gradients, probabilities, PGD weaker than FGSM."""


def default_alpha(eps: Box, steps: int) -> Box:
    """PGD step size when none is given: ``2.5 * eps / steps`` (Madry et al. 2018);
    a tensor ``eps`` gives a tensor of the same shape (elementwise)."""
    return ALPHA_EPS_BUDGET * eps / steps


# ---------------------------------------------------------------- attacks


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: Box) -> Tensor:
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples'
    (Goodfellow, Shlens, Szegedy, ICLR 2015) [https://arxiv.org/abs/1412.6572].

    Distance measure: L-inf. ``x_adv = clip_[0,1](x + eps * sign(grad_x CE(model(x), y)))``,
    computed as one PGD step of size eps without random start.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels in ``[0, num_classes)``.
        eps (float | Tensor): maximum perturbation (>= 0), in pixel units. Paper: 0.3
            (MNIST, Fashion-MNIST), 0.02 (CIFAR-10). A tensor broadcastable to ``x``
            is an elementwise box: ``(C, 1, 1)`` per channel, ``(N, 1, 1, 1)`` per sample.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = fgsm(model, images, labels, eps=0.3)
    """
    adv, _ = _linf_pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False, name="fgsm")
    return adv


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: Box,
    alpha: Box | None = None,
    steps: int = DEFAULT_PGD_STEPS,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    stop_when_fooled: bool = False,
) -> Tensor:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018) [https://arxiv.org/abs/1706.06083].

    Distance measure: L-inf. ``steps`` times: ``x_adv += alpha * sign(grad)``, then
    project onto the eps-ball around ``x`` (``clip(x_adv - x, -eps, eps)``,
    elementwise) and clip to ``[0, 1]``.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels in ``[0, num_classes)``.
        eps (float | Tensor): maximum perturbation (>= 0), in pixel units; a tensor
            broadcastable to ``x`` is an elementwise box (``(C, 1, 1)`` per channel,
            ``(N, 1, 1, 1)`` per sample, ``(N, C, 1, 1)``).
        alpha (float | Tensor | None): step size (> 0; a tensor: >= 0, broadcastable
            to ``x``). Default ``2.5 * eps / steps`` (elementwise for a tensor eps).
        steps (int): number of steps (>= 1). Default 40 (Kamath et al.).
        random_start (bool): start at a uniform random point of the eps-ball.
            Default False (the paper states none).
        generator (torch.Generator | None): source of the random start; default a
            private generator seeded 0 on ``x``'s device. The global RNG is never used.
        stop_when_fooled (bool): return each sample's first misclassified iterate
            (the start included; AutoAttack's "fooled at any iterate"), or its last
            iterate if none was; fooled samples leave the batch, so the remaining steps
            cost less. Never weaker than the last iterate; costs one more forward pass
            (the last iterate's check). Default False: the last iterate, as
            torchattacks and the paper.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = pgd(model, images, labels, eps=0.3, alpha=0.01, steps=40)
        >>> x_adv = pgd(model, images, labels, eps=std.view(3, 1, 1) * 0.02)  # per channel
    """
    if alpha is None:
        _check_steps(steps)
        alpha = default_alpha(eps, steps)
    else:
        check_attack_args(eps=eps, alpha=alpha)
    adv, _ = _linf_pgd(
        model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
        generator=generator, name="pgd", stop_when_fooled=stop_when_fooled,
    )
    return adv


def _linf_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: Box,
    alpha: Box,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None = None,
    name: str,
    stop_when_fooled: bool = False,
    start: Tensor | None = None,
    warn: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The one attack loop (torchattacks' PGD arithmetic, done in place).

    Returns ``(x_adv, fooled)``; ``fooled`` is the ``(N,)`` bool mask of samples whose
    returned point is misclassified when ``stop_when_fooled``, else None (not computed).
    ``start`` (``(N, ...)``, pixels) replaces ``x`` as the starting point, projected
    onto the eps-ball first (a warm start).
    """
    check_attack_args(eps=eps, alpha=alpha if _any_positive(eps) else None, steps=steps)
    _check_xy(x, y)
    with eval_mode(model), gradients_on(), fp32():
        x = x.detach().clone()  # a normal tensor even if x is an inference tensor
        if not _any_positive(eps) and not stop_when_fooled:
            return x, None
        y = y.detach().to(x.device).clone()
        eps, alpha = _as_box(eps, x, "eps"), _as_box(alpha, x, "alpha")
        adv = _starting_point(x, eps, start, random_start, generator)
        rows = _Rows(x, y, eps, alpha, stop_when_fooled)
        for step in range(steps if _any_positive(eps) else 0):
            adv.requires_grad_(True)
            logits = model(adv)
            keep = rows.retire(adv, logits)  # None unless some samples were just fooled
            if keep is not None:
                if rows.done:
                    return rows.result(None)
                logits = logits[keep]  # only the others go on
            loss = F.cross_entropy(logits, rows.y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach()  # the graph is freed: updating in place is safe
            if keep is not None:
                adv, grad = adv[keep], grad[keep]
            if step == 0 and warn:
                _warn_if_suspicious(logits.detach(), grad, name)
            _step_(adv, grad.sign_(), rows.alpha)
            _project_(adv, rows.x, rows.eps)
        if not stop_when_fooled:
            return adv, None
        with torch.no_grad():
            keep = rows.retire(adv, model(adv))  # the last iterate's check
        return rows.result(adv if keep is None else adv[keep])


class _Rows:
    """The samples still attacked, their settings, and (``stop_when_fooled``) each
    fooled sample's first misclassified iterate."""

    def __init__(self, x: Tensor, y: Tensor, eps: Box, alpha: Box, stop_when_fooled: bool) -> None:
        self.x, self.y, self.eps, self.alpha = x, y, eps, alpha
        self.stop_when_fooled = stop_when_fooled
        if stop_when_fooled:
            self.index = torch.arange(x.shape[0], device=x.device)  # rows of x still attacked
            self.out = x.clone()
            self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    @property
    def done(self) -> bool:
        return self.index.numel() == 0

    def retire(self, adv: Tensor, logits: Tensor) -> Tensor | None:
        """Store the rows of ``adv`` that ``logits`` misclassify and drop them; the mask of
        the others (None when none was fooled or ``stop_when_fooled`` is off)."""
        if not self.stop_when_fooled:
            return None
        hit = logits.detach().argmax(1) != self.y
        if not bool(hit.any()):
            return None
        self.out[self.index[hit]] = adv.detach()[hit]
        self.fooled[self.index[hit]] = True
        keep = ~hit
        self.index, self.x, self.y = self.index[keep], self.x[keep], self.y[keep]
        self.eps, self.alpha = _rows_of(self.eps, keep), _rows_of(self.alpha, keep)
        return keep

    def result(self, adv: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(x_adv, fooled)``; ``adv``: the last iterate of the rows never fooled."""
        if adv is not None:
            self.out[self.index] = adv
        return self.out, self.fooled


def _rows_of(box: Box, keep: Tensor) -> Box:
    """The rows ``keep`` of a per-sample box (a shared box is returned as is)."""
    if isinstance(box, Tensor) and box.shape[0] != 1:
        return box[keep]
    return box


def _as_box(value: Box, x: Tensor, what: str) -> Box:
    """A float stays a float (torchattacks' arithmetic); a tensor goes to ``x``'s device
    and dtype with ``x.dim()`` dimensions, after checking it broadcasts to ``x``."""
    if not isinstance(value, Tensor):
        return value
    try:
        fits = torch.broadcast_shapes(value.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{what} tensor of shape {tuple(value.shape)} does not broadcast to x's shape "
            f"{tuple(x.shape)}; use (C, 1, 1) per channel, (N, 1, 1, 1) per sample or (N, C, 1, 1)"
        )
    value = value.detach().to(device=x.device, dtype=x.dtype).clone()
    return value.reshape((1,) * (x.dim() - value.dim()) + tuple(value.shape))


def _any_positive(eps: Box) -> bool:
    return bool((eps > 0).any()) if isinstance(eps, Tensor) else eps > 0


def _step_(adv: Tensor, sign: Tensor, alpha: Box) -> None:
    """``adv += alpha * sign`` in place."""
    if isinstance(alpha, Tensor):
        adv.addcmul_(sign, alpha)
    else:
        adv.add_(sign, alpha=alpha)


def _project_(adv: Tensor, x: Tensor, eps: Box) -> None:
    """``adv = clip_[0,1](x + clip(adv - x, -eps, eps))`` in place (torchattacks' order)."""
    if isinstance(eps, Tensor):
        adv.sub_(x).clamp_(min=-eps, max=eps).add_(x).clamp_(0.0, 1.0)
    else:
        adv.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)


def _starting_point(
    x: Tensor, eps: Box, start: Tensor | None, random_start: bool, generator: torch.Generator | None
) -> Tensor:
    """``x``, a uniform random point of the eps-ball, or ``start`` projected onto it."""
    if start is not None:
        if start.shape != x.shape:
            raise ValueError(f"start must have x's shape {tuple(x.shape)}; got {tuple(start.shape)}")
        adv = start.detach().to(device=x.device, dtype=x.dtype).clone()
        _project_(adv, x, eps)
        return adv
    adv = x.clone()
    if random_start:
        adv.add_(_uniform_like(adv, eps, generator)).clamp_(0.0, 1.0)
    return adv


def _uniform_like(x: Tensor, eps: Box, generator: torch.Generator | None) -> Tensor:
    """U(-eps, eps) noise shaped like ``x`` (elementwise for a tensor eps), never from the
    global RNG."""
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    noise = torch.empty(x.shape, dtype=x.dtype, device=generator.device)
    if isinstance(eps, Tensor):
        noise.uniform_(-1.0, 1.0, generator=generator)
        return noise.to(x.device).mul_(eps)
    noise.uniform_(-eps, eps, generator=generator)
    return noise.to(x.device)


# ---------------------------------------------------------------- checks


def check_attack_args(*, eps: Box, alpha: Box | None = None, steps: int | None = None) -> None:
    """One-line ValueErrors for attack settings (also used by the callback); a tensor
    ``eps``/``alpha`` must be real, finite and >= 0 everywhere."""
    if isinstance(eps, Tensor):
        _check_box_tensor(eps, "eps", "the L-inf radius, pixel units")
    elif not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (pixel units, [0, 1] images); got {eps!r}")
    if isinstance(alpha, Tensor):
        _check_box_tensor(alpha, "alpha", "the PGD step size")
    elif alpha is not None and (not isinstance(alpha, (int, float)) or not alpha > 0):
        raise ValueError(f"alpha (PGD step size) must be a number > 0; got {alpha!r}")
    if steps is not None:
        _check_steps(steps)


def _check_box_tensor(t: Tensor, what: str, meaning: str) -> None:
    if t.dtype == torch.bool or t.is_complex() or t.numel() == 0:
        raise ValueError(f"{what} tensor ({meaning}) must hold real numbers; got {_describe(t)}")
    values = t.detach()
    bad = ~(torch.isfinite(values) & (values >= 0))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{what} tensor ({meaning}) must be finite and >= 0 everywhere; got "
            f"{values[where].item():g} at index {where} of a tensor of shape {tuple(t.shape)}"
        )


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


# ---------------------------------------------------------------- minimal perturbation

# minimal_eps's search (defaults tuned in benchmarks/attacks.py: the MNIST curve of 1,000
# points costs <= 3 PGD-40 passes and is nowhere weaker than PGD-40 at the listed eps)
MIN_EPS_SWEEP_STEPS = DEFAULT_PGD_STEPS  # the sweep at eps_max: PGD-40's step budget
MIN_EPS_BISECTIONS = 8  # bracket <= (first upper bound) / 2**8
MIN_EPS_PROBE_STEPS = 10  # steps of each warm-started probe
# a probe's step as a fraction of its radius: the first half of its steps coarse (0.4:
# five steps cross the box face to face), the rest fine (0.08) to settle near the
# boundary; a two-stage step decay in the spirit of APGD's, measured on MNIST StdCNN to
# leave 0-2 (of 1,000) points where PGD-40 wins against 3-6 with one fixed step
PROBE_COARSE_ALPHA, PROBE_FINE_ALPHA = 0.4, 0.08
MIN_EPS_CURVE_POINTS = 101  # the stored curve: eps = 0, eps_max/100, ..., eps_max


def minimal_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_max: float,
    scale: Tensor | Sequence[float] | None = None,
    steps: int = MIN_EPS_SWEEP_STEPS,
    bisections: int = MIN_EPS_BISECTIONS,
    probe_steps: int = MIN_EPS_PROBE_STEPS,
    progress: Callable[[int, int | None], None] | None = None,
) -> Tensor:
    r"""Per-example minimal adversarial L-inf perturbation eps*(x), found by PGD.

    eps*(x) is the L-inf norm of the smallest-norm misclassified point the search finds
    (an upper bound on the true minimum, backed by a real adversarial example):
    the model is robust at eps for x iff ``eps*(x) > eps`` as far as this attack can
    tell, so ``robustness_curve`` gives the accuracy at every eps from one search.
    See ``minimal_adversarial`` for the search; this returns its eps* only.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels.
        eps_max (float): top of the search range (> 0), in ``scale`` units.
        scale: pixels per eps unit: None = pixel units; a per-channel tensor
            ``(C, 1, 1)`` or sequence of C floats, e.g. the input std, makes the box
            ``eps * scale_c`` and eps* is in normalized units.
        steps, bisections, probe_steps: the search's budget (see ``minimal_adversarial``;
            defaults 40, 8, 10).
        progress: called as ``progress(rounds_done, 1 + bisections)`` after the sweep and
            after each bisection round.

    Returns:
        ``(N,)`` tensor of eps* (``x``'s dtype and device), in ``scale`` units:
        0 for points misclassified clean, ``+inf`` for points not fooled within eps_max.

    Example::
        >>> eps_star = minimal_eps(model, images, labels, eps_max=0.6)
        >>> robustness_curve(eps_star, [0.0, 0.1, 0.3])   # clean, 0.1 and 0.3 accuracy
    """
    eps_star, _ = minimal_adversarial(
        model, x, y, eps_max=eps_max, scale=scale, steps=steps, bisections=bisections,
        probe_steps=probe_steps, progress=progress,
    )
    return eps_star


def minimal_adversarial(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_max: float,
    scale: Tensor | Sequence[float] | None = None,
    steps: int = MIN_EPS_SWEEP_STEPS,
    bisections: int = MIN_EPS_BISECTIONS,
    probe_steps: int = MIN_EPS_PROBE_STEPS,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""eps*(x) (see ``minimal_eps``) and the adversarial examples that back it.

    Distance measure: L-inf, in ``scale`` units (``max_c,h,w |delta| / scale_c``).
    The search, all rows batched, fooled rows leaving each PGD as soon as they are
    fooled (``pgd(..., stop_when_fooled=True)``):

    1. Sweep: one PGD at eps_max from ``x`` (no random start) with alpha
       ``2.5 * eps_max / steps``. Its iterate k lies within ``k * alpha``, so the
       first misclassified iterate (the start itself for a clean misclassification)
       gives an upper bound ``hi`` = its norm, and the delta to warm-start from.
    2. ``bisections`` rounds on ``[lo, hi]`` (``lo`` = 0 first), every row with
       ``hi`` in ``(0, inf)`` at its own ``mid = (lo + hi) / 2`` (one batched PGD with a
       per-sample eps): a probe of ``probe_steps`` steps started at the best
       adversarial delta projected onto the mid ball, its first half with alpha
       ``0.4 * mid``, the rest with ``0.08 * mid`` (coarse, then fine). Success (any
       iterate misclassified): ``hi`` = that iterate's norm (<= mid) and it becomes the
       best delta; failure: ``lo = mid``.

    ``lo`` is where the search looks next, not a certified bound: eps* = ``hi``, always
    the norm (capped at the probe's radius, against fp32 rounding of ``x + delta``) of
    a returned misclassified point; nothing is interpolated.

    Arguments:
        model, x, y, eps_max, scale, progress: as ``minimal_eps``.
        steps (int): the sweep's PGD steps (>= 1). Default 40: the sweep is then
            exactly ``pgd(x, eps=eps_max, stop_when_fooled=True)``, so a point PGD-40 at
            eps_max fools is never reported as inf. Its step ``2.5 * eps_max / steps``
            is the first bound's resolution.
        bisections (int): bisection rounds (>= 0). Default 8: the bracket ends below
            ``hi / 256``, e.g. < 0.001 for eps* ~ 0.2 on MNIST.
        probe_steps (int): steps of each probe (>= 1). Default 10: warm-started, a
            probe only has to cross the boundary near a known adversarial point.

    Returns:
        ``(eps_star, x_adv)``: ``(N,)`` eps* in ``scale`` units (0: misclassified
        clean, ``+inf``: not fooled within eps_max), and ``(N, ...)`` pixels in ``[0, 1]``,
        misclassified with ``|x_adv - x| / scale <= eps*`` wherever eps* is finite
        (``x_adv`` is the sweep's last iterate where eps* is inf).
    """
    eps_max = _check_min_eps_args(eps_max, steps, bisections, probe_steps)
    _check_xy(x, y)
    with gradients_on():
        x, y = x.detach().clone(), y.detach().to(x.device).clone()
        unit = _as_scale(scale, x)
        total = 1 + bisections
        best, fooled = _linf_pgd(
            model, x, y, eps=eps_max * unit, alpha=default_alpha(eps_max, steps) * unit,
            steps=steps, random_start=False, name="minimal_eps", stop_when_fooled=True,
        )
        hi = torch.where(fooled, _linf_norm(best - x, unit).clamp_(max=eps_max), torch.inf)
        lo = torch.zeros_like(hi)
        if progress is not None:
            progress(1, total)
        for done in range(2, total + 1):
            rows = ((hi > 0) & torch.isfinite(hi)).nonzero().squeeze(1)
            if rows.numel():
                _bisect(model, x, y, rows, best, lo, hi, unit, probe_steps)
            if progress is not None:
                progress(done, total)
    return hi, best


def _bisect(
    model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, best: Tensor,
    lo: Tensor, hi: Tensor, unit: Box, probe_steps: int,
) -> None:
    """One probe per row in ``rows`` at its bracket's middle; updates best/lo/hi in place."""
    mid = (lo[rows] + hi[rows]) / 2  # (n,) in scale units
    box = mid.view(-1, *([1] * (x.dim() - 1))) * unit  # (n, 1, 1, 1) or (n, C, 1, 1) pixels
    adv, fooled = _probe(model, x[rows], y[rows], box, best[rows], probe_steps)
    won, lost = rows[fooled], rows[~fooled]
    hi[won] = torch.minimum(_linf_norm(adv[fooled] - x[won], unit), mid[fooled])
    best[won] = adv[fooled]
    lo[lost] = mid[~fooled]
    lo[won] = torch.where(lo[won] < hi[won], lo[won], 0.0)  # below a failed radius: look again


def _probe(
    model: nn.Module, x: Tensor, y: Tensor, box: Tensor, start: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Warm-started PGD in the per-sample ``box``: coarse steps, then fine ones on the rows
    still not fooled (each a ``stop_when_fooled`` PGD); ``(x_adv, fooled)``."""
    fine = steps // 2
    settings = {"random_start": False, "name": "minimal_eps", "stop_when_fooled": True, "warn": False}
    adv, fooled = _linf_pgd(
        model, x, y, eps=box, alpha=PROBE_COARSE_ALPHA * box, steps=steps - fine, start=start, **settings
    )
    rest = (~fooled).nonzero().squeeze(1)
    if fine and rest.numel():
        adv[rest], fooled[rest] = _linf_pgd(
            model, x[rest], y[rest], eps=box[rest], alpha=PROBE_FINE_ALPHA * box[rest], steps=fine,
            start=adv[rest], **settings,
        )
    return adv, fooled


def _linf_norm(delta: Tensor, unit: Box) -> Tensor:
    """``(N,)`` L-inf norms of ``delta`` in ``unit``s (pixels per eps unit)."""
    return (delta / unit).abs().flatten(1).amax(1)


def _as_scale(scale: Tensor | Sequence[float] | None, x: Tensor) -> Box:
    """1.0 (pixels), or a positive per-channel tensor with ``x.dim()`` dims and no batch dim."""
    if scale is None:
        return 1.0
    if not isinstance(scale, Tensor):
        values = [float(s) for s in ([scale] if isinstance(scale, (int, float)) else scale)]
        scale = torch.tensor(values).view(-1, *([1] * (x.dim() - 2)))
    values = scale.detach()
    per_sample = values.dim() >= x.dim() and values.shape[0] != 1
    if values.is_complex() or not bool(torch.isfinite(values).all() & (values > 0).all()) or per_sample:
        raise ValueError(
            "scale (pixels per eps unit) must be finite, > 0 and per channel, e.g. the std as "
            f"(C, 1, 1); got {_describe(scale)} with min {float(values.real.min()):.4g}"
        )
    return _as_box(scale, x[:1], "scale")


def _check_min_eps_args(eps_max: float, steps: int, bisections: int, probe_steps: int) -> float:
    if isinstance(eps_max, bool) or not isinstance(eps_max, (int, float)) or not (
        math.isfinite(eps_max) and eps_max > 0
    ):
        raise ValueError(f"eps_max must be a finite number > 0 (in scale units); got {eps_max!r}")
    _check_steps(steps)
    _check_steps(probe_steps)
    if isinstance(bisections, bool) or not isinstance(bisections, int) or bisections < 0:
        raise ValueError(f"bisections must be an integer >= 0; got {bisections!r}")
    return float(eps_max)


def robustness_curve(eps_star: Tensor, eps_grid: Tensor | Sequence[float]) -> Tensor:
    """Accuracy at each eps of ``eps_grid``: ``acc(eps) = mean(eps_star > eps)``.

    A point counts as robust at eps iff its eps* exceeds eps (at eps = eps* an
    adversarial example exists), so ``acc(0)`` is the clean accuracy (eps* = 0 exactly
    for the points misclassified clean) and inf never falls.

    Arguments:
        eps_star (Tensor): ``(N,)`` from ``minimal_eps``, >= 0, inf allowed.
        eps_grid (Tensor | sequence): eps values, same units as eps_star, any shape.

    Returns:
        float64 tensor shaped like ``eps_grid``, values in ``[0, 1]``, on eps_star's device.
    """
    eps_star = _check_eps_star(eps_star)
    # compared in eps_star's dtype: eps* = float32(0.1) is not robust at eps = 0.1
    grid = torch.as_tensor(eps_grid, device=eps_star.device).to(eps_star.dtype)
    robust = eps_star.unsqueeze(0) > grid.reshape(-1, 1)  # (grid points, N)
    return robust.double().mean(1).reshape(grid.shape)


def min_eps_summary(
    eps_star: Tensor, eps_max: float, *, curve_points: int = MIN_EPS_CURVE_POINTS
) -> dict[str, Any]:
    """The contract's ``min_eps*`` metrics of eps* over ALL evaluated points.

    Arguments:
        eps_star (Tensor): ``(N,)`` from ``minimal_eps`` (0: misclassified clean,
            inf: not fooled within eps_max).
        eps_max (float): the search's top, same units.
        curve_points (int): points of the stored curve on ``[0, eps_max]`` (default 101).

    Returns:
        A dict of plain floats and lists (JSON-ready):

        - ``median_min_eps``: the lower median of eps* (the ``ceil(N/2)``-th smallest,
          torch.median's convention, so always an attained eps*), inf counting above
          every finite value. It is inf exactly when more than half of the points are
          not fooled within eps_max; it is then stored as ``eps_max`` (a lower bound
          on the true median) and ``min_eps_above_max`` > 0.5 says so.
        - ``min_eps_auc``: ``(1/eps_max) * integral_0^eps_max acc(eps) d eps`` in
          ``[0, 1]``, exact for the step function ``acc``: the integral of
          ``1[eps* > eps]`` over ``[0, eps_max]`` is ``min(eps*, eps_max)``, so it is
          ``mean(min(eps*, eps_max)) / eps_max`` (no grid, no trapezoid).
        - ``min_eps_max``: eps_max.
        - ``min_eps_above_max``: fraction of points not fooled within eps_max.
        - ``min_eps_curve``: ``{"eps": [curve_points values 0..eps_max], "acc": [...]}``.
        - ``min_eps_star``: eps* sorted ascending, None for inf.
    """
    values = _check_eps_star(eps_star).cpu()
    eps_max = _check_min_eps_args(eps_max, 1, 0, 1)
    if isinstance(curve_points, bool) or not isinstance(curve_points, int) or curve_points < 2:
        raise ValueError(f"curve_points must be an integer >= 2; got {curve_points!r}")
    median = float(values.median())
    above = values > torch.tensor(eps_max, dtype=values.dtype)  # eps_max as the search held it
    grid = torch.linspace(0.0, eps_max, curve_points, dtype=torch.float64)
    return {
        "median_min_eps": median if math.isfinite(median) else eps_max,
        "min_eps_auc": float(values.double().clamp(max=eps_max).mean() / eps_max),
        "min_eps_max": eps_max,
        "min_eps_above_max": float(above.double().mean()),
        "min_eps_curve": {"eps": grid.tolist(), "acc": robustness_curve(values, grid).tolist()},
        "min_eps_star": [v if math.isfinite(v) else None for v in values.sort().values.tolist()],
    }


def _check_eps_star(eps_star: Tensor) -> Tensor:
    eps_star = torch.as_tensor(eps_star)
    if eps_star.dim() != 1 or eps_star.numel() == 0 or not eps_star.is_floating_point():
        raise ValueError(f"eps_star must be a non-empty 1-D float tensor (N,); got {_describe(eps_star)}")
    if bool(torch.isnan(eps_star).any()) or bool((eps_star < 0).any()):
        raise ValueError(f"eps_star must be >= 0 (inf allowed, no NaN); got min {float(eps_star.min())!r}")
    return eps_star.detach()
