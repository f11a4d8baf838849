"""The Hessian beyond its top eigenvalue: the eigenvalue density and the trace vs batch size.

Runs with ``eval.hessian.density=true`` record ``hessian_density`` (per start vector the
nodes and weights of stochastic Lanczos quadrature, Ghorbani, Krishnan, Xiao 2019); those
with ``eval.hessian.trace=true`` record ``hessian_trace`` (Hutchinson's estimate). Each
(dataset, model) with such runs adds

- ``<dataset>_<model>_hessian_density.png``: one panel per line of the sweep (a regime, and
  its momentum where the regime sweeps it), one curve per batch size (dark: small, light:
  large, as the robustness curves), the Gaussian-smoothed density averaged over the start
  vectors of the ok, trained seeds of that cell, on a log scale as PyHessian's plots;
- ``<dataset>_<model>_hessian_trace.png``: the top eigenvalue and the trace vs batch size,
  side by side, one line per (regime, momentum), as the paper figures draw them.

Nothing is drawn for a sweep without these keys. The density is of the training loss only
(``hessian_density``; a test-split density, ``hessian_density@test``, is not drawn).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robusthp.report.curves import _colour, _panels, batch_size_legend, finish_panel
from robusthp.report.figures import PANELS, Panel, natural_runs, plot_batch_size_figure
from robusthp.report.flags import untrained
from robusthp.report.layout import figure_grid
from robusthp.report.names import cell_title
from robusthp.report.xaxis import NoNoiseScale, get_x_axis
from robusthp.spectral_density import smoothed_density

DENSITY = "hessian_density"
TRACE = "hessian_trace"
# The Gaussians' standard deviation, as a fraction of a panel's eigenvalue span: PyHessian's
# own kernel makes each node a spike, unreadable with several densities in one panel.
DENSITY_WIDTH = 0.01
DENSITY_FLOOR = 1e-7  # added before the log scale, as PyHessian's plot does
GRID_POINTS = 2000
TRACE_PANELS = (Panel(TRACE, "Hessian trace (Hutchinson)", "trace"),
                Panel(f"{TRACE}@test", "Hessian trace (test loss)", "trace"))


def _valid_density(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    nodes, weights = value.get("nodes"), value.get("weights")
    return (isinstance(nodes, list) and isinstance(weights, list) and len(nodes) == len(weights) > 0
            and all(isinstance(n, list) and isinstance(w, list) and len(n) == len(w) > 0
                    for n, w in zip(nodes, weights, strict=True)))


def has_density(df: pd.DataFrame) -> pd.Series:
    """True for ok, trained runs that recorded a density."""
    if DENSITY not in df.columns:
        return pd.Series(False, index=df.index)
    return (df["status"] == "ok") & ~untrained(df) & df[DENSITY].map(_valid_density).astype(bool)


def _cells(df: pd.DataFrame, rows: pd.Series) -> list[tuple[str, str]]:
    placed = df[rows].dropna(subset=["dataset", "model", "regime", "momentum", "batch_size"])
    return sorted(set(zip(placed["dataset"], placed["model"], strict=True)))


def density_figure_names(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) of every density figure."""
    return _cells(df, has_density(df))


def trace_figure_names(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) of every trace figure: some ok run recorded a trace."""
    if TRACE not in df.columns:
        return []
    return _cells(df, (df["status"] == "ok") & df[TRACE].notna())


def _cell_density(densities: pd.Series, grid: np.ndarray, width: float) -> np.ndarray:
    """The mean over every start vector of every run of the cell (PyHessian's mean over runs)."""
    nodes = [n for d in densities for n in d["nodes"]]
    weights = [w for d in densities for w in d["weights"]]
    return smoothed_density(nodes, weights, grid=grid, width=width)[1]


def _grid(runs: pd.DataFrame) -> np.ndarray:
    nodes = [x for d in runs[DENSITY] for n in d["nodes"] for x in n]
    lo, hi = min(nodes), max(nodes)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return np.linspace(lo - pad, hi + pad, GRID_POINTS)


def plot_density_figure(df: pd.DataFrame, dataset: str, model: str, *,
                        title: str | None = None) -> Figure:
    """The eigenvalue density, one panel per line of the sweep, one curve per batch size
    (gid ``"density"``, label ``B = <batch size>``). Raises ``ValueError`` when no ok, trained
    run of (dataset, model) recorded a density."""
    runs, _ = natural_runs(df[(df["dataset"] == dataset) & (df["model"] == model)])
    skipped = int(((runs["status"] == "ok") & untrained(runs)).sum())
    runs = runs[has_density(runs)]
    groups = _panels(runs)
    if runs.empty or not groups:
        raise ValueError(f"no ok, trained run of {dataset}/{model} has a Hessian density "
                         "(hessian_density; eval.hessian.density=true)")
    batch_sizes = sorted(int(b) for b in runs["batch_size"].dropna().unique())
    note = f"{skipped} untrained run{'s' if skipped != 1 else ''} left out" if skipped else ""
    fig, axes = figure_grid(len(groups), note, max_cols=3, panel_size=(3.6, 3.0),
                            legend_width=1.4)
    for ax, (name, panel_runs) in zip(axes, groups, strict=True):
        grid = _grid(panel_runs)
        width = DENSITY_WIDTH * float(grid[-1] - grid[0])
        for batch_size, cell in panel_runs.groupby("batch_size", sort=True):
            density = _cell_density(cell[DENSITY], grid, width)
            ax.semilogy(grid, density + DENSITY_FLOOR, color=_colour(int(batch_size), batch_sizes),
                        linewidth=1.4, label=f"B = {int(batch_size)}", gid="density")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log scale)")
        finish_panel(ax, name)
    batch_size_legend(fig, batch_sizes)
    fig.suptitle(title or f"{cell_title(dataset, model)}: Hessian eigenvalue density (SLQ, "
                          "mean over start vectors and ok seeds)", fontsize=11)
    return fig


def plot_trace_figure(df: pd.DataFrame, dataset: str, model: str, *, spread: str = "minmax",
                      x: str = "batch_size", title: str | None = None) -> Figure:
    """The top eigenvalue and the trace vs batch size (or noise scale), one line per (regime,
    momentum): :func:`~robusthp.report.figures.plot_batch_size_figure` with those panels."""
    top = PANELS[-1]
    panels = [top, TRACE_PANELS[0]]
    if all(c in df.columns for c in (f"{TRACE}@test", "hessian_top_eig@test")) \
            and df[f"{TRACE}@test"].notna().any():
        panels += [Panel("hessian_top_eig@test", "Top Hessian eigenvalue (test loss)",
                         "top eigenvalue"), TRACE_PANELS[1]]
    against = "batch size" if x == "batch_size" else "SGD noise scale"
    return plot_batch_size_figure(
        df, dataset, model, panels=panels, spread=spread, x=x,
        title=title or f"{cell_title(dataset, model)}: Hessian top eigenvalue and trace vs "
                       f"{against}")


def spectrum_figures(df: pd.DataFrame, spread: str = "minmax",
                     x: str = "batch_size") -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of every density and trace figure ``df`` has data for."""
    for dataset, model in density_figure_names(df):
        yield f"{dataset}_{model}_hessian_density.png", plot_density_figure(df, dataset, model)
    suffix = get_x_axis(x).suffix
    for dataset, model in trace_figure_names(df):
        try:
            fig = plot_trace_figure(df, dataset, model, spread=spread, x=x)
        except NoNoiseScale:  # its runs have no noise scale: the batch-size figures say so
            continue
        yield f"{dataset}_{model}_hessian_trace{suffix}.png", fig
