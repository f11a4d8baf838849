"""DeepFool under the L2 norm, batched, in [0, 1] pixels: the minimal-perturbation attack
whose perturbations SVD-Universal (``robusthp.attacks.universal``) stacks as one of its
three kinds of attack direction.

The contract (inputs, side effects) is ``robusthp.attacks``', with two changes:

- there is no budget: DeepFool looks for the smallest L2 step that crosses the nearest
  (linearized) decision boundary, so it does not fit the registry's
  ``attack(model, x, y, eps=...)`` shape and is not registered there (call it directly);
- ``y`` is optional: the label to move away from. None (the default, as the original
  and Moosavi-Dezfooli's reference code, which ksandeshk/svd-uap calls): the model's
  clean prediction. Given: a point the model already gets wrong (prediction != y) is
  adversarial as it is and gets a zero perturbation (torchattacks' ``DeepFool`` rule).

Two outputs:

- ``deepfool_perturbation`` returns the raw perturbation ``r = (1 + overshoot) * r_tot``
  (``(N, ...)``, not clamped): the attack direction SVD-Universal uses (the reference
  code's ``r``);
- ``deepfool`` returns ``clamp(x + r, 0, 1)``, an image like every other attack's. The
  clamp can pull a point back across the boundary (the iterates themselves are not
  clamped, as in the original), so a returned image may not fool the model.

The arithmetic is the reference code's, per sample: at the current point
``x_i = x + (1 + overshoot) * r_tot``, for each candidate class ``k`` (the label excluded)
take ``f_k = z_k - z_label`` and ``w_k = grad_x f_k``; step to the nearest linearized
boundary, ``l = argmin_k |f_k| / ||w_k||``, ``r_i = (|f_l| / ||w_l|| + 1e-4) w_l / ||w_l||``,
``r_tot += r_i``; stop when ``x_i`` is no longer classified as the label, or after
``max_iter`` steps. The 1e-4 (``STEP_SLACK``) moves a point that lands exactly on a
boundary off it. On a linear model one step lands on the nearest boundary:
``r = (|f_l| / ||w_l||^2 + 1e-4 / ||w_l||) w_l (1 + overshoot)`` (tests/test_universal.py).

Paper: Moosavi-Dezfooli, Fawzi, Frossard, 'DeepFool: a simple and accurate method to fool
deep neural networks' (CVPR 2016) [https://arxiv.org/abs/1511.04599].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robusthp.attacks.linf import _check_xy, _warn_if_suspicious
from robusthp.side_effects import eval_mode, fp32, gradients_on

DEFAULT_OVERSHOOT = 0.02  # the reference code's (and svd-uap's call)
DEFAULT_MAX_ITER = 50  # the reference code's; svd-uap calls it with 10
STEP_SLACK = 1e-4  # the reference code's: added to each step's length


def deepfool(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    overshoot: float = DEFAULT_OVERSHOOT,
    max_iter: int = DEFAULT_MAX_ITER,
    num_classes: int | None = None,
) -> Tensor:
    r"""DeepFool in the paper 'DeepFool: a simple and accurate method to fool deep neural
    networks' (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016) [https://arxiv.org/abs/1511.04599].

    Distance measure: L2 (minimal perturbation, no budget). ``clamp(x + r, 0, 1)`` with
    ``r = deepfool_perturbation(...)``; the clamp may undo a flip (module docstring).

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits.
        x (Tensor): ``(N, C, H, W)`` (any ``(N, ...)``) floats in ``[0, 1]``.
        y (Tensor | None): ``(N,)`` labels to move away from; default the clean predictions.
        overshoot (float): >= 0; the applied perturbation is ``(1 + overshoot) * r_tot``.
            Default 0.02.
        max_iter (int): >= 1 linearization steps at most. Default 50.
        num_classes (int | None): >= 2; the label and the ``num_classes - 1`` other
            classes of highest clean logit are the candidates (the reference code's
            top-k). Default None: all classes.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)``.
        - output: ``(N, C, H, W)``, range ``[0, 1]``, same dtype and device as ``x``.

    Example::
        >>> x_adv = deepfool(model, images)
    """
    r = deepfool_perturbation(model, x, y, overshoot=overshoot, max_iter=max_iter,
                              num_classes=num_classes)
    with torch.inference_mode(False):
        return torch.clamp(x.detach() + r, 0, 1)


def deepfool_perturbation(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    overshoot: float = DEFAULT_OVERSHOOT,
    max_iter: int = DEFAULT_MAX_ITER,
    num_classes: int | None = None,
) -> Tensor:
    r"""DeepFool's raw L2 perturbation ``r = (1 + overshoot) * r_tot`` (not clamped: ``x +
    r`` may leave ``[0, 1]``), the attack direction of SVD-Universal. Arguments as
    ``deepfool``'s. A point with a zero gradient for every candidate (or, with ``y``, one
    already misclassified) gets ``r = 0``; one not fooled within ``max_iter`` steps gets
    its last ``r``.

    Shape:
        - x: ``(N, C, H, W)``, range ``[0, 1]``.  - y: ``(N,)`` or None.
        - output: ``(N, C, H, W)``, same dtype and device as ``x``, detached.
    """
    _check_args(overshoot, max_iter, num_classes)
    if y is None:  # check x alone: any labels of the right length
        y_check = torch.zeros(x.shape[0] if isinstance(x, Tensor) and x.dim() else 0, dtype=torch.long)
        _check_xy(x, y_check)
    else:
        _check_xy(x, y)
    with eval_mode(model), gradients_on(), fp32():
        x = x.detach().clone()  # a normal tensor even if x is an inference tensor
        if x.shape[0] == 0:
            return torch.zeros_like(x)
        with torch.no_grad():
            logits = model(x)
        label = logits.argmax(1) if y is None else y.detach().to(x.device).clone()
        others = _candidates(logits, label, num_classes)  # (N, K - 1)
        r_tot = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)  # rows still classified as label
        scale = 1.0 + float(overshoot)
        for step in range(max_iter + 1):
            point = (x[active] + scale * r_tot[active]).requires_grad_(True)
            z = model(point)  # (A, K)
            still = z.argmax(1) == label[active]
            if step == max_iter or not bool(still.any()):
                break
            active, z, others_a = active[still], z[still], others[active[still]]
            r_tot[active] += _step(z, point, label[active], others_a, still, warn=step == 0)
        return (scale * r_tot).detach()


def _step(z: Tensor, point: Tensor, label: Tensor, others: Tensor, rows: Tensor, warn: bool) -> Tensor:
    """One DeepFool step for the rows ``rows`` of ``point`` (whose logits are ``z``): the
    step to the nearest linearized boundary among the candidate classes ``others``."""
    n = z.shape[0]
    per_sample = (n,) + (1,) * (point.dim() - 1)  # (A, 1, 1, 1) for images
    z_label = z.gather(1, label[:, None]).squeeze(1)  # (A,)
    best_dist = torch.full((n,), math.inf, dtype=point.dtype, device=point.device)
    best_step = torch.zeros((n,) + point.shape[1:], dtype=point.dtype, device=point.device)
    for j in range(others.shape[1]):
        f = z.gather(1, others[:, j : j + 1]).squeeze(1) - z_label  # (A,), < 0 before the flip
        (grad,) = torch.autograd.grad(f.sum(), point, retain_graph=j + 1 < others.shape[1])
        w = grad[rows]  # (A, ...): rows are independent in eval mode, so sum() gives each its own
        if warn and j == 0:
            _warn_if_suspicious(z.detach(), w, "deepfool")
        w_norm = w.flatten(1).norm(dim=1)  # (A,)
        dist = torch.where(w_norm > 0, f.detach().abs() / w_norm, torch.full_like(w_norm, math.inf))
        closer = dist < best_dist
        length = torch.where(w_norm > 0, (dist + STEP_SLACK) / w_norm, torch.zeros_like(w_norm))
        best_step = torch.where(closer.view(per_sample), length.view(per_sample) * w, best_step)
        best_dist = torch.where(closer, dist, best_dist)
    return best_step


def _candidates(logits: Tensor, label: Tensor, num_classes: int | None) -> Tensor:
    """``(N, K - 1)`` class indices: the ``K - 1`` classes other than the label of highest
    clean logit (``K = num_classes``, at most the model's number of classes)."""
    total = logits.shape[1]
    if logits.dim() != 2 or total < 2:
        raise ValueError(f"deepfool: the model must return (N, num_classes >= 2) logits; "
                         f"got shape {tuple(logits.shape)}")
    if bool(((label < 0) | (label >= total)).any()):
        raise ValueError(f"deepfool: labels must be in [0, {total}); "
                         f"got {int(label.min())}..{int(label.max())}")
    k = total if num_classes is None else min(num_classes, total)
    masked = logits.detach().clone()
    masked.scatter_(1, label[:, None], -math.inf)
    return masked.topk(k - 1, dim=1).indices


def _check_args(overshoot: float, max_iter: int, num_classes: int | None) -> None:
    if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or not (
            math.isfinite(overshoot) and overshoot >= 0):
        raise ValueError(f"deepfool: overshoot must be a finite number >= 0; got {overshoot!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"deepfool: max_iter must be an integer >= 1; got {max_iter!r}")
    if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"deepfool: num_classes must be None (all) or an integer >= 2; "
                         f"got {num_classes!r}")
