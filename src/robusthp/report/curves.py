"""Robustness curves: accuracy vs eps from ``min_eps_curve``, one line per batch size.

Each run with ``eval.adversarial.min_eps=true`` records acc(eps) on a grid 0 .. eps_max in
its primary reading (``min_eps_space``). One panel per line of the sweep (a regime, and
its momentum for the regimes that sweep it, :func:`~robusthp.report.names.sweeps_momentum`),
one line per batch size in a sequential colour map (dark: small, light: large batches),
each the mean over the ok, trained seeds of that cell (curves on another grid are
interpolated onto the first seed's). Untrained runs are left out and counted in a note.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robusthp.report.flags import untrained
from robusthp.report.layout import figure_grid
from robusthp.report.names import cell_title, fixes_momentum, regime_label, regime_order

COLOUR_MAP = "viridis"
COLOUR_RANGE = (0.0, 0.85)  # of the map: its brightest yellow is hard to see on white
SPACE_LABELS = {"pixel": "eps ([0, 1] pixels)", "normalized": "eps (normalized, x std)"}


def has_curves(df: pd.DataFrame) -> pd.Series:
    """True for ok runs that recorded a robustness curve."""
    if "min_eps_curve" not in df.columns:
        return pd.Series(False, index=df.index)
    return (df["status"] == "ok") & df["min_eps_curve"].map(_valid_curve).astype(bool)


def plot_robustness_curves(df: pd.DataFrame, dataset: str, model: str, *,
                           title: str | None = None) -> Figure:
    """Accuracy vs eps (``min_eps_curve``), one panel per line of the sweep, one line per
    batch size (gid ``"curve"``, label ``B = <batch size>``), mean over ok trained seeds.

    The x-axis is labelled with the runs' ``min_eps_space``. Raises ``ValueError`` when no
    ok, trained run of (dataset, model) has a curve.
    """
    runs = df[(df["dataset"] == dataset) & (df["model"] == model) & has_curves(df)]
    skipped = int(untrained(runs).sum())
    runs = runs[~untrained(runs)]
    if runs.empty:
        raise ValueError(f"no ok, trained run of {dataset}/{model} has a robustness curve "
                         "(min_eps_curve; eval.adversarial.min_eps=true)")
    groups = _panels(runs)
    if not groups:
        raise ValueError(f"no run of {dataset}/{model} with a curve has a known cell")
    batch_sizes = sorted(int(b) for b in runs["batch_size"].dropna().unique())
    note = f"{skipped} untrained run{'s' if skipped != 1 else ''} left out" if skipped else ""
    fig, axes = figure_grid(len(groups), note, max_cols=3, panel_size=(3.6, 3.0),
                            legend_width=1.4)
    for ax, (name, panel_runs) in zip(axes, groups, strict=True):
        for batch_size, cell in panel_runs.groupby("batch_size", sort=True):
            eps, acc = _mean_curve(cell["min_eps_curve"])
            ax.plot(eps, acc, color=_colour(int(batch_size), batch_sizes), linewidth=1.6,
                    label=f"B = {int(batch_size)}", gid="curve")
        spaces = sorted(panel_runs["min_eps_space"].dropna().unique()) \
            if "min_eps_space" in panel_runs.columns else []
        ax.set_xlabel(" / ".join(SPACE_LABELS.get(s, f"eps ({s})") for s in spaces) or "eps")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(-0.02, 1.02)
        finish_panel(ax, name)
    batch_size_legend(fig, batch_sizes)
    fig.suptitle(title or f"{cell_title(dataset, model)}: accuracy vs eps "
                          "(minimal-perturbation curves, mean over ok seeds)", fontsize=11)
    return fig


def finish_panel(ax: Any, name: str) -> None:
    """A per-line panel's title, grid and tick size, as every per-line figure draws them."""
    ax.set_title(name, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)


def batch_size_legend(fig: Figure, batch_sizes: list[int]) -> None:
    """One legend entry per batch size, in the colours of ``_colour``, right of the panels."""
    handles: list[Any] = [Line2D([], [], color=_colour(b, batch_sizes), label=f"B = {b}")
                          for b in batch_sizes]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False,
               title="batch size", title_fontsize=8)


def _panels(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, runs) per line of the sweep, in the catalog's regime order, then momentum."""
    runs = runs.dropna(subset=["regime", "momentum", "batch_size"])
    out = []
    for regime in regime_order(runs["regime"]):
        of_regime = runs[runs["regime"] == regime]
        if fixes_momentum(regime):
            out.append((regime_label(regime), of_regime))
            continue
        for momentum, group in of_regime.groupby("momentum", sort=True):
            out.append((f"{regime_label(regime)}, m = {momentum:g}", group))
    return out


def _valid_curve(curve: Any) -> bool:
    return (isinstance(curve, dict) and isinstance(curve.get("eps"), list)
            and isinstance(curve.get("acc"), list) and len(curve["eps"]) == len(curve["acc"]) > 1)


def _mean_curve(curves: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the curves on the first one's eps grid (NaN where a curve stops short)."""
    first = curves.iloc[0]
    grid = np.asarray(first["eps"], dtype=float)
    stack = [np.interp(grid, np.asarray(c["eps"], dtype=float),
                       np.asarray(c["acc"], dtype=float), left=math.nan, right=math.nan)
             for c in curves]
    with warnings.catch_warnings():  # a grid point no curve reaches stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(np.vstack(stack), axis=0)


def _colour(batch_size: int, batch_sizes: list[int]) -> tuple[float, ...]:
    """A colour of :data:`COLOUR_MAP`, by log2 batch size over the figure's batch sizes."""
    lo, hi = math.log2(batch_sizes[0]), math.log2(batch_sizes[-1])
    t = 0.5 if hi == lo else (math.log2(batch_size) - lo) / (hi - lo)
    start, stop = COLOUR_RANGE
    return colormaps[COLOUR_MAP](start + t * (stop - start))
