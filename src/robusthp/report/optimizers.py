"""The optimizer study (Ma, Pan, Farahmand 2023, arXiv 2308.06703): SGD vs Adam
vs RMSProp, one point per optimizer.

Which runs: a cell (every setting but the seed) is *in the study* when one of its ok runs
recorded a perturbation or function metric (:func:`study_columns`: ``gaussian_acc@``,
``band_acc@`` / ``band_drop@``, ``pgd_l2_acc@``, ``autoattack_*_acc@``,
``perturbation_clean_acc``, the Lipschitz bounds, input-gradient and weight norms). A
(dataset, model) is compared (:func:`optimizer_figure_names`) when its study cells cover at
least two regimes or an adaptive one (Adam, RMSProp; ``RegimeSpec.adaptive``) and one of
their runs trained. A plain paper sweep records none of these metrics: no comparison.

Per compared (dataset, model), :func:`optimizer_figures` draws

- ``<dataset>_<model>_optimizers.png``: accuracy under each perturbation (Gaussian noise per
  variance, L2 attacks, L-inf FGSM / PGD, AutoAttack) vs clean accuracy *on the same test
  points* (``perturbation_clean_acc`` for the perturbation callback's keys, ``clean_acc``
  for FGSM / PGD; ``test_acc`` where a run lacks it), a dashed y = x for no loss;
- ``<dataset>_<model>_bands.png``: accuracy change per DCT band (band acc - clean acc =
  ``-band_drop``), low to high frequency;
- ``<dataset>_<model>_function.png``: the Lipschitz bounds (log scale), the weight norm and
  the median input-gradient norm (its 95th percentile hollow);

each point (or line) the mean over the cell's ok, trained seeds with +-1 std (ddof 1), the
seeds as faint dots; a figure without data for it is not drawn. Untrained runs
(:func:`~robusthp.report.flags.untrained`) are left out and counted in the note, diverged
and failed ones too. :func:`optimizer_table` is ``optimizers.csv``: n, mean and std per cell.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robusthp.catalog import REGIMES
from robusthp.report.columns import (
    FUNCTION_METRICS,
    PERTURBATION_CLEAN,
    acc_keys,
    band_drop_keys,
    parse_acc_key,
)
from robusthp.report.flags import untrained
from robusthp.report.layout import figure_grid
from robusthp.report.names import base_colour, cell_title, regime_label, regime_order
from robusthp.report.stats import summarize
from robusthp.report.table import GROUP_KEYS

log = logging.getLogger(__name__)

CELL = ("regime", "momentum", "batch_size", "lr", "epochs")  # a point: GROUP_KEYS but the group
PERTURBATION_ATTACKS = ("gaussian", "band", "pgd_l2", "autoattack_l2", "autoattack_linf")
"""Accuracy keys of the perturbation callback (clean reference ``perturbation_clean_acc``)."""
SCATTER_ATTACKS = {  # attack -> panel title, in panel order: noise, L2, then L-inf
    "gaussian": "Gaussian noise", "pgd_l2": "PGD L2", "autoattack_l2": "AutoAttack L2",
    "fgsm": "FGSM L-inf", "pgd": "PGD L-inf", "autoattack_linf": "AutoAttack L-inf",
}
MARKERS = ("o", "s", "^", "D", "v", "P")  # a regime's cells, when it has more than one
SPREAD_TEXT = "mean +- 1 std over seeds (ddof 1); faint dots: seeds"


@dataclass(frozen=True)
class FunctionPanel:
    metric: str
    title: str
    ylabel: str
    log: bool
    whisker: str | None = None  # a second metric drawn hollow beside the first


FUNCTION_PANELS = (
    FunctionPanel("lipschitz_upper", "Lipschitz upper bound (L2, power iteration)",
                  "logits per unit L2 of [0,1] pixels", log=True),
    FunctionPanel("lipschitz_ma2023", "Lipschitz product, Ma et al.'s (reshaped kernels)",
                  "product of layer norms", log=True),
    FunctionPanel("weight_norm", "Weight norm", "L2 norm of all parameters", log=False),
    FunctionPanel("input_grad_norm_median", "Input-gradient norm ||grad_x f_y(x)||_2",
                  "median over test points (hollow: p95)", log=False,
                  whisker="input_grad_norm_p95"),
)


@dataclass(frozen=True)
class Point:
    """One point of the comparison: a cell's ok, trained runs, labelled and coloured."""

    label: str
    colour: str
    marker: str
    runs: pd.DataFrame


@dataclass(frozen=True)
class Study:
    """The study runs of one (dataset, model): every run of its study cells, and its points."""

    dataset: str
    model: str
    runs: pd.DataFrame
    points: list[Point]

    @property
    def trained(self) -> pd.DataFrame:
        return self.runs[(self.runs["status"] == "ok") & ~untrained(self.runs)]


# ---------------------------------------------------------------------------- which runs


def study_columns(columns: Sequence[str]) -> list[str]:
    """The perturbation and function metrics among ``columns`` (what puts a cell in the study)."""
    accs = [k.key for k in acc_keys(columns) if k.attack in PERTURBATION_ATTACKS]
    fixed = [c for c in (PERTURBATION_CLEAN, *FUNCTION_METRICS) if c in columns]
    return [*accs, *band_drop_keys(columns), *fixed]


def _cell_keys(runs: pd.DataFrame) -> pd.Series:
    """The cell of each run as a hashable tuple (missing values as None)."""
    values = runs[list(CELL)].astype(object).where(runs[list(CELL)].notna(), None)
    return pd.Series(list(map(tuple, values.to_numpy())), index=runs.index, dtype=object)


def _adaptive(regime: str) -> bool:
    spec = REGIMES.get(regime)
    return spec is not None and spec.adaptive


def study(df: pd.DataFrame, dataset: str, model: str) -> Study:
    """The study runs and points of (dataset, model) (see the module docstring)."""
    runs = df[(df["dataset"] == dataset) & (df["model"] == model)].dropna(subset=["regime"])
    columns = study_columns(runs.columns)
    recorded = (runs["status"] == "ok") & (runs[columns].notna().any(axis=1) if columns else False)
    keys = _cell_keys(runs)
    runs = runs[keys.map(set(keys[recorded]).__contains__).astype(bool)]
    return Study(dataset, model, runs, _points(runs))


def _points(runs: pd.DataFrame) -> list[Point]:
    keys = _cell_keys(runs)
    regimes = regime_order(runs["regime"])
    cells = sorted(set(keys), key=lambda k: (regimes.index(k[0]), *(_num(v) for v in k[1:])))
    varying = [i for i in range(1, len(CELL))
               if any(len({k[i] for k in cells if k[0] == r}) > 1 for r in regimes)]
    trained = (runs["status"] == "ok") & ~untrained(runs)
    out = []
    for cell in cells:
        label = regime_label(cell[0])
        if varying:
            label += ", " + ", ".join(f"{_SHORT[CELL[i]]} = {_text(cell[i])}" for i in varying)
        same_regime = [k for k in cells if k[0] == cell[0]]
        marker = MARKERS[same_regime.index(cell) % len(MARKERS)]
        in_cell = keys.map(lambda k, c=cell: k == c).astype(bool)
        out.append(Point(label, base_colour(cell[0], regimes), marker, runs[in_cell & trained]))
    return [p for p in out if not p.runs.empty]


_SHORT = {"momentum": "m", "batch_size": "B", "lr": "lr", "epochs": "epochs"}


def _num(value) -> float:
    return math.inf if value is None else float(value)


def _text(value) -> str:
    return "?" if value is None else f"{float(value):g}"


def optimizer_figure_names(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) of every comparison :func:`~robusthp.report.write_report` draws:
    study cells of at least two regimes, or of an adaptive one, with a trained run."""
    placed = df.dropna(subset=["dataset", "model", "regime"])
    out = []
    for dataset, model in sorted(set(zip(placed["dataset"], placed["model"], strict=True))):
        s = study(placed, dataset, model)
        regimes = set(s.runs["regime"])
        if s.points and (len(regimes) >= 2 or any(map(_adaptive, regimes))):
            out.append((dataset, model))
    return out


# ---------------------------------------------------------------------------- the table


def table_metrics(runs: pd.DataFrame) -> list[str]:
    """The metrics of ``optimizers.csv`` that ``runs`` recorded, in column order: clean,
    the scatter panels' accuracies, band accuracy and drop, the function measures."""
    out = [m for m in ("test_acc", "clean_acc", PERTURBATION_CLEAN) if m in runs.columns]
    out += [key for attack in SCATTER_ATTACKS for key in _attack_keys(runs, attack)]
    out += [k.key for k in acc_keys(runs.columns) if k.attack == "band"]
    out += [*band_drop_keys(runs.columns), *(m for m in FUNCTION_METRICS if m in runs.columns)]
    ok = runs[runs["status"] == "ok"]
    return [m for m in out if ok[m].notna().any()]


def optimizer_table(df: pd.DataFrame) -> pd.DataFrame:
    """``optimizers.csv``: one row per study cell of each compared (dataset, model).

    Columns: :data:`~robusthp.report.table.GROUP_KEYS` (one cell per regime in the study's
    sweeps, so a row per (dataset, model, regime)), ``optimizer`` (the catalog's), ``n`` (ok,
    trained seeds), ``n_untrained``, ``n_diverged``, ``n_failed``, then ``<metric>_mean`` and
    ``<metric>_std`` (ddof 1, over the ``n`` seeds) for :func:`table_metrics`. Untrained runs
    are left out of the statistics and counted. No compared group: no rows.
    """
    runs = [study(df, d, m).runs for d, m in optimizer_figure_names(df)]
    runs = pd.concat(runs) if runs else df.iloc[:0]
    metrics = table_metrics(runs) if not runs.empty else []
    summary = summarize(runs, metrics)
    summary.insert(summary.columns.get_loc("regime") + 1, "optimizer", summary["regime"].map(
        lambda r: REGIMES[r].optimizer if r in REGIMES else None))
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    order = regime_order(summary["regime"])  # the catalog's order, as in the legends
    summary = summary.sort_values(list(GROUP_KEYS), key=lambda c: c.map(order.index)
                                  if c.name == "regime" else c, kind="stable")
    return summary[[*GROUP_KEYS, "optimizer", "n", "n_untrained", "n_diverged", "n_failed",
                    *stats]].reset_index(drop=True)


def _attack_keys(runs: pd.DataFrame, attack: str) -> list[str]:
    """The accuracy keys of ``attack`` in ``runs``; the plain ``fgsm_acc`` / ``pgd_acc`` when
    no suffixed one of that attack has a value."""
    ok = runs[runs["status"] == "ok"]
    keys = [k.key for k in acc_keys(runs.columns) if k.attack == attack and ok[k.key].notna().any()]
    plain = f"{attack}_acc"
    if not keys and attack in ("fgsm", "pgd") and plain in ok.columns and ok[plain].notna().any():
        return [plain]
    return keys


# ---------------------------------------------------------------------------- figures


def optimizer_figures(df: pd.DataFrame, dataset: str, model: str) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of the three comparison figures of (dataset, model), each only
    when its runs recorded something for it."""
    s = study(df, dataset, model)
    for suffix, plot in (("optimizers", plot_perturbation_figure), ("bands", plot_band_figure),
                         ("function", plot_function_figure)):
        try:
            fig = plot(df, dataset, model, study_=s)
        except NoStudyData as error:
            log.info("%s_%s_%s.png not drawn: %s", dataset, model, suffix, error)
            continue
        yield f"{dataset}_{model}_{suffix}.png", fig


class NoStudyData(ValueError):
    """The study runs of a (dataset, model) recorded nothing a figure draws."""


def _seeds_text(s: Study) -> str:
    n = [len(p.runs) for p in s.points]
    if not n:
        return "no trained seeds"
    seeds = str(n[0]) if min(n) == max(n) else f"{min(n)}-{max(n)}"
    return f"n = {seeds} seed{'s' if max(n) > 1 else ''} per point"


def study_note(s: Study) -> str:
    """The note under a study figure: seeds per point, then what is left out and why."""
    lines = [f"{_seeds_text(s)}: {SPREAD_TEXT}"]
    if len({len(p.runs) for p in s.points}) > 1:
        lines.append("seeds: " + ", ".join(f"{p.label} {len(p.runs)}" for p in s.points))
    ok = s.runs[s.runs["status"] == "ok"]
    n = int(untrained(ok).sum())
    if n:
        below = ok.loc[untrained(ok), "untrained_threshold"].dropna().unique()
        why = f" (clean acc < {below[0]:.3g})" if len(below) == 1 else ""
        lines.append(f"{n} untrained run{'s' if n != 1 else ''}{why} left out")
    for status, count in s.runs.loc[s.runs["status"] != "ok", "status"].value_counts().items():
        lines.append(f"{count} {status} run{'s' if count != 1 else ''} not plotted")
    return "\n".join(lines)


def _legend(fig: Figure, s: Study, extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=p.colour, marker=p.marker, linestyle="none", markersize=7,
                      label=p.label) for p in s.points]
    fig.legend(handles=[*handles, *extra], loc="outside right upper", fontsize=8,
               frameon=False, title="optimizer (regime)", title_fontsize=8)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std (ddof 1; 0 for one value) of ``values``."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def _require(s: Study, what: str) -> None:
    if not s.points:
        raise NoStudyData(f"no ok, trained study run of {s.dataset}/{s.model} ({what})")


def _spread_handles(*, seeds: bool = True) -> list[Line2D]:
    out = [Line2D([], [], color="0.3", marker="o", markersize=7, linestyle="none",
                  label="mean over seeds"),
           Line2D([], [], color="0.3", marker="|", markersize=10, linestyle="none",
                  label="bar: +- 1 std (ddof 1)")]
    if seeds:
        out.append(Line2D([], [], color="0.3", marker="o", markersize=3.5, alpha=0.35,
                          linestyle="none", label="faint dot: one seed"))
    return out


# -------------------------------------------------- perturbed vs clean accuracy


@dataclass(frozen=True)
class ScatterPanel:
    """A panel of the perturbation figure: accuracy ``metric`` against ``clean``."""

    metric: str
    clean: str  # the clean accuracy on the same test points (test_acc where missing)
    title: str
    xlabel: str


def scatter_panels(runs: pd.DataFrame) -> list[ScatterPanel]:
    """One panel per perturbation accuracy ``runs`` recorded (not the bands), in
    :data:`SCATTER_ATTACKS` order, then by reading and budget."""
    out = []
    for attack, name in SCATTER_ATTACKS.items():
        clean = PERTURBATION_CLEAN if attack in PERTURBATION_ATTACKS else "clean_acc"
        same = clean in runs.columns and runs[clean].notna().any()
        xlabel = "clean accuracy, same test points" if same else "clean test accuracy"
        for key in _attack_keys(runs, attack):
            parsed = parse_acc_key(key)
            budget = parsed.eps_text if parsed is not None else "first eps in pixels"
            out.append(ScatterPanel(key, clean, f"{name}, {budget}", xlabel))
    return out


def plot_perturbation_figure(df: pd.DataFrame, dataset: str, model: str, *,
                             study_: Study | None = None) -> Figure:
    """Accuracy under each perturbation vs clean accuracy, one point per optimizer (regime
    cell), one panel per :func:`scatter_panels`; a dashed y = x (gid ``"identity"``).

    Points: mean over ok, trained seeds (gid ``"mean"``, labelled as the legend) with +-1 std
    bars on both axes; seeds as faint dots (gid ``"seeds"``). Raises :class:`NoStudyData`
    when no trained study run recorded a perturbation accuracy.
    """
    s = study(df, dataset, model) if study_ is None else study_
    _require(s, "perturbation figure")
    panels = scatter_panels(s.trained)
    if not panels:
        raise NoStudyData(f"no study run of {dataset}/{model} recorded a perturbation accuracy")
    fig, axes = figure_grid(len(panels), study_note(s), max_cols=3, panel_size=(3.6, 3.3),
                            legend_width=2.4)
    for ax, panel in zip(axes, panels, strict=True):
        _scatter(ax, s.points, panel)
    fig.suptitle(f"{cell_title(dataset, model)}: accuracy under perturbation vs clean accuracy, "
                 f"per optimizer\n({_seeds_text(s)}; budgets in [0,1] pixels)", fontsize=11)
    identity = Line2D([], [], color="0.5", linestyle="--", label="y = x: no accuracy lost")
    _legend(fig, s, [*_spread_handles(), identity])
    return fig


def _xy(runs: pd.DataFrame, panel: ScatterPanel) -> tuple[np.ndarray, np.ndarray]:
    x = runs[panel.clean] if panel.clean in runs.columns else runs["test_acc"]
    x = x.fillna(runs["test_acc"])
    both = x.notna() & runs[panel.metric].notna()
    return x[both].to_numpy(dtype=float), runs.loc[both, panel.metric].to_numpy(dtype=float)


def _scatter(ax, points: Sequence[Point], panel: ScatterPanel) -> None:
    xs, ys = [], []
    for p in points:
        x, y = _xy(p.runs, panel)
        if not len(x):
            continue
        ax.plot(x, y, linestyle="none", marker=p.marker, markersize=3.5, alpha=0.35,
                color=p.colour, gid="seeds")
        (mx, sx), (my, sy) = _mean_std(x), _mean_std(y)
        ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="none", ecolor=p.colour,
                    elinewidth=1.3, capsize=3)
        ax.plot([mx], [my], linestyle="none", marker=p.marker, markersize=7, color=p.colour,
                markeredgecolor="0.15", label=p.label, gid="mean")
        xs += [*x, mx - sx, mx + sx]
        ys += [*y, my - sy, my + sy]
    if xs:
        lo_x, hi_x = _padded(min(xs), max(xs))
        ax.set_xlim(lo_x, hi_x)
        ax.set_ylim(*_padded(min(ys), max(*ys, hi_x)))  # the y = x line shows at the top
    ax.plot([-1, 2], [-1, 2], linestyle="--", color="0.5", linewidth=1, zorder=0, gid="identity")
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel("accuracy under perturbation", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)


def _padded(lo: float, hi: float, min_span: float = 0.05) -> tuple[float, float]:
    """An accuracy range around [lo, hi]: at least ``min_span`` wide, 8% margins, in
    [-0.02, 1.02]."""
    mid, span = (lo + hi) / 2, max(hi - lo, min_span)
    lo, hi = mid - 0.54 * span, mid + 0.54 * span
    return max(lo, -0.02), min(hi, 1.02)


# ---------------------------------------------------------------------------- bands


def band_changes(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy change per band (columns: band index, 0 = lowest frequencies), one row per
    run: ``-band_drop@<i>``, else ``band_acc@<i> - perturbation_clean_acc``."""
    drops = {int(k.split("@")[1]): k for k in band_drop_keys(runs.columns)}
    accs = {int(k.eps): k.key for k in acc_keys(runs.columns) if k.attack == "band"}
    clean = runs[PERTURBATION_CLEAN] if PERTURBATION_CLEAN in runs.columns \
        else pd.Series(math.nan, index=runs.index)
    out = {}
    for band in sorted(set(drops) | set(accs)):
        change = -runs[drops[band]] if band in drops else pd.Series(math.nan, index=runs.index)
        if band in accs:
            change = change.fillna(runs[accs[band]] - clean)
        out[band] = change.astype(float)
    return pd.DataFrame(out, index=runs.index)


def plot_band_figure(df: pd.DataFrame, dataset: str, model: str, *,
                     study_: Study | None = None) -> Figure:
    """Accuracy change under band-limited noise vs DCT band, one line per optimizer: the mean
    over ok, trained seeds (gid ``"mean"``) with a +-1 std band (gid ``"spread"``), seeds as
    faint dots (gid ``"seeds"``). Raises :class:`NoStudyData` when no band was recorded."""
    s = study(df, dataset, model) if study_ is None else study_
    _require(s, "band figure")
    changes = band_changes(s.trained)
    if changes.empty or changes.isna().all().all():
        raise NoStudyData(f"no study run of {dataset}/{model} recorded band_drop@ / band_acc@")
    fig, (ax,) = figure_grid(1, study_note(s), max_cols=1, panel_size=(6.4, 3.8),
                             legend_width=2.4)
    bands = np.array(changes.columns, dtype=float)
    for p in s.points:
        ch = band_changes(p.runs).reindex(columns=changes.columns)
        mean, std = ch.mean().to_numpy(float), ch.std(ddof=1).fillna(0.0).to_numpy(float)
        ax.fill_between(bands, mean - std, mean + std, color=p.colour, alpha=0.18, linewidth=0,
                        gid="spread")
        ax.plot(np.tile(bands, len(ch)), ch.to_numpy(float).ravel(), linestyle="none",
                marker=p.marker, markersize=3, alpha=0.35, color=p.colour, gid="seeds")
        ax.plot(bands, mean, color=p.colour, marker=p.marker, markersize=5, linewidth=1.6,
                label=p.label, gid="mean")
    ax.axhline(0.0, color="0.5", linestyle="--", linewidth=1)
    ax.set_xticks(bands, [f"{int(b)}" for b in bands])
    ax.set_xlabel(f"DCT band (equal-count radial bands; 0 = lowest, {int(bands[-1])} = highest "
                  "frequency)", fontsize=8)
    ax.set_ylabel("accuracy change (band acc - clean acc)", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    fig.suptitle(f"{cell_title(dataset, model)}: accuracy change under Gaussian noise in one "
                 f"DCT band\nper optimizer ({_seeds_text(s)})", fontsize=10)
    band = Line2D([], [], color="0.5", linewidth=6, alpha=0.3, label="band: +- 1 std (ddof 1)")
    _legend(fig, s, [band, Line2D([], [], color="0.3", marker="o", markersize=3, alpha=0.35,
                                  linestyle="none", label="faint dot: one seed")])
    return fig


# ---------------------------------------------------------------------------- function


def plot_function_figure(df: pd.DataFrame, dataset: str, model: str, *,
                         study_: Study | None = None) -> Figure:
    """Lipschitz bounds (log scale), weight norm and median input-gradient norm (p95 hollow,
    gid ``"whisker"``) per optimizer: one panel per :data:`FUNCTION_PANELS` metric recorded;
    mean over ok, trained seeds (gid ``"mean"``) +-1 std, seeds as faint dots (gid
    ``"seeds"``). Raises :class:`NoStudyData` when no function measure was recorded."""
    s = study(df, dataset, model) if study_ is None else study_
    _require(s, "function figure")
    trained = s.trained
    panels = [p for p in FUNCTION_PANELS
              if p.metric in trained.columns and trained[p.metric].notna().any()]
    if not panels:
        raise NoStudyData(f"no study run of {dataset}/{model} recorded a function measure")
    fig, axes = figure_grid(len(panels), study_note(s), max_cols=2, panel_size=(4.0, 3.3),
                            legend_width=2.4)
    for ax, panel in zip(axes, panels, strict=True):
        _function_panel(ax, s.points, panel)
    fig.suptitle(f"{cell_title(dataset, model)}: Lipschitz bounds and norms per optimizer\n"
                 f"({_seeds_text(s)}; inputs in [0,1] pixels)", fontsize=10)
    extra = _spread_handles()
    if any(p.whisker for p in panels):
        extra.append(Line2D([], [], color="0.3", marker="^", markerfacecolor="none",
                            linestyle="none", label="hollow triangle: p95 over test points"))
    _legend(fig, s, extra)
    return fig


def _function_panel(ax, points: Sequence[Point], panel: FunctionPanel) -> None:
    shown = []
    for i, p in enumerate(points):
        for metric, at, hollow in ((panel.metric, i, False), (panel.whisker, i + 0.28, True)):
            if metric is None or metric not in p.runs.columns:
                continue
            values = p.runs[metric].dropna().to_numpy(dtype=float)
            if not len(values):
                continue
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(1)
            ax.plot(at + jitter, values, linestyle="none", marker="^" if hollow else p.marker,
                    markersize=3.5, alpha=0.35, color=p.colour, gid="seeds")
            mean, std = _mean_std(values)
            ax.errorbar([at], [mean], yerr=[std], fmt="none", ecolor=p.colour, elinewidth=1.3,
                        capsize=3)
            face = "none" if hollow else p.colour
            ax.plot([at], [mean], linestyle="none", marker="^" if hollow else p.marker,
                    markersize=7, color=p.colour, markerfacecolor=face,
                    markeredgecolor=p.colour if hollow else "0.15", label=p.label,
                    gid="whisker" if hollow else "mean")
            shown += list(values)
    ylabel = panel.ylabel
    if panel.log and shown and min(shown) > 0:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_xticks(range(len(points)), [p.label for p in points], rotation=15, fontsize=7)
    ax.set_xlim(-0.6, len(points) - 0.3)
    ax.set_title(panel.title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)
