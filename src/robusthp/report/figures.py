"""The paper's figures: accuracy, robustness and curvature vs batch size, one line per setting.

Colours follow the paper (see :mod:`robusthp.report.names`); within a regime, momentum is
shown by shade, marker and line style (:mod:`robusthp.report.style`). Lines are means over
the seeds that finished ``ok``; the band is their min-max (or +-1 std). Diverged runs are an
``x`` at the bottom of every panel at their batch size; failed, unreadable and missing runs
are listed in a note under the figure (:mod:`robusthp.report.notes`).

Figures are plain :class:`matplotlib.figure.Figure` objects on an Agg canvas (no pyplot, no
global backend switch), so they save headless and also display in a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from robusthp.report.names import cell_title, fixes_momentum, regime_label
from robusthp.report.notes import figure_note
from robusthp.report.stats import summarize
from robusthp.report.style import LineStyle, line_styles


@dataclass(frozen=True)
class Panel:
    """One panel of a batch-size figure: which column it plots and how it is labelled."""

    metric: str
    title: str
    ylabel: str


PANELS = (
    Panel("test_acc", "Clean test accuracy", "accuracy"),
    Panel("fgsm_acc", "FGSM accuracy", "accuracy under attack"),
    Panel("pgd_acc", "PGD accuracy", "accuracy under attack"),
    Panel("hessian_top_eig", "Top Hessian eigenvalue", "top eigenvalue"),
)
SPREADS = ("minmax", "std")
MIN_ACC_SPAN = 0.05  # smallest y-range of an accuracy panel


def plot_batch_size_figure(
    df: pd.DataFrame,
    dataset: str,
    model: str,
    *,
    regimes: Sequence[str] | None = None,
    momenta: Sequence[float] | None = None,
    panels: Sequence[Panel] = PANELS,
    spread: str = "minmax",
    title: str | None = None,
) -> Figure:
    """Accuracy, FGSM / PGD accuracy and top Hessian eigenvalue vs batch size, one panel each.

    ``df`` is the per-run table of :func:`~robusthp.report.collect` (not the summary: statuses
    are needed). One line per (regime, momentum): the mean over ``ok`` seeds with a band
    (``spread`` = ``"minmax"`` or ``"std"``: +-1 std). ``regimes`` / ``momenta`` restrict the
    lines; the momentum filter leaves the regimes that fix their momentum (the Benchmark)
    alone. Panels with no data at all are left out. Diverged runs are ``x`` markers at the
    bottom of each panel (artists with gid ``"diverged"``); failed / unreadable / missing runs
    are listed in a note (a text artist with gid ``"note"``). Returns a Figure on an Agg canvas.
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")
    runs = _select(df, dataset, model, regimes, momenta)
    if runs.empty:
        raise ValueError(f"no runs for dataset={dataset!r}, model={model!r} with the given "
                         f"filters (regimes={regimes}, momenta={momenta})")
    summary = summarize(runs)
    panels = [p for p in panels if summary[f"{p.metric}_mean"].notna().any()] or list(panels[:1])
    lines = sorted({(r, float(m)) for r, m in zip(runs["regime"], runs["momentum"], strict=True)})
    styles = line_styles(lines, show_regime=len({r for r, _ in lines}) > 1)
    batch_sizes = sorted(int(b) for b in runs["batch_size"].dropna().unique())
    diverged = runs[runs["status"] == "diverged"]
    note = figure_note(runs, styles, batch_sizes)

    fig, axes = _figure_grid(len(panels), note)
    for ax, panel in zip(axes, panels, strict=True):
        for style in styles:
            _plot_line(ax, summary, style, panel.metric, spread)
        _mark_diverged(ax, diverged, styles)
        _decorate(ax, panel, batch_sizes, summary, has_diverged=not diverged.empty)
    n_ok = summary.loc[summary["n"] > 0, "n"]
    seeds = "" if n_ok.empty else f"n = {_range_text(n_ok)} seed{'s' if n_ok.max() > 1 else ''} per point"
    fig.suptitle(title or f"{cell_title(dataset, model)}: accuracy and curvature vs batch size"
                 + (f"  ({seeds})" if seeds else ""), fontsize=12)
    _legend(fig, styles, spread, has_diverged=not diverged.empty)
    return fig


def plot_momentum_figure(df: pd.DataFrame, dataset: str, model: str, regime: str,
                         **kwargs: Any) -> Figure:
    """Section 4 figure: one regime, one line per momentum (see :func:`plot_batch_size_figure`)."""
    title = kwargs.pop("title", None) or (
        f"{cell_title(dataset, model)}, {regime_label(regime)}: effect of momentum")
    return plot_batch_size_figure(df, dataset, model, regimes=[regime], title=title, **kwargs)


def _select(df, dataset, model, regimes, momenta) -> pd.DataFrame:
    runs = df[(df["dataset"] == dataset) & (df["model"] == model)]
    runs = runs.dropna(subset=["regime", "momentum", "batch_size"])
    if regimes is not None:
        runs = runs[runs["regime"].isin(list(regimes))]
    if momenta is not None:
        keep = runs["momentum"].map(lambda m: any(math.isclose(m, k) for k in momenta))
        runs = runs[keep | runs["regime"].map(fixes_momentum).astype(bool)]
    return runs


def _figure_grid(n_panels: int, note: str) -> tuple[Figure, list]:
    ncols = 2 if n_panels > 1 else 1
    nrows = math.ceil(n_panels / ncols)
    note_lines = note.count("\n") + 1 if note else 0
    height = 3.1 * nrows + 0.2 * note_lines + 0.6
    fig = Figure(figsize=(4.3 * ncols + 3.0, height), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    ratios = [1.0] * nrows + ([0.2 * note_lines / 3.1] if note else [])
    grid = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(n_panels)]
    if note:
        note_ax = fig.add_subplot(grid[nrows, :])
        note_ax.set_axis_off()
        note_ax.text(0.0, 1.0, note, va="top", ha="left", fontsize=8, family="monospace",
                     transform=note_ax.transAxes, gid="note")
    return fig, axes


def _plot_line(ax, summary: pd.DataFrame, style: LineStyle, metric: str, spread: str) -> None:
    rows = style.rows(summary)
    x = rows["batch_size"].astype(float).to_numpy()
    mean = rows[f"{metric}_mean"].to_numpy(dtype=float)
    if spread == "minmax":
        lo, hi = rows[f"{metric}_min"], rows[f"{metric}_max"]
    else:
        std = rows[f"{metric}_std"].fillna(0.0)
        lo, hi = rows[f"{metric}_mean"] - std, rows[f"{metric}_mean"] + std
    ax.fill_between(x, lo.to_numpy(dtype=float), hi.to_numpy(dtype=float), color=style.colour,
                    alpha=0.15, linewidth=0, gid="spread")
    ax.plot(x, mean, color=style.colour, marker=style.marker, linestyle=style.linestyle,
            markersize=5, linewidth=1.6, label=style.label, gid="mean")


def _mark_diverged(ax, diverged: pd.DataFrame, styles: Sequence[LineStyle]) -> None:
    """An ``x`` per (line, batch size) with a diverged run, stacked at the panel's bottom."""
    k = 0
    for style in styles:
        rows = style.rows(diverged)
        if rows.empty:
            continue
        x = sorted(rows["batch_size"].astype(float).unique())
        y = [0.05 + 0.06 * k] * len(x)
        ax.plot(x, y, transform=ax.get_xaxis_transform(), linestyle="none", marker="x",
                markersize=8, markeredgewidth=2.2, color=style.colour, gid="diverged",
                clip_on=False)
        k += 1


def _decorate(ax, panel: Panel, batch_sizes: list[int], summary: pd.DataFrame,
              has_diverged: bool) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, labels=[str(b) for b in batch_sizes], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    if len(batch_sizes) == 1:
        ax.set_xlim(batch_sizes[0] / 1.5, batch_sizes[0] * 1.5)
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_title(panel.title, fontsize=10)
    values = summary[[f"{panel.metric}_min", f"{panel.metric}_max"]].stack().dropna()
    ylabel = panel.ylabel
    if panel.metric == "hessian_top_eig" and not values.empty and values.min() > 0 \
            and values.max() / values.min() > 30:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    if panel.metric.endswith("_acc"):  # do not blow differences of a few test points up
        lo, hi = ax.get_ylim()
        if hi - lo < MIN_ACC_SPAN:
            lo = max(min(lo, 1 - MIN_ACC_SPAN), -0.005)
            ax.set_ylim(lo, lo + MIN_ACC_SPAN)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=8)
    if has_diverged:  # leave room under the data for the diverged markers
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(lo / (hi / lo) ** 0.25, hi)
        else:
            ax.set_ylim(lo - 0.25 * (hi - lo), hi)


def _legend(fig: Figure, styles: Sequence[LineStyle], spread: str, has_diverged: bool) -> None:
    handles: list[Any] = [Line2D([], [], color=s.colour, marker=s.marker, linestyle=s.linestyle,
                                 label=s.label) for s in styles]
    band = "min-max over seeds" if spread == "minmax" else "mean +- 1 std over seeds"
    handles.append(Patch(facecolor="0.6", alpha=0.35, label=f"band: {band}"))
    if has_diverged:
        handles.append(Line2D([], [], color="0.2", marker="x", linestyle="none",
                              markeredgewidth=2, label="diverged (x at panel bottom)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8,
               title="line: mean over ok seeds", title_fontsize=8, frameon=False)


def _range_text(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
