"""Minimal L-inf perturbations: eps*(x) per example, and accuracy at every eps from it.

Apart from the attacks because it is a search that uses them:
``minimal_eps`` builds on ``pgd(..., stop_when_fooled=True)``: the per-example minimal
L-inf perturbation eps*(x), and ``robustness_curve`` / ``min_eps_summary`` turn eps*
into accuracy at every eps at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks.linf import (
    DEFAULT_PGD_STEPS,
    Box,
    _as_box,
    _check_steps,
    _check_xy,
    _describe,
    _linf_pgd,
    default_alpha,
)
from robusthp.side_effects import gradients_on

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


def bounded_by_attacks(eps_star: Tensor, fooled_at: Sequence[tuple[float, Tensor]]) -> Tensor:
    """eps* lowered to ``eps_k`` wherever an attack at ``eps_k`` fooled the point.

    The search's probes can miss a point that a fixed-eps attack fooled; an attack that
    ran on the same points is a proof that eps* <= eps_k, so the curve never reads above
    it: ``robustness_curve(bounded, [eps_k]) <= that attack's accuracy`` exactly.

    Arguments:
        eps_star (Tensor): ``(N,)`` from ``minimal_eps``.
        fooled_at: ``(eps_k, mask)`` pairs, eps_k in eps*'s units and ``mask`` ``(N,)``
            bool, True where the attack at eps_k fooled the point.
    """
    bounded = _check_eps_star(eps_star).clone()
    for eps, fooled in fooled_at:
        fooled = fooled.to(device=bounded.device, dtype=torch.bool)
        if fooled.shape != bounded.shape:
            raise ValueError(f"a fooled mask must have eps*'s shape {tuple(bounded.shape)}; "
                             f"got {tuple(fooled.shape)}")
        cap = torch.tensor(float(eps), dtype=bounded.dtype, device=bounded.device)
        bounded[fooled] = torch.minimum(bounded[fooled], cap)
    return bounded


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
