"""PGD under the L2 norm, in [0, 1] pixels (Ma et al. 2023's L2 attack).

The contract (inputs, outputs, side effects) is ``robusthp.attacks``', with one change:
the budget is an L2 ball, ``||x_adv - x||_2 <= eps`` per sample (over all of its pixels
and channels), and ``eps`` is one float. The input checks, warnings, the ``eval_mode`` /
``gradients_on`` / ``fp32`` guards and the ``stop_when_fooled`` bookkeeping are
``robusthp.attacks.linf``'s, imported from there.

Defaults and why:

- ``steps = 40`` (``robusthp.settings.PerturbationSettings.l2_steps``), as the L-inf PGD.
- ``alpha = 2.5 * eps / steps`` when not given: L-inf's ``default_alpha`` (Madry et al.'s
  rule), here an L2 step length, since each step moves ``alpha`` along the unit-L2
  gradient direction.
- ``random_start = False``: deterministic; with it, the start is torchattacks' (a
  Gaussian direction scaled to a radius uniform in ``[0, eps]``), drawn from
  ``generator`` or a private generator seeded 0, never the global RNG.

The arithmetic is torchattacks 3.5.1 ``PGDL2``'s in the same order (gradient divided by
its per-sample L2 norm + 1e-10; ``delta`` scaled by ``min(eps / ||delta||_2, 1)``; then
clipped to ``[0, 1]``), so the last iterate equals ``torchattacks.PGDL2(...,
random_start=False)`` (tests/test_perturbations.py checks it). Clipping to the box after
the projection only moves pixels toward ``x`` (which lies in the box), so the returned
point stays in the L2 ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.attacks.linf import (
    _check_xy,
    _describe,
    _Rows,
    _warn_if_suspicious,
    check_attack_args,
    default_alpha,
)
from robusthp.settings import PerturbationSettings
from robusthp.side_effects import eval_mode, fp32, gradients_on

DEFAULT_L2_STEPS = PerturbationSettings.l2_steps  # 40, as the L-inf PGD
L2_EPS_FOR_DIVISION = 1e-10  # torchattacks PGDL2's: added to the gradient's norm


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float | None = None,
    steps: int = DEFAULT_L2_STEPS,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    stop_when_fooled: bool = False,
) -> Tensor:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018) [https://arxiv.org/abs/1706.06083].

    Distance measure: L2. ``steps`` times: ``x_adv += alpha * g / (||g||_2 + 1e-10)``
    (``g`` the input gradient of the cross-entropy, per sample), then project onto the
    L2 ball around ``x`` (``delta *= min(eps / ||delta||_2, 1)``) and clip to ``[0, 1]``.

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor): ``(N,)`` integer labels in ``[0, num_classes)``.
        eps (float): L2 radius per sample (>= 0), in pixel units. Ma et al. 2023: 0.5,
            0.7, 1.0 (MNIST), 0.1, 0.2, 0.3 (CIFAR-10).
        alpha (float | None): L2 length of each step (> 0). Default ``2.5 * eps / steps``.
        steps (int): number of steps (>= 1). Default 40.
        random_start (bool): start at a random point of the L2 ball (torchattacks'
            draw). Default False.
        generator (torch.Generator | None): source of the random start; default a
            private generator seeded 0 on ``x``'s device. The global RNG is never used.
        stop_when_fooled (bool): return each sample's first misclassified iterate (the
            start included), or its last iterate if none was, as ``pgd``'s. Default
            False: the last iterate, as torchattacks.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``,
          ``||output - x||_2 <= eps`` per sample.

    Example::
        >>> x_adv = pgd_l2(model, images, labels, eps=0.5)            # alpha = 0.03125
    """
    if isinstance(eps, Tensor) or isinstance(eps, bool):
        raise ValueError(f"pgd_l2: eps (the L2 radius, pixel units) must be one number; got {_describe(eps)}")
    check_attack_args(eps=eps, steps=steps)
    if alpha is None:
        alpha = default_alpha(eps, steps)
    elif eps > 0:
        check_attack_args(eps=eps, alpha=alpha)
    _check_xy(x, y)
    with eval_mode(model), gradients_on(), fp32():
        x = x.detach().clone()  # a normal tensor even if x is an inference tensor
        if eps == 0 and not stop_when_fooled:
            return x
        y = y.detach().to(x.device).clone()
        adv = _starting_point(x, eps, random_start, generator)
        return _l2_loop(model, x, y, adv, eps=eps, alpha=alpha, steps=steps if eps > 0 else 0,
                        stop_when_fooled=stop_when_fooled)


def _l2_loop(
    model: nn.Module, x: Tensor, y: Tensor, adv: Tensor, *, eps: float, alpha: float, steps: int,
    stop_when_fooled: bool,
) -> Tensor:
    """torchattacks PGDL2's steps from ``adv``; ``_Rows`` (linf's) retires fooled samples."""
    rows = _Rows(x, y, eps, alpha, stop_when_fooled)
    for step in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        keep = rows.retire(adv, logits)  # None unless some samples were just fooled
        if keep is not None:
            if rows.done:
                return rows.result(None)[0]
            logits = logits[keep]
        loss = F.cross_entropy(logits, rows.y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach()
        if keep is not None:
            adv, grad = adv[keep], grad[keep]
        if step == 0:
            _warn_if_suspicious(logits.detach(), grad, "pgd_l2")
        adv = _step(adv, grad, rows.x, eps, alpha)
    if not stop_when_fooled:
        return adv
    with torch.no_grad():
        keep = rows.retire(adv, model(adv))  # the last iterate's check
    return rows.result(adv if keep is None else adv[keep])[0]


def _step(adv: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float) -> Tensor:
    """One PGDL2 step in torchattacks' order: normalized ascent, L2 projection, box."""
    n = adv.shape[0]
    per_sample = (n,) + (1,) * (adv.dim() - 1)  # (N, 1, 1, 1) for images
    grad_norms = torch.norm(grad.reshape(n, -1), p=2, dim=1) + L2_EPS_FOR_DIVISION  # (N,)
    adv = adv + alpha * (grad / grad_norms.view(per_sample))
    delta = adv - x
    delta_norms = torch.norm(delta.reshape(n, -1), p=2, dim=1)  # (N,); 0 gives factor inf -> 1
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    return torch.clamp(x + delta * factor.view(per_sample), min=0, max=1).detach()


def _starting_point(x: Tensor, eps: float, random_start: bool, generator: torch.Generator | None) -> Tensor:
    """``x``, or torchattacks PGDL2's random start: a Gaussian direction scaled to a radius
    ``r * eps``, ``r ~ U(0, 1)`` per sample, clipped to ``[0, 1]``."""
    if not random_start:
        return x.clone()
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    n = x.shape[0]
    per_sample = (n,) + (1,) * (x.dim() - 1)
    delta = torch.empty(x.shape, dtype=x.dtype, device=generator.device).normal_(generator=generator)
    r = torch.empty(per_sample, dtype=x.dtype, device=generator.device).uniform_(0, 1, generator=generator)
    delta = delta.to(x.device)
    norms = torch.norm(delta.reshape(n, -1), p=2, dim=1).view(per_sample)
    delta *= r.to(x.device) / norms * eps
    return torch.clamp(x + delta, min=0, max=1).detach()
