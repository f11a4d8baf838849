"""The sweep report: every ``results.json`` under some sweep dirs -> one table, a summary, figures.

Reads results only; never trains, and imports neither torch nor Lightning (fast to start)::

    python -m robusthp.report SWEEP_DIR [SWEEP_DIR ...] [--out OUT_DIR] [--momentum 0 ...]

writes ``OUT_DIR/results.csv`` (one row per run, :data:`COLUMNS`), ``OUT_DIR/summary.csv``
(mean / std / min / max and n over seeds per cell, see :func:`summarize`) and the paper's
figures as PNGs:

- ``<dataset>_<model>.png``: test, FGSM and PGD accuracy and the top Hessian eigenvalue vs
  batch size, one line per (regime, momentum) (Figs. 1-6 and 15-22 of the paper);
- ``<dataset>_<model>_<regime>_momentum.png`` for ``lr`` and ``lr_bs``: one line per
  momentum (Section 4, Figs. 7-14).

Colours follow the paper: fixed LR light blue, LR/BS purple, Benchmark red; within a regime,
momentum is shown by shade (darker = more momentum), marker and line style. Lines are means
over the seeds that finished ``ok``; the band is their min-max (or +-1 std). Diverged runs
are drawn as an ``x`` at the bottom of every panel at their batch size; failed, unreadable
and missing runs are listed in a note under the figure. Nothing is dropped silently.

Python API: :func:`collect`, :func:`read_table`, :func:`summarize`, :func:`trend_table`,
:func:`plot_batch_size_figure`, :func:`plot_momentum_figure`, :func:`write_report`.
Figures are plain :class:`matplotlib.figure.Figure` objects on an Agg canvas (no pyplot, no
global backend switch), so they save headless and also display in a notebook.
"""

from __future__ import annotations

import argparse
import colorsys
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from robusthp.results import CELL_KEYS, find_results, read_results

log = logging.getLogger(__name__)

METRICS = ("test_acc", "clean_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")
COLUMNS = (*CELL_KEYS, *METRICS, "status", "wall_time_s", "run_dir")
"""Columns of ``results.csv``, in order. Missing metrics are empty cells."""

UNREADABLE = "unreadable"  # status given to a results.json that cannot be parsed
GROUP_KEYS = ("dataset", "model", "regime", "momentum", "batch_size", "lr", "epochs")
"""A cell of the sweep: every setting except the seed."""
_INT_COLUMNS = ("batch_size", "seed", "epochs")
_FLOAT_COLUMNS = ("momentum", "lr", *METRICS, "wall_time_s")

# ---------------------------------------------------------------------------- styling
REGIME_COLOURS = {"lr": "#5fb0e0", "lr_bs": "#7b3fa8", "benchmark": "#d62728"}
"""The paper's colours: fixed LR light blue, LR/BS purple, Benchmark red."""
REGIME_LABELS = {"lr": "fixed LR", "lr_bs": "fixed LR/BS", "benchmark": "Benchmark"}
REGIME_ORDER = ("lr", "lr_bs", "benchmark")
_OTHER_COLOURS = ("#2ca02c", "#ff7f0e", "#8c564b", "#7f7f7f")
_MOMENTUM_STYLES = {0.0: ("o", "-"), 0.2: ("s", "--"), 0.5: ("^", "-."), 0.9: ("D", ":")}
_OTHER_STYLES = (("v", (0, (3, 1, 1, 1))), ("P", (0, (5, 1))), ("X", (0, (1, 1))))
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "fmnist": "Fashion-MNIST",
                  "cifar10": "CIFAR-10"}
MODEL_LABELS = {"stdcnn": "StdCNN", "m1": "M1", "c1": "C1", "resnet18": "ResNet18"}


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


# ---------------------------------------------------------------------------- reading
def collect(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per ``results.json`` found under ``dirs`` (columns :data:`COLUMNS`, plus ``error``).

    Raises ``FileNotFoundError`` naming the first dir that does not exist. A file that cannot
    be parsed becomes a row with status ``"unreadable"`` and its ``run_dir``; it is never
    skipped. Rows are sorted by cell, then seed.
    """
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.exists():
            raise FileNotFoundError(f"sweep dir not found: {d}")
    rows = [_row(path) for path in find_results(*dirs)]
    return _typed(pd.DataFrame(rows, columns=[*COLUMNS, "error"]))


def _row(path: Path) -> dict[str, Any]:
    data = read_results(path)
    row: dict[str, Any] = {"run_dir": str(path.parent)}
    if data is None:
        return row | {"status": UNREADABLE, "error": f"cannot parse {path}"}
    cell, metrics = data.get("cell") or {}, data.get("metrics") or {}
    row |= {k: cell.get(k) for k in CELL_KEYS}
    row |= {m: metrics.get(m) for m in METRICS}
    row |= {"status": data.get("status"), "wall_time_s": data.get("wall_time_s"),
            "error": data.get("error")}
    return row


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in _INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["status"] = df["status"].fillna(UNREADABLE)
    keys = ["dataset", "model", "regime", "momentum", "batch_size", "seed", "run_dir"]
    return df.sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``results.csv`` written by :func:`write_report` back, with the same dtypes."""
    df = pd.read_csv(path, dtype={"dataset": str, "model": str, "regime": str, "status": str,
                                  "run_dir": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a robusthp results table: missing columns {missing}")
    if "error" not in df.columns:
        df["error"] = None
    return _typed(df)


# ---------------------------------------------------------------------------- summarizing
def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1), min and max of each metric over the seeds of each cell.

    Cells are :data:`GROUP_KEYS` (everything but the seed). Statistics use the runs with
    status ``ok`` only; ``n`` counts them, ``n_diverged`` and ``n_failed`` count the others
    (``n_failed`` includes unreadable runs with a known cell). Columns: the keys, ``n``,
    ``n_diverged``, ``n_failed``, then ``<metric>_mean``, ``_std``, ``_min``, ``_max``.
    """
    keys = list(GROUP_KEYS)
    placed = df.dropna(subset=["dataset", "model", "regime", "batch_size"])
    if placed.empty:
        stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")]
        return pd.DataFrame(columns=[*keys, "n", "n_diverged", "n_failed", *stats])
    status = placed["status"]
    counts = placed.assign(
        n=(status == "ok").astype(int),
        n_diverged=(status == "diverged").astype(int),
        n_failed=(~status.isin(["ok", "diverged"])).astype(int),
    ).groupby(keys, dropna=False)[["n", "n_diverged", "n_failed"]].sum()
    ok = placed[status == "ok"]
    stats = ok.groupby(keys, dropna=False)[list(METRICS)].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    out = counts.join(stats, how="left").reset_index()
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def trend_table(df: pd.DataFrame, metrics: Sequence[str] = ("test_acc", "fgsm_acc", "pgd_acc",
                                                              "hessian_top_eig")) -> pd.DataFrame:
    """Least-squares slope of each mean metric per doubling of batch size, per line.

    One row per (dataset, model, regime, momentum); columns ``<metric>_per_doubling`` (NaN
    with fewer than two batch sizes) and ``batch_sizes`` (how many points the slope uses).
    A flat curve (the paper's LR/BS finding) has slopes near 0.
    """
    summary = summarize(df)
    rows = []
    for key, line in summary.groupby(["dataset", "model", "regime", "momentum"], dropna=False):
        row = dict(zip(("dataset", "model", "regime", "momentum"), key, strict=True))
        x = line["batch_size"].astype(float).map(math.log2)
        for m in metrics:
            row[f"{m}_per_doubling"] = _slope(x, line[f"{m}_mean"])
        row["batch_sizes"] = int(line["n"].gt(0).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _slope(x: pd.Series, y: pd.Series) -> float:
    ok = y.notna() & x.notna()
    x, y = x[ok], y[ok]
    if x.nunique() < 2:
        return math.nan
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


# ---------------------------------------------------------------------------- styling helpers
def regime_label(regime: str) -> str:
    return REGIME_LABELS.get(regime, regime)


def cell_title(dataset: str, model: str) -> str:
    return f"{DATASET_LABELS.get(dataset, dataset)} / {MODEL_LABELS.get(model, model)}"


def _regime_order(regimes: Iterable[str]) -> list[str]:
    rank = {r: i for i, r in enumerate(REGIME_ORDER)}
    return sorted(set(regimes), key=lambda r: (rank.get(r, len(rank)), r))


def _base_colour(regime: str, regimes: Sequence[str]) -> str:
    if regime in REGIME_COLOURS:
        return REGIME_COLOURS[regime]
    others = [r for r in regimes if r not in REGIME_COLOURS]
    return _OTHER_COLOURS[others.index(regime) % len(_OTHER_COLOURS)]


def _shade(colour: str, momentum: float, momenta: Sequence[float]) -> tuple[float, ...]:
    """The regime's colour, lighter for the smallest momentum, darker for the largest."""
    if len(momenta) < 2:
        return mcolors.to_rgb(colour)
    t = sorted(momenta).index(momentum) / (len(momenta) - 1)  # 0 .. 1
    h, lum, s = colorsys.rgb_to_hls(*mcolors.to_rgb(colour))
    target = lum + 0.15 - 0.35 * t  # lightness from +0.15 to -0.20 around the base colour
    return colorsys.hls_to_rgb(h, min(0.82, max(0.25, target)), s)


def _momentum_style(momentum: float, momenta: Sequence[float]) -> tuple[str, Any]:
    for m, style in _MOMENTUM_STYLES.items():
        if math.isclose(momentum, m, abs_tol=1e-9):
            return style
    others = [m for m in momenta if not any(math.isclose(m, k) for k in _MOMENTUM_STYLES)]
    return _OTHER_STYLES[others.index(momentum) % len(_OTHER_STYLES)]


@dataclass(frozen=True)
class LineStyle:
    regime: str
    momentum: float
    label: str
    colour: tuple[float, ...]
    marker: str
    linestyle: Any


def _line_styles(lines: Sequence[tuple[str, float]], show_regime: bool) -> list[LineStyle]:
    regimes = _regime_order(r for r, _ in lines)
    all_momenta = sorted({m for _, m in lines})
    out = []
    for regime, momentum in sorted(lines, key=lambda rm: (regimes.index(rm[0]), rm[1])):
        momenta = sorted({m for r, m in lines if r == regime})
        colour = _shade(_base_colour(regime, regimes), momentum, momenta)
        marker, ls = _momentum_style(momentum, all_momenta)
        if len(momenta) == 1:  # one line in this regime: colour and marker suffice
            ls = "-"
        label = f"m = {momentum:g}"
        if show_regime:
            label = f"{regime_label(regime)}, {label}"
        out.append(LineStyle(regime, momentum, label, colour, marker, ls))
    return out


# ---------------------------------------------------------------------------- plotting
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

    ``df`` is the per-run table of :func:`collect` (not the summary: statuses are needed).
    One line per (regime, momentum): the mean over ``ok`` seeds with a band (``spread`` =
    ``"minmax"`` or ``"std"``: +-1 std). ``regimes`` / ``momenta`` restrict the lines;
    the momentum filter leaves ``benchmark`` alone (its momentum is fixed at 0.9). Panels
    with no data at all are left out. Diverged runs are ``x`` markers at the bottom of each
    panel (artists with gid ``"diverged"``); failed / unreadable / missing runs are listed
    in a note (a text artist with gid ``"note"``). Returns a Figure on an Agg canvas.
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
    styles = _line_styles(lines, show_regime=len({r for r, _ in lines}) > 1)
    batch_sizes = sorted(int(b) for b in runs["batch_size"].dropna().unique())
    diverged = runs[runs["status"] == "diverged"]
    note = _note(runs, styles, batch_sizes)

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
        runs = runs[keep | (runs["regime"] == "benchmark")]
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


def _line_rows(summary: pd.DataFrame, style: LineStyle) -> pd.DataFrame:
    rows = summary[(summary["regime"] == style.regime)
                   & summary["momentum"].map(lambda m: math.isclose(m, style.momentum))]
    return rows.sort_values("batch_size")


def _plot_line(ax, summary: pd.DataFrame, style: LineStyle, metric: str, spread: str) -> None:
    rows = _line_rows(summary, style)
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
        rows = _line_rows(diverged, style)
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


def _note(runs: pd.DataFrame, styles: Sequence[LineStyle], batch_sizes: list[int],
          max_items: int = 6) -> str:
    """Lines naming diverged, failed and unreadable runs and (line, batch size) with no run."""
    items = []
    for style in styles:
        line = _line_rows(runs, style)
        name = style.label.replace("m = ", "m=")
        diverged = line[line["status"] == "diverged"]
        if not diverged.empty:
            where = ", ".join(
                f"bs {int(b)} ({(diverged['batch_size'] == b).sum()} of "
                f"{(line['batch_size'] == b).sum()} runs)"
                for b in sorted(diverged["batch_size"].unique()))
            items.append(f"diverged: {name}: {where}")
        bad = line[~line["status"].isin(["ok", "diverged"])]
        for status, group in bad.groupby("status"):
            where = ", ".join(f"bs {int(b)} (seed {_seed(s)})"
                              for b, s in zip(group["batch_size"], group["seed"], strict=True))
            items.append(f"{status} (not plotted): {name}: {where}")
        absent = [b for b in batch_sizes if b not in set(line["batch_size"].astype(int))]
        if absent:
            items.append(f"missing (no run): {name}: bs {', '.join(map(str, absent))}")
    if len(items) > max_items:
        items = items[:max_items] + [f"... and {len(items) - max_items} more (see results.csv)"]
    return "\n".join(items)


def _seed(seed: Any) -> str:
    return "?" if pd.isna(seed) else str(int(seed))


# ---------------------------------------------------------------------------- writing
def figure_names(df: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    """(dataset, model, regime or None) of every figure :func:`write_report` draws."""
    out = []
    placed = df.dropna(subset=["dataset", "model", "regime", "momentum", "batch_size"])
    for (dataset, model), runs in placed.groupby(["dataset", "model"], sort=True):
        out.append((dataset, model, None))
        out += [(dataset, model, r) for r in ("lr", "lr_bs") if (runs["regime"] == r).any()]
    return out


def write_report(dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                 momenta: Sequence[float] | None = None, spread: str = "minmax",
                 df: pd.DataFrame | None = None) -> dict[str, Path]:
    """Collect ``dirs`` and write ``results.csv``, ``summary.csv`` and the figures to ``out_dir``.

    ``momenta`` filters the lines of the per-(dataset, model) figures (not the Section 4
    momentum figures). Returns ``{file name: path}`` of everything written. Raises
    ``FileNotFoundError`` for a missing dir and ``ValueError`` when no results are found.
    """
    dirs = list(dirs)
    df = collect(dirs) if df is None else df
    if df.empty:
        raise ValueError(f"no results.json found under {', '.join(map(str, dirs))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"results.csv": out_dir / "results.csv", "summary.csv": out_dir / "summary.csv"}
    df.to_csv(written["results.csv"], columns=list(COLUMNS), index=False)
    summarize(df).to_csv(written["summary.csv"], index=False)
    for dataset, model, regime in figure_names(df):
        if regime is None:
            fig = plot_batch_size_figure(df, dataset, model, momenta=momenta, spread=spread)
            name = f"{dataset}_{model}.png"
        else:
            fig = plot_momentum_figure(df, dataset, model, regime, spread=spread)
            name = f"{dataset}_{model}_{regime}_momentum.png"
        fig.savefig(out_dir / name)
        written[name] = out_dir / name
        log.info("wrote %s", out_dir / name)
    return written


# ---------------------------------------------------------------------------- printing
def _fmt(mean: float, std: float, metric: str) -> str:
    if pd.isna(mean):
        return "-"
    spec = ".3g" if metric == "hessian_top_eig" or abs(mean) > 1.5 else ".3f"
    return f"{mean:{spec}}" + ("" if pd.isna(std) else f" ± {std:{spec}}")


def print_summary(df: pd.DataFrame, file: Any = None) -> None:
    """A compact table (mean ± std and n over seeds per cell) and the runs that went wrong."""
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((160, 24)).columns
    console = Console(file=file, width=max(width, 120))
    table = Table(title="robusthp sweep: mean ± std over ok seeds", show_edge=False,
                  pad_edge=False, header_style="bold")
    for col in ("dataset", "model", "regime", "m", "bs", "lr", "n", "test acc", "FGSM acc",
                "PGD acc", "top eig", "div/fail"):
        table.add_column(col, justify="left" if col in ("dataset", "model", "regime") else "right")
    for _, r in summarize(df).iterrows():
        table.add_row(
            str(r["dataset"]), str(r["model"]), str(r["regime"]), f"{r['momentum']:g}",
            str(r["batch_size"]), f"{r['lr']:.3g}", str(r["n"]),
            *(_fmt(r[f"{m}_mean"], r[f"{m}_std"], m)
              for m in ("test_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")),
            f"{r['n_diverged']}/{r['n_failed']}",
        )
    console.print(table)
    counts = df["status"].value_counts()
    console.print(f"{len(df)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for _, r in df[~df["status"].isin(["ok", "diverged"])].iterrows():
        error = "no error recorded" if pd.isna(r["error"]) else r["error"]
        console.print(f"  {r['status']}: {r['run_dir']}: {error}",
                      markup=False, highlight=False)


# ---------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robusthp.report",
        description="Collect results.json files of robusthp sweeps into a table and figures.")
    p.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="dirs searched recursively")
    p.add_argument("--out", metavar="OUT_DIR", help="output dir (default: FIRST_SWEEP_DIR/report)")
    p.add_argument("--momentum", type=float, nargs="+", metavar="M",
                   help="only these momenta in the per-(dataset, model) figures (Benchmark "
                        "always kept), e.g. --momentum 0 for the paper's Section 3 figures")
    p.add_argument("--spread", choices=SPREADS, default="minmax",
                   help="band around the mean over seeds (default: minmax)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 no results, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [d for d in args.sweep_dirs if not Path(d).is_dir()]
    if missing:
        print(f"error: sweep dir not found (or not a directory): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    df = collect(args.sweep_dirs)
    if df.empty:
        print(f"error: no results.json found under {', '.join(args.sweep_dirs)}",
              file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "report"
    written = write_report(args.sweep_dirs, out_dir, momenta=args.momentum, spread=args.spread,
                           df=df)
    if not args.quiet:
        print_summary(df)
    figures = [p for name, p in written.items() if name.endswith(".png")]
    print(f"wrote {written['results.csv']}, {written['summary.csv']} and "
          f"{len(figures)} figures to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
