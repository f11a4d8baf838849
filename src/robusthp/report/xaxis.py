"""The x-axis of the batch-size figures: batch size, or the SGD noise scale lr / (B (1 - m)).

The noise scale is the temperature of SGD's gradient noise (Jastrzebski et al. 2017,
"Three factors influencing minima in SGD"; Smith & Le 2018, "A Bayesian perspective on
generalization and SGD"): with learning rate lr, batch size B and momentum m, g = lr /
(B (1 - m)). Drawn against it, regimes whose differences are only a noise scale fall onto
one curve. ``lr`` is the run's initial learning rate (the Benchmark halves it later).
A run without ``lr`` or with momentum >= 1 has no noise scale: it is left out and noted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator


@dataclass(frozen=True)
class XAxis:
    """One choice of x: its name (``--x``), axis label and file-name suffix."""

    name: str
    label: str
    suffix: str  # appended to a figure's file name ("" for the default)


X_AXES = {
    "batch_size": XAxis("batch_size", "batch size (log2 scale)", ""),
    "noise_scale": XAxis("noise_scale", "SGD noise scale lr / (B (1 - m)) (log scale)",
                         "_noise_scale"),
}


class NoNoiseScale(ValueError):
    """No run of a figure has a noise scale (lr missing or momentum >= 1)."""


def get_x_axis(name: str) -> XAxis:
    if name not in X_AXES:
        raise ValueError(f"unknown x axis {name!r}; choose one of: {', '.join(X_AXES)}")
    return X_AXES[name]


def noise_scale(table: pd.DataFrame) -> pd.Series:
    """lr / (B (1 - m)) per row of a runs or summary table; NaN without lr or with m >= 1."""
    lr = table["lr"].astype(float)
    batch_size = table["batch_size"].astype(float)
    momentum = table["momentum"].astype(float)
    valid = lr.notna() & (lr > 0) & (batch_size > 0) & (momentum < 1)
    return (lr / (batch_size * (1.0 - momentum))).where(valid).astype(float)


def with_x(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """A copy of ``table`` with an ``x`` column: the batch size or the noise scale."""
    table = table.copy()
    values = table["batch_size"].astype(float) if get_x_axis(x).name == "batch_size" \
        else noise_scale(table)
    table["x"] = values.to_numpy(dtype=float)
    return table


def decorate_x(ax, x: str, batch_sizes: list[int], values: np.ndarray) -> None:
    """Log axis: base 2 with a tick per batch size, or base 10 for the noise scale."""
    axis = get_x_axis(x)
    if axis.name == "batch_size":
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, labels=[str(b) for b in batch_sizes], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_xscale("log")
    finite = np.unique(values[np.isfinite(values)])
    if len(finite) == 1:
        ax.set_xlim(finite[0] / 1.5, finite[0] * 1.5)
    ax.set_xlabel(axis.label)
