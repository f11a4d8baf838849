"""A Hessian eigenvalue density on a grid, from stochastic Lanczos quadrature's nodes and weights.

Torch-free (NumPy only), so that the report, which never imports torch, draws the same
curve as ``robusthp.hessian.hessian_density``'s users. Follows ``density_generate`` of
PyHessian's example code (Yao et al., ``density_plot.py`` in amirgholami/PyHessian): each
node spread into a Gaussian of its weight, averaged over start vectors, normalised to unit
area on the grid (Ghorbani, Krishnan, Xiao 2019, eq. 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def density_grid(nodes: Sequence[Sequence[float]], num_bins: int = 10000,
                 overhead: float = 0.01) -> np.ndarray:
    """PyHessian's grid: from the mean over vectors of the least node to that of the largest,
    widened by ``overhead`` on each side."""
    lows = [min(n) for n in nodes]
    highs = [max(n) for n in nodes]
    return np.linspace(np.mean(lows) - overhead, np.mean(highs) + overhead, num=num_bins)


def smoothed_density(nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], *,
                     grid: np.ndarray | None = None, num_bins: int = 10000,
                     sigma_squared: float = 1e-5, overhead: float = 0.01,
                     width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): the mean over vectors of sum_i w_i N(x; node_i, variance), scaled to
    unit area on the grid.

    nodes, weights: per start vector, as ``DensityResult`` (vectors may have different
    lengths). grid: default ``density_grid(nodes, num_bins, overhead)``. The Gaussians'
    variance is PyHessian's, ``sigma_squared * max(1, grid span)``, unless ``width`` (their
    standard deviation) is given: PyHessian's is so narrow that each node is a spike, right
    for one density on a log scale, too busy to compare several in one panel.
    """
    if len(nodes) == 0 or len(nodes) != len(weights):
        raise ValueError("nodes and weights must be non-empty lists of the same length")
    grid = density_grid(nodes, num_bins, overhead) if grid is None else np.asarray(grid, float)
    if len(grid) < 2:
        raise ValueError("the grid needs at least two points")
    span = float(grid[-1] - grid[0])
    variance = sigma_squared * max(1.0, span) if width is None else width**2
    if not variance > 0:
        raise ValueError(f"the Gaussians' variance must be > 0, got {variance!r}")
    per_vector = []
    for node, weight in zip(nodes, weights, strict=True):
        node, weight = np.asarray(node, float), np.asarray(weight, float)
        gauss = np.exp(-((grid[:, None] - node[None, :]) ** 2) / (2 * variance))
        per_vector.append(gauss @ weight / np.sqrt(2 * np.pi * variance))
    density = np.mean(per_vector, axis=0)
    area = density.sum() * (grid[1] - grid[0])
    return grid, density / area if area > 0 else density
