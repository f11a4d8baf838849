"""The paper's figures: accuracy, robustness and curvature vs batch size, one line per setting.

Colours follow the paper (see :mod:`robusthp.report.names`); within a regime, momentum is
shown by shade, marker and line style (:mod:`robusthp.report.style`). Lines are means over
the seeds that finished ``ok`` and trained; the band is their min-max (or +-1 std).
Untrained runs (and unconverged eigenvalues, in their panel) are hollow markers off the
lines (:mod:`robusthp.report.flags`); diverged runs are an ``x`` at the bottom of every
panel; failed, unreadable and missing runs are listed in a note under the figure
(:mod:`robusthp.report.notes`). The x-axis is the batch size or the SGD noise scale
(:mod:`robusthp.report.xaxis`); the panels follow the metrics recorded
(:mod:`robusthp.report.panels`). Plain Figures on an Agg canvas (:mod:`robusthp.report.layout`).
A (dataset, model) that mixes natural and adversarial training (``adv_train``) is drawn from
its natural runs only (:func:`natural_runs`; the others are counted in the note and drawn by
:mod:`robusthp.report.adv_training`), one with rotations from its least Θ_train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from robusthp.report.columns import is_accuracy
from robusthp.report.layout import figure_grid
from robusthp.report.marks import mark_diverged, mark_left_out
from robusthp.report.names import cell_title, fixes_momentum, regime_label
from robusthp.report.notes import figure_note
from robusthp.report.panels import PANELS, Panel, panels_for, with_panel_columns
from robusthp.report.stats import summarize
from robusthp.report.style import LineStyle, line_styles
from robusthp.report.xaxis import NoNoiseScale, decorate_x, get_x_axis, with_x

__all__ = ["MIN_ACC_SPAN", "PANELS", "SPREADS", "Panel", "natural_runs",
           "plot_batch_size_figure", "plot_momentum_figure"]

SPREADS = ("minmax", "std")
MIN_ACC_SPAN = 0.05  # smallest y-range of an accuracy panel


def plot_batch_size_figure(
    df: pd.DataFrame,
    dataset: str,
    model: str,
    *,
    regimes: Sequence[str] | None = None,
    momenta: Sequence[float] | None = None,
    panels: Sequence[Panel] | None = None,
    spread: str = "minmax",
    title: str | None = None,
    x: str = "batch_size",
) -> Figure:
    """Accuracy (clean, FGSM / PGD at each eps), top Hessian eigenvalue and median eps* vs
    batch size (or, with ``x="noise_scale"``, vs lr / (B (1 - m))), one panel each.

    ``df`` is the per-run table of :func:`~robusthp.report.collect` (not the summary: statuses
    are needed). One line per (regime, momentum): the mean over ``ok``, trained seeds with a
    band (``spread`` = ``"minmax"`` or ``"std"``: +-1 std). ``regimes`` / ``momenta``
    restrict the lines; the momentum filter leaves the regimes that fix their momentum (the
    Benchmark) alone. ``panels`` default: :func:`~robusthp.report.panels.panels_for`;
    panels with no data are left out. Diverged runs are ``x`` markers at the bottom of each
    panel (gid ``"diverged"``); untrained runs and unconverged eigenvalues are hollow
    markers (gids ``"untrained"``, ``"unconverged"``); what is left out is listed in a note
    (a text artist with gid ``"note"``). Returns a Figure on an Agg canvas. Raises
    ``ValueError`` for a bad ``spread`` or ``x``, or when no run is left to draw.
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")
    get_x_axis(x)
    runs, adversarial = natural_runs(df[(df["dataset"] == dataset) & (df["model"] == model)])
    runs, rotated = _unrotated(_select(runs, dataset, model, regimes, momenta))
    if runs.empty:
        raise ValueError(f"no runs for dataset={dataset!r}, model={model!r} with the given "
                         f"filters (regimes={regimes}, momenta={momenta})")
    runs = with_x(runs, x)
    without_x = int(runs["x"].isna().sum())
    runs = runs[runs["x"].notna()]
    if runs.empty:
        raise NoNoiseScale(f"no run of {dataset}/{model} has a noise scale lr / (B (1 - m)): "
                         "lr is missing or momentum is 1 (use x='batch_size')")
    runs = with_panel_columns(runs)
    panels = panels_for(runs) if panels is None else list(panels)
    summary = with_x(summarize(runs, [p.metric for p in panels]), x)
    panels = [p for p in panels if runs.loc[runs["status"] == "ok", p.metric].notna().any()] \
        or panels[:1]
    lines = sorted({(r, float(m)) for r, m in zip(runs["regime"], runs["momentum"], strict=True)})
    styles = line_styles(lines, show_regime=len({r for r, _ in lines}) > 1)
    batch_sizes = sorted(int(b) for b in runs["batch_size"].dropna().unique())
    diverged = runs[runs["status"] == "diverged"]
    note = figure_note(runs, styles, batch_sizes, without_x=without_x)
    if rotated:
        note = "\n".join(filter(None, [f"{rotated} run{'s' if rotated != 1 else ''} trained with "
                                        "rotations left out (the invariance figures)", note]))
    if adversarial:
        note = "\n".join(filter(None, [f"{adversarial} adversarially trained "
                                        f"run{'s' if adversarial != 1 else ''} left out (the "
                                        "adversarial-training figures)", note]))

    fig, axes = figure_grid(len(panels), note)
    hollow = 0
    for ax, panel in zip(axes, panels, strict=True):
        for style in styles:
            _plot_line(ax, summary, style, panel.metric, spread)
        hollow += mark_left_out(ax, runs, styles, panel.metric)
        mark_diverged(ax, diverged, styles)
        decorate_x(ax, x, batch_sizes, runs["x"].to_numpy(dtype=float))
        _decorate(ax, panel, runs, has_diverged=not diverged.empty)
    fig.suptitle(title or _title(dataset, model, summary, x), fontsize=12)
    _legend(fig, styles, spread, has_diverged=not diverged.empty, has_hollow=hollow > 0)
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


def _unrotated(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs of the least training rotation (``rotation``, Θ_train; 0 for the paper) and
    how many others were left out: a line per (regime, momentum) must not mix Θ_train."""
    if "rotation" not in runs.columns or runs["rotation"].nunique() <= 1:
        return runs, 0
    keep = runs["rotation"] == runs["rotation"].min()
    return runs[keep], int((~keep).sum())


def natural_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs of one (dataset, model) the paper figures draw and how many were left out:
    when they mix ``adv_train`` values (natural and adversarial training), only the natural
    ones (``"none"``; missing counts as none); a line must not mix them."""
    if "adv_train" not in runs.columns:
        return runs, 0
    adv = runs["adv_train"].astype(object).where(runs["adv_train"].notna(), "none")
    if adv.nunique() <= 1:
        return runs, 0
    keep = adv == "none"
    return runs[keep], int((~keep).sum())


def _title(dataset: str, model: str, summary: pd.DataFrame, x: str) -> str:
    n_ok = summary.loc[summary["n"] > 0, "n"]
    seeds = "" if n_ok.empty else \
        f"n = {_range_text(n_ok)} seed{'s' if n_ok.max() > 1 else ''} per point"
    against = "batch size" if x == "batch_size" else "SGD noise scale"
    return (f"{cell_title(dataset, model)}: accuracy and curvature vs {against}"
            + (f"  ({seeds})" if seeds else ""))


def _plot_line(ax, summary: pd.DataFrame, style: LineStyle, metric: str, spread: str) -> None:
    rows = style.rows(summary)
    x = rows["x"].astype(float).to_numpy()
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


def _decorate(ax, panel: Panel, runs: pd.DataFrame, has_diverged: bool) -> None:
    ax.set_title(panel.title, fontsize=10)
    values = runs.loc[runs["status"] == "ok", panel.metric].dropna()
    ylabel = panel.ylabel
    if panel.metric.startswith("hessian_top_eig") and not values.empty and values.min() > 0 \
            and values.max() / values.min() > 30:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    if is_accuracy(panel.metric):  # do not blow differences of a few test points up
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


def _legend(fig: Figure, styles: Sequence[LineStyle], spread: str, has_diverged: bool,
            has_hollow: bool) -> None:
    handles: list[Any] = [Line2D([], [], color=s.colour, marker=s.marker, linestyle=s.linestyle,
                                 label=s.label) for s in styles]
    band = "min-max over seeds" if spread == "minmax" else "mean +- 1 std over seeds"
    handles.append(Patch(facecolor="0.6", alpha=0.35, label=f"band: {band}"))
    if has_diverged:
        handles.append(Line2D([], [], color="0.2", marker="x", linestyle="none",
                              markeredgewidth=2, label="diverged (x at panel bottom)"))
    if has_hollow:
        handles.append(Line2D([], [], color="0.2", marker="o", markerfacecolor="none",
                              linestyle="none", label="hollow: left out of lines (see note)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8,
               title="line: mean over ok seeds", title_fontsize=8, frameon=False)


def _range_text(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
