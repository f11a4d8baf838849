"""FGSM and PGD: the one L-inf attack loop, its eps/alpha boxes, and the argument checks.

One module because every attack here (``fgsm``, ``pgd``, ``minimal_eps``'s probes) runs
``_linf_pgd``, whose arithmetic the torchattacks parity tests pin; the checks and warnings
are the loop's. The contract (inputs, outputs, side effects) is ``robusthp.attacks``'s.

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
steps cost less (``minimal_eps``, in ``robusthp.attacks.minimal``, builds on it).

FGSM is PGD with one step of size eps and no random start. Both use torchattacks'
arithmetic in the same order, so they give torchattacks' ``FGSM`` and ``PGD`` images
(tests/test_attacks.py checks them to 1e-6; they were bit-identical on CPU in every
case measured; with ``random_start`` too, given the same seed).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.settings import AdversarialSettings
from robusthp.side_effects import eval_mode, fp32, gradients_on

PIXEL_TOL = 1e-5  # x may exceed [0, 1] by this much (float rounding of a normalization)
DEFAULT_PGD_STEPS = AdversarialSettings.pgd_steps  # 40, Kamath et al., Appendix A
ALPHA_EPS_BUDGET = 2.5  # Madry et al.: alpha = 2.5 * eps / steps

Box = float | Tensor  # an L-inf radius: one number, or a tensor broadcastable to x


class AttackWarning(UserWarning):
    """A suspicious evaluation: zero gradients, probabilities, PGD weaker than FGSM."""


def default_alpha(eps: Box, steps: int) -> Box:
    """PGD step size when none is given: ``2.5 * eps / steps`` (Madry et al. 2018);
    a tensor ``eps`` gives a tensor of the same shape (elementwise)."""
    return ALPHA_EPS_BUDGET * eps / steps


# ---------------------------------------------------------------- attacks


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: Box, keep_mode: bool = False) -> Tensor:
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
        keep_mode (bool): attack the model in the train/eval mode it is in (adversarial
            training with ``bn_mode=train``) instead of eval mode. Default False.
        restarts (int): runs per point (>= 1). The first starts as ``random_start``
            says; each further one, on the points no earlier run fooled, at a uniform
            random point of the eps-ball drawn from ``generator``. A point keeps its first
            misclassified result. Default 1: one run, exactly as without restarts.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = fgsm(model, images, labels, eps=0.3)
    """
    adv, _ = _linf_pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False, name="fgsm",
                       keep_mode=keep_mode)
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
    keep_mode: bool = False,
    restarts: int = 1,
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
        keep_mode (bool): attack the model in the train/eval mode it is in (adversarial
            training with ``bn_mode=train``) instead of eval mode. Default False.
        restarts (int): runs per point (>= 1). The first starts as ``random_start``
            says; each further one, on the points no earlier run fooled, at a uniform
            random point of the eps-ball drawn from ``generator``. A point keeps its first
            misclassified result. Default 1: one run, exactly as without restarts.

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
    _check_restarts(restarts, keep_mode)
    if restarts > 1 and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)

    def run(x: Tensor, y: Tensor, eps: Box, alpha: Box, random_start: bool) -> Tensor:
        adv, _ = _linf_pgd(
            model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            generator=generator, name="pgd", stop_when_fooled=stop_when_fooled, keep_mode=keep_mode,
        )
        return adv

    adv = run(x, y, eps, alpha, random_start)
    if restarts == 1:
        return adv
    return _restarted(model, adv, x, y, eps, alpha, restarts, run)


def _restarted(model: nn.Module, adv: Tensor, x: Tensor, y: Tensor, eps: Box, alpha: Box,
               restarts: int, run: Any) -> Tensor:
    """Further random-start runs on the points the first run ``adv`` did not fool."""
    with eval_mode(model), gradients_on(), torch.no_grad(), fp32():
        x = x.detach().to(adv.device).clone()  # a normal tensor even if x is an inference tensor
        y = y.detach().to(adv.device).clone()
        eps, alpha = _as_box(eps, x, "eps"), _as_box(alpha, x, "alpha")
        robust = model(adv).argmax(1) == y
        for _ in range(restarts - 1):
            index = robust.nonzero().flatten()
            if index.numel() == 0:
                break
            again = run(x[index], y[index], _rows_of(eps, robust), _rows_of(alpha, robust), True)
            fooled = model(again).argmax(1) != y[index]
            adv[index[fooled]] = again[fooled]
            robust[index[fooled]] = False
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
    keep_mode: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The one attack loop (torchattacks' PGD arithmetic, done in place).

    Returns ``(x_adv, fooled)``; ``fooled`` is the ``(N,)`` bool mask of samples whose
    returned point is misclassified when ``stop_when_fooled``, else None (not computed).
    ``start`` (``(N, ...)``, pixels) replaces ``x`` as the starting point, projected
    onto the eps-ball first (a warm start).
    """
    check_attack_args(eps=eps, alpha=alpha if _any_positive(eps) else None, steps=steps)
    _check_xy(x, y)
    mode = contextlib.nullcontext() if keep_mode else eval_mode(model)
    with mode, gradients_on(), fp32():
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


def _check_restarts(restarts: int, keep_mode: bool) -> None:
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1; got {restarts!r}")
    if restarts > 1 and keep_mode:
        # telling fooled points apart would run the model in train mode (BatchNorm's stats)
        raise ValueError("restarts > 1 needs eval mode; got keep_mode=True")


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
