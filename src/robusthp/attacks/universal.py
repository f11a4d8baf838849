"""SVD-Universal perturbations and universal invariant directions, in [0, 1] pixels.

Kamath, Deshpande, Subrahmanyam, 'Universalization of any adversarial attack using very
few test examples' (arXiv 2005.08632; code ksandeshk/svd-uap) build ONE input-agnostic
perturbation from a handful of test points: the attack directions of different points
(input gradients, FGSM signs, DeepFool perturbations) share a dominant direction, so the
top right singular vector of their stack fools the model on points it never saw. Here:

- ``attack_directions``: per point the attack direction ``a_i``, flattened and L2-normalized
  (a zero row, a point with no gradient, stays zero instead of turning into NaN);
- ``top_singular_direction``: the top right singular vector ``v1`` of ``A = [a_1; ...;
  a_n]`` and ``sigma1^2 / ||A||_F^2``, the share of A's energy along it: the spectral
  property the method relies on (1 when every point has the same direction, ``1 / n`` for
  orthogonal ones). Two pitfalls of the public snippet are avoided: ``scipy.sparse.linalg.svds``
  does not promise descending order (``torch.linalg.svd`` does, and the largest value is
  taken by index anyway), and a singular vector has an arbitrary sign, fixed here so
  that ``sum_i <a_i, v1> >= 0``, i.e. ``v1`` points where the attacks point on average;
- ``svd_universal``: both for the first ``n`` points of a batch (``UniversalDirection``);
- ``fooling_rates``: the flip rate ``#{f(x+u) != f(x)} / N`` (Moosavi-Dezfooli's
  definition) and the error rate ``#{f(x+u) != y} / N`` (the authors' code) of
  ``u = s * direction`` for each L2 norm ``s``, with ``x + u`` clamped to ``[0, 1]`` or not
  (the authors add ``u`` unclamped, in the model's normalized space);
- ``invariant_direction``: "universal invariant directions" (Kamath et al., arXiv
  2006.04449). No definition is public; this is a RECONSTRUCTION: the top right singular
  vector of the normalized rotation tangents ``t_i = (R_d x_i - R_-d x_i) / 2d``
  (``robusthp.rotation.rotation_tangents``, d = 2 degrees by default), the direction small
  rotations move the images in. ``abs_cosine`` compares it with an attack's ``v1``.

Contract: ``x`` ``(N, C, H, W)`` (any ``(N, ...)`` except for ``invariant_direction``) floats
in ``[0, 1]``, normalization inside the model, which returns logits; ``y`` ``(N,)``
integer labels. Everything runs on the device and in the dtype of ``x`` (the model must
be there too); the model runs in eval mode and each submodule's flag is restored; no
parameter's ``.grad`` is written (``torch.autograd.grad`` w.r.t. the input only); no
global RNG draws; works under ``torch.no_grad``/``torch.inference_mode`` (Lightning's
test hooks) and inside ``torch.autocast`` (disabled: full precision).

Example::

    >>> ud = svd_universal(model, x_test[:64], y_test[:64], attack="gradient")
    >>> ud.direction.shape, ud.sv_ratio                      # (1, 28, 28), e.g. 0.3
    >>> rates = fooling_rates(model, x_test[64:], y_test[64:], ud.direction, norms=[0, 2, 4])
    >>> rates["flip"][4.0], rates["error"][4.0]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.attacks.deepfool import deepfool_perturbation
from robusthp.attacks.linf import AttackWarning, _check_xy, _describe, _warn_if_suspicious
from robusthp.rotation import rotation_tangents
from robusthp.settings import UNIVERSAL_ATTACKS, UniversalSettings
from robusthp.side_effects import eval_mode, fp32, gradients_on

ATTACK_DIRECTIONS = UNIVERSAL_ATTACKS  # gradient, fgsm, deepfool: the paper's three attacks
DEFAULT_DELTA_DEGREES = UniversalSettings.delta_degrees  # the tangents' central difference
DEFAULT_FOOLING_BATCH = UniversalSettings.batch_size


@dataclass(frozen=True, eq=False)
class UniversalDirection:
    """One universal direction.

    Attributes:
        direction: ``(C, H, W)`` (the shape of one input), unit L2 norm, on the inputs'
            device and dtype; all zeros (and ``sv_ratio`` NaN) when every row of A was zero.
        sv_ratio: ``sigma1^2 / ||A||_F^2`` in ``[1/n, 1]`` (for n rows that are not all zero).
        attack: "gradient", "fgsm", "deepfool" or "invariant".
        n: the number of points it was built from.
    """

    direction: Tensor
    sv_ratio: float
    attack: str
    n: int


# ---------------------------------------------------------------- directions


def attack_directions(
    model: nn.Module, x: Tensor, y: Tensor, attack: str = "gradient", *, batch_size: int | None = None
) -> Tensor:
    """Each point's attack direction, flattened and L2-normalized: the rows of A.

    ``attack``: "gradient" (the input gradient of the cross-entropy at the label ``y``),
    "fgsm" (its sign) or "deepfool" (``deepfool_perturbation``, moving away from the clean
    prediction as the reference code; ``y`` is not used). ``batch_size``: points per
    forward pass (None: all at once).

    Shape: x ``(n, C, H, W)`` in ``[0, 1]``, y ``(n,)``; output ``(n, C*H*W)``, x's dtype and
    device, each row of unit L2 norm, or all zeros where the direction is zero (no NaN).
    """
    if attack not in ATTACK_DIRECTIONS:
        raise ValueError(f"unknown attack direction {attack!r}; valid: {', '.join(ATTACK_DIRECTIONS)}")
    _check_xy(x, y)
    _check_batch_size(batch_size)
    size = batch_size or max(int(x.shape[0]), 1)
    with eval_mode(model), gradients_on(), fp32():
        rows = [_raw_directions(model, xb.detach().clone(), yb.detach().to(xb.device).clone(), attack)
                for xb, yb in zip(x.split(size), y.split(size), strict=True)]
        a = torch.cat(rows).flatten(1) if rows else x.detach().clone().flatten(1)  # (n, D)
        return _unit_rows(a)


def _raw_directions(model: nn.Module, x: Tensor, y: Tensor, attack: str) -> Tensor:
    """The unnormalized directions of one batch, ``(b, C, H, W)``."""
    if attack == "deepfool":
        return deepfool_perturbation(model, x)
    x.requires_grad_(True)
    logits = model(x)
    # summed, not averaged: each point's own gradient, unscaled by the batch size
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    _warn_if_suspicious(logits.detach(), grad, f"svd_universal({attack})")
    return grad.sign() if attack == "fgsm" else grad


def _unit_rows(a: Tensor) -> Tensor:
    """Rows divided by their L2 norms; zero rows stay zero."""
    norms = a.norm(dim=1, keepdim=True)  # (n, 1)
    return a / torch.where(norms > 0, norms, torch.ones_like(norms))


def top_singular_direction(a: Tensor) -> tuple[Tensor, float]:
    """The top right singular vector ``v1`` of ``a`` (``(n, D)``) and ``sigma1^2 / ||a||_F^2``.

    ``torch.linalg.svd(full_matrices=False)``: an ``n x n`` problem for ``n << D`` rows,
    computed in float64 (float32 on MPS, which has none); the largest singular value is
    taken by index, whatever the order. The sign is fixed so that ``sum_i <a_i, v1> >= 0``.
    Raises ValueError for an empty, all-zero or non-finite ``a`` (no direction to take).

    Shape: a ``(n, D)`` float; v1 ``(D,)``, a's dtype and device, unit L2 norm.
    """
    if not isinstance(a, Tensor) or a.dim() != 2 or a.shape[0] == 0 or not a.is_floating_point():
        raise ValueError(f"top_singular_direction: a must be a non-empty float (n, D) matrix; "
                         f"got {_describe(a)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("top_singular_direction: a has non-finite entries")
    work = a.detach().to(torch.float32 if a.device.type == "mps" else torch.float64)
    energy = (work * work).sum()  # ||a||_F^2
    if not energy > 0:
        raise ValueError("top_singular_direction: a is all zeros; it has no top singular direction")
    _, s, vh = torch.linalg.svd(work, full_matrices=False)
    top = int(s.argmax())
    v1 = vh[top]
    if (work @ v1).sum() < 0:  # the sign: toward the attacks' average, sum_i <a_i, v1> >= 0
        v1 = -v1
    return v1.to(a.dtype), float(s[top] ** 2 / energy)


def _direction_of(rows: Tensor, shape: torch.Size, attack: str) -> UniversalDirection:
    """``top_singular_direction`` of ``rows`` reshaped to one input's shape; all-zero rows:
    a zero direction and a NaN ratio, with a warning (there is nothing to universalize)."""
    if bool((rows == 0).all()):
        warnings.warn(f"svd_universal({attack}): every direction is zero (zero input gradients?); "
                      "the universal direction is zero", AttackWarning, stacklevel=3)
        return UniversalDirection(torch.zeros(shape, dtype=rows.dtype, device=rows.device),
                                  math.nan, attack, int(rows.shape[0]))
    v1, ratio = top_singular_direction(rows)
    return UniversalDirection(v1.view(shape), ratio, attack, int(rows.shape[0]))


def svd_universal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str = "gradient",
    n: int | None = None,
    *,
    batch_size: int | None = None,
) -> UniversalDirection:
    """SVD-Universal (Kamath et al., arXiv 2005.08632): the universal direction of the first
    ``n`` points of ``x`` (all when None) under ``attack`` ("gradient", "fgsm", "deepfool").

    ``attack_directions`` stacked as rows, then ``top_singular_direction``; the perturbation
    of L2 norm ``s`` is ``s * direction``. ``batch_size``: points per forward pass.

    Shape: x ``(N, C, H, W)`` in ``[0, 1]``, y ``(N,)``; ``direction`` ``(C, H, W)``, unit L2
    norm, x's dtype and device.

    Example::
        >>> ud = svd_universal(model, x, y, attack="fgsm", n=64)
    """
    _check_xy(x, y)
    total = int(x.shape[0])
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total):
        raise ValueError(f"svd_universal: n must be None (all) or an integer in [1, {total}] "
                         f"(the points given); got {n!r}")
    if total == 0:
        raise ValueError("svd_universal: x holds no points")
    n = total if n is None else n
    rows = attack_directions(model, x[:n], y[:n], attack, batch_size=batch_size)  # (n, D)
    return _direction_of(rows, x.shape[1:], attack)


def invariant_direction(x: Tensor, delta_degrees: float = DEFAULT_DELTA_DEGREES) -> UniversalDirection:
    """A universal invariant direction: RECONSTRUCTION (Kamath et al., arXiv 2006.04449,
    give no public definition): the top right singular vector of the L2-normalized rotation
    tangents ``t_i = (R_d x_i - R_-d x_i) / 2d`` (``robusthp.rotation.rotation_tangents``,
    bilinear, ``d = delta_degrees``), its sign fixed by ``sum_i <t_i, v1> >= 0``.

    The direction small rotations move these images in; a model invariant to rotation is
    flat along it, so its ``|cos|`` with an attack's ``v1`` says whether the attack exploits
    it. Needs no model. Shape: x ``(N, C, H, W)`` floats; ``direction`` ``(C, H, W)``, unit
    L2 norm, x's dtype and device; ``attack == "invariant"``.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or x.shape[0] == 0:
        raise ValueError(f"invariant_direction: x must be a non-empty float (N, C, H, W) batch; "
                         f"got {_describe(x)}")
    with torch.inference_mode(False), torch.no_grad():
        tangents = rotation_tangents(x.detach().clone(), delta_degrees)  # (N, C, H, W)
        return _direction_of(_unit_rows(tangents.flatten(1)), x.shape[1:], "invariant")


def abs_cosine(a: Tensor, b: Tensor) -> float:
    """``|<a, b>| / (||a|| ||b||)`` over all entries (the sign of a singular vector means
    nothing, so only the angle's size counts); NaN when either is zero."""
    a, b = a.detach().flatten().double(), b.detach().flatten().to(a.device).double()
    norms = a.norm() * b.norm()
    return float((a @ b).abs() / norms) if norms > 0 else math.nan


# ---------------------------------------------------------------- fooling rates


def fooling_rates(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    direction: Tensor,
    norms: Iterable[float],
    clamp: bool = True,
    batch_size: int | None = DEFAULT_FOOLING_BATCH,
    device: torch.device | str | None = None,
) -> dict[str, dict[float, float]]:
    """Flip and error rates of the one perturbation ``u = s * direction`` per L2 norm ``s``.

    ``{"flip": {s: #{argmax f(x+u) != argmax f(x)} / N}, "error": {s: #{argmax f(x+u) != y} / N}}``:
    the flip rate is the standard fooling rate (Moosavi-Dezfooli et al.), the error rate
    the authors' code's (it counts clean mistakes too: at ``s = 0`` it is ``1 -`` clean
    accuracy). ``clamp``: clamp ``x + u`` to ``[0, 1]`` (a valid image; then ``u`` is not
    applied in full where pixels saturate) or not (the authors'). ``s`` is the L2 norm of
    ``u`` in ``[0, 1]`` pixels when ``direction`` has unit norm (it is used as given).
    ``batch_size``: points per forward pass (None: all); ``device``: move each batch there.

    Shape: x ``(N, C, H, W)`` in ``[0, 1]``, y ``(N,)``, direction ``(C, H, W)``.
    """
    _check_xy(x, y)
    _check_batch_size(batch_size)
    if not isinstance(direction, Tensor) or direction.shape != x.shape[1:]:
        raise ValueError(f"fooling_rates: direction must have one input's shape {tuple(x.shape[1:])}; "
                         f"got {_describe(direction)}")
    norms = _check_norms(norms)
    if x.shape[0] == 0:
        raise ValueError("fooling_rates: x holds no points")
    flips, errors = dict.fromkeys(norms, 0), dict.fromkeys(norms, 0)
    size = batch_size or int(x.shape[0])
    with eval_mode(model), torch.no_grad(), fp32():
        for xb, yb in zip(x.split(size), y.split(size), strict=True):
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            yb, d = yb.to(xb.device), direction.detach().to(xb.device, xb.dtype)
            clean = model(xb).argmax(1)
            for s in norms:
                moved = xb + s * d
                pred = model(moved.clamp(0, 1) if clamp else moved).argmax(1)
                flips[s] += int((pred != clean).sum())
                errors[s] += int((pred != yb).sum())
    total = int(x.shape[0])
    return {"flip": {s: c / total for s, c in flips.items()},
            "error": {s: c / total for s, c in errors.items()}}


def _check_norms(norms: Iterable[float]) -> list[float]:
    values = [norms] if isinstance(norms, (int, float)) else list(norms)
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise ValueError(f"fooling_rates: norms must be finite numbers >= 0 (L2, pixels); got {s!r}")
    if not values:
        raise ValueError("fooling_rates: norms is empty; give at least one L2 norm")
    return list(dict.fromkeys(float(s) for s in values))


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None (all at once) or an integer >= 1; got {batch_size!r}")
