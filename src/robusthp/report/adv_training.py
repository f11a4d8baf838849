"""The adversarial-training study: natural vs PGD / FGSM adversarial training (PGD-AT, Madry
et al. 2018), with momentum SGD or ENGM as the outer optimizer (Dabouei et al., ECCV 2022,
arXiv 2209.01199; ``regime`` ``"engm"``), against the batch size.

A *method* is (``cell.adv_train``, ``regime``, ``momentum``): ``"natural (SGD m=0.9)"``,
``"PGD-AT (SGD m=0.9)"``, ``"PGD-AT (ENGM m=0.9)"`` (:class:`Method`; the outer optimizer's
name is :data:`OUTER_NAMES`' or the catalog's regime label, else the raw regime name). A
(dataset, model) is *in the study* (:func:`adv_training_figure_names`) when its runs have at
least two methods, one of them adversarial (``adv_train != "none"``), and one of its runs
trained. The study takes every adversarial method and the natural ones with the (regime,
momentum) of an adversarial one (all natural methods when none matches), so a paper sweep
beside it does not add a line per momentum; the runs left out are counted in the note. A
line is a method; a setting of ``lr``, ``epochs`` or ``rotation`` with several values at
one batch size of a method splits it into lines (``..., lr = 0.1``).

Per (dataset, model) in the study, :func:`adv_training_figures` draws

- ``<dataset>_<model>_adv_training.png``: against the batch size (log2 axis), one line per
  method: clean accuracy, PGD accuracy at every eps and reading recorded (pixel, normalized),
  FGSM likewise, the median eps* per reading, the top Hessian eigenvalue, the gradient
  variance ``grad_var`` (log scale) and the mini-batch gradient norm ``grad_norm`` (the
  gradient-statistics callback, last measured epoch);
- ``<dataset>_<model>_adv_training_epochs.png``: per epoch, one panel per batch size, one
  line per method: robust validation accuracy (solid) with the clean validation accuracy
  (dashed) on the same panel; below, the gradient variance (log scale) and norm per epoch
  (the ENGM paper's premise: larger under adversarial training).

Each line is the mean over the cell's ok, trained seeds with the band of ``spread``
(``"minmax"`` or ``"std"``, as the paper figures); untrained runs
(:func:`~robusthp.report.flags.untrained`) are hollow markers out of the lines, diverged
runs an ``x`` at the bottom, and both are counted in the note. :func:`adv_training_table`
is ``adv_training.csv``: n, mean and std over seeds per cell.

The table of :func:`~robusthp.report.table.collect` has no column for the gradient and
robust-validation metrics (nor any list): :func:`with_file_metrics` reads them from each
run's ``results.json`` (and ``evaluations/*.json``), a column of the table winning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from robusthp.report.columns import acc_keys, is_accuracy
from robusthp.report.evaluations import merged_metrics
from robusthp.report.figures import SPREADS
from robusthp.report.flags import untrained
from robusthp.report.layout import figure_grid
from robusthp.report.marks import mark_diverged, mark_left_out
from robusthp.report.names import cell_title, regime_label, regime_order
from robusthp.report.notes import figure_note
from robusthp.report.panels import Panel, panels_for, with_panel_columns
from robusthp.report.stats import summarize
from robusthp.report.style import LineStyle
from robusthp.report.table import GROUP_KEYS
from robusthp.report.xaxis import decorate_x, with_x
from robusthp.results import RESULTS_FILE, read_results

log = logging.getLogger(__name__)

NATURAL = "none"  # cell.adv_train of natural training
ADV_NAMES = {"none": "natural", "pgd": "PGD-AT", "fgsm": "FGSM-AT"}  # in legend order
OUTER_NAMES = {"lr": "SGD"}  # the fixed-LR regime is plain momentum SGD: the ENGM baseline
METHOD_COLOURS = {  # (adv_train, regime): the same colour in every figure of every sweep
    ("none", "lr"): "#4d4d4d", ("pgd", "lr"): "#1f77b4", ("pgd", "engm"): "#d62728",
    ("fgsm", "lr"): "#2ca02c", ("fgsm", "engm"): "#ff7f0e", ("none", "engm"): "#9467bd",
}
OTHER_COLOURS = ("#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8")
ADV_MARKERS = {"none": "o", "pgd": "s", "fgsm": "^"}
OTHER_MARKERS = ("D", "v", "P", "X")
GRAD_METRICS = ("grad_norm", "grad_var", "grad_batch_var", "grad_mean_norm",
                "grad_example_norm")
"""The gradient-statistics callback's scalars (last measured epoch)."""
ROBUST_VAL_METRICS = ("robust_val_acc", "robust_val_best_acc", "robust_val_best_epoch")
"""The robust-validation callback's scalars."""
FILE_METRICS = (*GRAD_METRICS, *ROBUST_VAL_METRICS)  # scalars read from the results files
PER_EPOCH = {  # list key -> the key of its epoch indices
    "robust_val_acc_per_epoch": "robust_val_epochs",
    "val_clean_acc_per_epoch": "robust_val_epochs",
    "grad_var_per_epoch": "grad_stats_epochs",
    "grad_norm_per_epoch": "grad_stats_epochs",
}
LIST_KEYS = (*PER_EPOCH, "robust_val_epochs", "grad_stats_epochs")
VARIANT = ("lr", "epochs", "rotation")  # settings that may split a method into lines
GRAD_PANELS = (
    Panel("grad_var", "Gradient variance (last measured epoch)", "grad_var"),
    Panel("grad_norm", "Mini-batch gradient norm (last measured epoch)", "grad_norm (L2)"),
)
LOG_METRICS = ("grad_var", "grad_var_per_epoch")  # always log y (when positive)
MIN_ACC_SPAN = 0.05  # smallest y-range of an accuracy panel


# ---------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """How a run was trained: ``adv_train`` (none | pgd | fgsm), the outer optimizer
    (``regime``: ``lr`` = momentum SGD at a fixed LR, ``engm`` = ENGM) and its momentum."""

    adv_train: str
    regime: str
    momentum: float

    @property
    def label(self) -> str:
        """``"PGD-AT (ENGM m=0.9)"``."""
        return f"{adv_name(self.adv_train)} ({outer_name(self.regime)} m={self.momentum:g})"

    @property
    def colour(self) -> str:
        return method_colour(self.adv_train, self.regime)

    @property
    def marker(self) -> str:
        return ADV_MARKERS.get(self.adv_train, OTHER_MARKERS[_stable_index(self.adv_train)
                                                            % len(OTHER_MARKERS)])


def adv_name(adv_train: str) -> str:
    """``natural``, ``PGD-AT``, ``FGSM-AT``; another method as ``<NAME>-AT``."""
    return ADV_NAMES.get(adv_train, f"{str(adv_train).upper()}-AT")


def outer_name(regime: str) -> str:
    """The outer optimizer of ``regime``: ``SGD`` for fixed LR, else the catalog's label
    (``ENGM``), else the raw name."""
    return OUTER_NAMES.get(regime, regime_label(regime))


def _stable_index(name: str) -> int:
    """The same small number for a name in every process (not Python's salted ``hash``)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(str(name)))


def method_colour(adv_train: str, regime: str) -> str:
    """:data:`METHOD_COLOURS` of (adv_train, regime); another one a stable pick of
    :data:`OTHER_COLOURS`."""
    known = METHOD_COLOURS.get((adv_train, regime))
    if known is not None:
        return known
    return OTHER_COLOURS[_stable_index(f"{adv_train}/{regime}") % len(OTHER_COLOURS)]


def _adv(runs: pd.DataFrame) -> pd.Series:
    """Each run's ``adv_train`` (``"none"`` where missing: recorded before it existed)."""
    if "adv_train" not in runs.columns:
        return pd.Series(NATURAL, index=runs.index, dtype=object)
    return runs["adv_train"].astype(object).where(runs["adv_train"].notna(), NATURAL)


def run_methods(runs: pd.DataFrame) -> pd.Series:
    """The :class:`Method` of each run (runs need ``regime`` and ``momentum``)."""
    adv = _adv(runs)
    return pd.Series([Method(str(a), str(r), float(m)) for a, r, m in
                      zip(adv, runs["regime"], runs["momentum"], strict=True)],
                     index=runs.index, dtype=object)


def method_order(methods) -> list[Method]:
    """The distinct ``methods``: natural first, then PGD-AT, FGSM-AT, others by name; within
    one, regimes in the catalog's order, then momentum."""
    methods = set(methods)
    regimes = regime_order(m.regime for m in methods)
    adv = list(ADV_NAMES)
    return sorted(methods, key=lambda m: (adv.index(m.adv_train) if m.adv_train in adv
                                          else len(adv), m.adv_train,
                                          regimes.index(m.regime), m.momentum))


# ---------------------------------------------------------------------------- which runs


def _placed(df: pd.DataFrame) -> pd.DataFrame:
    return df.dropna(subset=["dataset", "model", "regime", "momentum", "batch_size"])


def _in_study(runs: pd.DataFrame) -> bool:
    """At least two methods, one adversarial, and a trained run (no file is read)."""
    if runs.empty:
        return False
    methods = set(run_methods(runs))
    trained = (runs["status"] == "ok") & ~untrained(runs)
    return (len(methods) >= 2 and any(m.adv_train != NATURAL for m in methods)
            and bool(trained.any()))


def adv_training_figure_names(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) of every (dataset, model) in the study (see the module docstring)."""
    placed = _placed(df)
    out = []
    for (dataset, model), runs in placed.groupby(["dataset", "model"], sort=True):
        if _in_study(runs):
            out.append((dataset, model))
    return out


def _study_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The adversarial runs and the natural runs with an adversarial (regime, momentum)
    (every natural run when none has one); and how many were left out."""
    methods = run_methods(runs)
    adversarial = {(m.regime, m.momentum) for m in methods if m.adv_train != NATURAL}
    natural = methods.map(lambda m: m.adv_train == NATURAL).astype(bool)
    matching = natural & methods.map(lambda m: any(
        m.regime == r and math.isclose(m.momentum, mo) for r, mo in adversarial)).astype(bool)
    keep = ~natural | (matching if matching.any() else natural)
    return runs[keep], int((~keep).sum())


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple):
        return None
    return [_number(v) for v in value]


def _file_metrics(run_dir: Any) -> dict[str, Any]:
    """The run's metrics from ``results.json`` and its evaluations ({} when unreadable)."""
    if not isinstance(run_dir, str | Path):
        return {}
    data = read_results(Path(run_dir) / RESULTS_FILE)
    if data is None:
        return {}
    return merged_metrics(run_dir, data.get("metrics") or {})[0]


def with_file_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``runs`` with the :data:`FILE_METRICS` (floats; the table's column wins
    where it has a value) and the :data:`LIST_KEYS` (lists of floats, None when not
    recorded), read from each run's ``results.json`` under ``run_dir``."""
    records = [_file_metrics(d) for d in runs["run_dir"]] if "run_dir" in runs.columns \
        else [{} for _ in range(len(runs))]
    columns: dict[str, pd.Series] = {}
    for key in FILE_METRICS:
        read = pd.Series([_number(r.get(key)) for r in records], index=runs.index, dtype=float)
        if key in runs.columns:
            read = pd.to_numeric(runs[key], errors="coerce").astype(float).fillna(read)
        columns[key] = read
    for key in LIST_KEYS:
        columns[key] = pd.Series([_numbers(r.get(key)) for r in records], index=runs.index,
                                 dtype=object)
    return runs.drop(columns=[c for c in columns if c in runs.columns]).assign(**columns)


@dataclass(frozen=True)
class MethodStyle(LineStyle):
    """A line of the study: a method (and the settings that split it) and how it looks."""

    adv_train: str = NATURAL
    variant: tuple[tuple[str, Any], ...] = ()  # (setting, value) pairs that split the method

    @property
    def method(self) -> Method:
        return Method(self.adv_train, self.regime, self.momentum)

    def rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``table`` (runs or summary) on this line, by batch size."""
        keep = (_adv(table) == self.adv_train) & (table["regime"] == self.regime) \
            & table["momentum"].map(lambda m: math.isclose(m, self.momentum)).astype(bool)
        for key, value in self.variant:
            column = table[key]
            keep &= column.isna() if value is None else (column == value)
        return table[keep].sort_values("batch_size")


@dataclass(frozen=True)
class Study:
    """The study runs of one (dataset, model) (with the file metrics, the panel columns and
    ``x`` = batch size) and their lines; ``left_out``: natural runs of other settings."""

    dataset: str
    model: str
    runs: pd.DataFrame
    lines: list[MethodStyle]
    left_out: int = 0

    @property
    def trained(self) -> pd.DataFrame:
        return self.runs[(self.runs["status"] == "ok") & ~untrained(self.runs)]

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(int(b) for b in self.runs["batch_size"].dropna().unique())


def study(df: pd.DataFrame, dataset: str, model: str) -> Study:
    """The study runs and lines of (dataset, model) (see the module docstring); no lines
    when it is not in the study."""
    runs = _placed(df[(df["dataset"] == dataset) & (df["model"] == model)])
    if not _in_study(runs):
        return Study(dataset, model, runs.iloc[:0], [])
    runs, left_out = _study_runs(runs.assign(adv_train=_adv(runs)))
    runs = with_x(with_panel_columns(with_file_metrics(runs)), "batch_size")
    return Study(dataset, model, runs, _lines(runs), left_out)


def _varying(runs: pd.DataFrame) -> list[str]:
    """The :data:`VARIANT` settings with several values at one batch size of one method."""
    keys = run_methods(runs).map(lambda m: (m.adv_train, m.regime, m.momentum))
    out = []
    for key in (k for k in VARIANT if k in runs.columns):
        values = runs[key].astype(object).where(runs[key].notna(), None)
        if values.groupby([keys, runs["batch_size"]]).nunique(dropna=False).gt(1).any():
            out.append(key)
    return out


_SHORT = {"lr": "lr", "epochs": "epochs", "rotation": "Θ_train"}


def _lines(runs: pd.DataFrame) -> list[MethodStyle]:
    methods = run_methods(runs)
    varying = _varying(runs)
    values = runs[varying].astype(object).where(runs[varying].notna(), None)
    out = []
    for method in method_order(methods):
        mine = values[methods.map(method.__eq__).astype(bool)]
        variants = sorted(set(map(tuple, mine.to_numpy())),
                          key=lambda v: tuple(math.inf if x is None else float(x) for x in v))
        for variant in variants:
            label = method.label
            if varying:
                label += ", " + ", ".join(f"{_SHORT[k]} = {'?' if v is None else f'{v:g}'}"
                                          for k, v in zip(varying, variant, strict=True))
            shade = _shade(method.colour, variants.index(variant), len(variants))
            out.append(MethodStyle(method.regime, method.momentum, label, shade, method.marker,
                                   "-", method.adv_train,
                                   tuple(zip(varying, variant, strict=True))))
    return out


def _shade(colour: str, i: int, n: int) -> Any:
    """``colour`` for one line of a method; lighter to darker for several."""
    if n < 2:
        return colour
    rgb = np.array(to_rgb(colour))
    t = i / (n - 1)  # 0 .. 1: mix with white (0.35) down to black (0.25)
    mixed = rgb + (1 - rgb) * 0.35 * (1 - t) - rgb * 0.25 * t
    return tuple(float(c) for c in np.clip(mixed, 0, 1))


# ---------------------------------------------------------------------------- the table


def _attack_keys(runs: pd.DataFrame, attack: str) -> list[str]:
    ok = runs[runs["status"] == "ok"]
    keys = [k.key for k in acc_keys(runs.columns) if k.attack == attack and ok[k.key].notna().any()]
    plain = f"{attack}_acc"
    return keys or ([plain] if plain in ok.columns and ok[plain].notna().any() else [])


def table_metrics(runs: pd.DataFrame) -> list[str]:
    """The metrics of ``adv_training.csv`` that ``runs`` recorded, in column order: clean
    accuracy, PGD and FGSM accuracy at every eps and reading, eps*, the top Hessian
    eigenvalue, the gradient statistics, the robust-validation scalars."""
    out = [m for m in ("test_acc", "clean_acc") if m in runs.columns]
    out += [*_attack_keys(runs, "pgd"), *_attack_keys(runs, "fgsm")]
    out += [m for m in ("median_min_eps", "min_eps_auc", "hessian_top_eig",
                        "hessian_top_eig@test", *FILE_METRICS) if m in runs.columns]
    ok = runs[runs["status"] == "ok"]
    return [m for m in out if ok[m].notna().any()]


def adv_training_table(df: pd.DataFrame) -> pd.DataFrame:
    """``adv_training.csv``: one row per study cell of each (dataset, model) in the study.

    Columns: ``dataset``, ``model``, ``method`` (:attr:`Method.label`), the other
    :data:`~robusthp.report.table.GROUP_KEYS`, ``n`` (ok, trained seeds), ``n_untrained``,
    ``n_diverged``, ``n_failed``, then ``<metric>_mean`` and ``<metric>_std`` (ddof 1, over
    the ``n`` seeds) for :func:`table_metrics`. Rows by dataset, model, method (legend
    order), batch size, the other settings. Untrained runs are left out of the statistics
    and counted. No (dataset, model) in the study: no rows.
    """
    runs = [study(df, d, m).runs for d, m in adv_training_figure_names(df)]
    runs = pd.concat(runs) if runs else df.iloc[:0]
    metrics = table_metrics(runs) if not runs.empty else []
    summary = summarize(runs, metrics)
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    if summary.empty:
        rest = [k for k in GROUP_KEYS if k not in ("dataset", "model")]
        return pd.DataFrame(columns=["dataset", "model", "method", *rest, "n", "n_untrained",
                                     "n_diverged", "n_failed", *stats])
    methods = run_methods(summary)
    order = method_order(methods)
    summary = summary.assign(method=methods.map(lambda m: m.label),
                             _rank=methods.map(order.index))
    keys = ["dataset", "model", "_rank", "batch_size", "lr", "epochs", "rotation"]
    summary = summary.sort_values([k for k in keys if k in summary.columns], kind="stable")
    rest = [k for k in GROUP_KEYS if k not in ("dataset", "model")]
    return summary[["dataset", "model", "method", *rest, "n", "n_untrained", "n_diverged",
                    "n_failed", *stats]].reset_index(drop=True)


# ---------------------------------------------------------------------------- figures


class NoStudyData(ValueError):
    """The study runs of a (dataset, model) recorded nothing a figure draws."""


def adv_training_figures(df: pd.DataFrame, dataset: str, model: str, *,
                         spread: str = "minmax") -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of the study's two figures of (dataset, model), each only when
    its runs recorded something for it."""
    s = study(df, dataset, model)
    for suffix, plot in (("adv_training", plot_adv_training_figure),
                         ("adv_training_epochs", plot_adv_training_epochs_figure)):
        try:
            fig = plot(df, dataset, model, spread=spread, study_=s)
        except NoStudyData as error:
            log.info("%s_%s_%s.png not drawn: %s", dataset, model, suffix, error)
            continue
        yield f"{dataset}_{model}_{suffix}.png", fig


def _require(s: Study, what: str) -> None:
    if not s.lines:
        raise NoStudyData(f"{s.dataset}/{s.model} is not in the adversarial-training study "
                          f"({what})")


def _check_spread(spread: str) -> None:
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")


def _seeds_text(s: Study) -> str:
    trained = s.trained
    if trained.empty:
        return "no trained seeds"
    n = trained.groupby(list(GROUP_KEYS), dropna=False).size()
    seeds = str(n.min()) if n.min() == n.max() else f"{n.min()}-{n.max()}"
    return f"n = {seeds} seed{'s' if n.max() > 1 else ''} per point"


def _band_text(spread: str) -> str:
    return "min-max over seeds" if spread == "minmax" else "mean +- 1 std over seeds (ddof 1)"


def study_note(s: Study, extra: Sequence[str] = ()) -> str:
    """The note under a study figure: what is left out (untrained, diverged, failed, missing
    batch sizes; natural runs of other settings) and why."""
    lines = [figure_note(s.runs, s.lines, s.batch_sizes)]
    if s.left_out:
        lines.append(f"{s.left_out} natural run{'s' if s.left_out != 1 else ''} of other "
                     "(regime, momentum) left out (the paper figures)")
    return "\n".join(filter(None, [*lines, *extra]))


def batch_size_panels(runs: pd.DataFrame) -> list[Panel]:
    """The panels of the batch-size figure ``runs`` recorded, in order: clean accuracy (test,
    else the attacks' clean points), PGD and FGSM accuracy per eps and reading, the median
    eps* per reading, the top Hessian eigenvalue, the gradient variance and norm."""
    base = panels_for(runs)
    clean = [p for p in base if p.metric == "test_acc"]
    if "clean_acc" in runs.columns:
        clean.append(Panel("clean_acc", "Clean accuracy (attacked test points)", "accuracy"))
    out = clean
    out += [p for p in base if p.metric.startswith("pgd_acc")]
    out += [p for p in base if p.metric.startswith("fgsm_acc")]
    out += [p for p in base if p.metric.startswith("median_min_eps")]
    out += [p for p in base if p.metric.startswith("hessian_top_eig")]
    out += [p for p in GRAD_PANELS if p.metric in runs.columns]
    ok = runs[(runs["status"] == "ok") & ~untrained(runs)]
    shown = [p for p in out if p.metric in ok.columns and ok[p.metric].notna().any()]
    if any(p.metric == "test_acc" for p in shown):  # one clean panel
        shown = [p for p in shown if p.metric != "clean_acc"]
    return shown


def plot_adv_training_figure(df: pd.DataFrame, dataset: str, model: str, *,
                             spread: str = "minmax", study_: Study | None = None) -> Figure:
    """The study's metrics vs batch size (log2 axis), one panel per :func:`batch_size_panels`,
    one line per method (gid ``"mean"``, labelled :attr:`Method.label`) with a band (gid
    ``"spread"``: min-max, or +-1 std with ``spread="std"``). Untrained runs are hollow
    markers (gid ``"untrained"``), diverged ones ``x`` at the bottom (gid ``"diverged"``);
    the note (gid ``"note"``) counts them. Raises :class:`NoStudyData` when (dataset, model)
    is not in the study or recorded none of these metrics."""
    _check_spread(spread)
    s = study(df, dataset, model) if study_ is None else study_
    _require(s, "batch-size figure")
    panels = batch_size_panels(s.runs)
    if not panels:
        raise NoStudyData(f"no trained study run of {dataset}/{model} recorded a metric")
    summary = with_x(summarize(s.runs, [p.metric for p in panels]), "batch_size")
    diverged = s.runs[s.runs["status"] == "diverged"]
    fig, axes = figure_grid(len(panels), study_note(s), max_cols=3, panel_size=(3.9, 3.0))
    hollow = 0
    for ax, panel in zip(axes, panels, strict=True):
        for line in s.lines:
            _draw_line(ax, summary, line, panel.metric, spread)
        hollow += mark_left_out(ax, s.runs, s.lines, panel.metric)
        mark_diverged(ax, diverged, s.lines)
        decorate_x(ax, "batch_size", s.batch_sizes, s.runs["x"].to_numpy(dtype=float))
        _decorate(ax, panel.title, panel.ylabel, panel.metric, s.runs[panel.metric],
                  has_diverged=not diverged.empty)
    fig.suptitle(f"{cell_title(dataset, model)}: natural vs adversarial training vs batch "
                 f"size\n({_seeds_text(s)})", fontsize=11)
    extra = [Patch(facecolor="0.6", alpha=0.35, label=f"band: {_band_text(spread)}")]
    if not diverged.empty:
        extra.append(Line2D([], [], color="0.2", marker="x", linestyle="none",
                            markeredgewidth=2, label="diverged (x at panel bottom)"))
    if hollow:
        extra.append(Line2D([], [], color="0.2", marker="o", markerfacecolor="none",
                            linestyle="none", label="hollow: untrained, out of lines"))
    _legend(fig, s, extra)
    return fig


def _draw_line(ax, summary: pd.DataFrame, line: MethodStyle, metric: str, spread: str) -> None:
    rows = line.rows(summary)
    rows = rows[rows[f"{metric}_mean"].notna()]
    if rows.empty:
        return
    x = rows["x"].to_numpy(dtype=float)
    mean = rows[f"{metric}_mean"].to_numpy(dtype=float)
    if spread == "minmax":
        lo, hi = rows[f"{metric}_min"].to_numpy(float), rows[f"{metric}_max"].to_numpy(float)
    else:
        std = rows[f"{metric}_std"].fillna(0.0).to_numpy(float)
        lo, hi = mean - std, mean + std
    ax.fill_between(x, lo, hi, color=line.colour, alpha=0.15, linewidth=0, gid="spread")
    ax.plot(x, mean, color=line.colour, marker=line.marker, linestyle=line.linestyle,
            markersize=5, linewidth=1.6, label=line.label, gid="mean")


def _decorate(ax, title: str, ylabel: str, metric: str, values: pd.Series, *,
              has_diverged: bool = False) -> None:
    ax.set_title(title, fontsize=9)
    values = pd.to_numeric(values, errors="coerce").dropna()
    positive = not values.empty and values.min() > 0
    if positive and (metric in LOG_METRICS or (metric.startswith("hessian_top_eig")
                                                and values.max() / values.min() > 30)):
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel, fontsize=8)
    if is_accuracy(metric) or metric.endswith("acc_per_epoch"):
        lo, hi = ax.get_ylim()
        if hi - lo < MIN_ACC_SPAN:
            lo = max(min(lo, 1 - MIN_ACC_SPAN), -0.005)
            ax.set_ylim(lo, lo + MIN_ACC_SPAN)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(which="both", labelsize=7)
    if has_diverged:  # room under the data for the diverged markers
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(lo / (hi / lo) ** 0.25, hi)
        else:
            ax.set_ylim(lo - 0.25 * (hi - lo), hi)


def _legend(fig: Figure, s: Study, extra: Sequence[Any]) -> None:
    handles = [Line2D([], [], color=line.colour, marker=line.marker, linestyle=line.linestyle,
                      label=line.label) for line in s.lines]
    fig.legend(handles=[*handles, *extra], loc="outside right upper", fontsize=8,
               frameon=False, title="method (line: mean over ok seeds)", title_fontsize=8)


# -------------------------------------------------- per epoch


def epoch_values(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per (run, epoch) of the list ``key``: columns ``run``, ``epoch`` (from the
    list's epoch key, :data:`PER_EPOCH`; 0, 1, ... when it is missing or of another length)
    and ``value``. Runs without the list add no row."""
    if key not in runs.columns:
        return pd.DataFrame(columns=["run", "epoch", "value"])
    epoch_key = PER_EPOCH.get(key)
    rows = []
    for index, values in runs[key].items():
        if not isinstance(values, list) or not values:
            continue
        epochs = runs.at[index, epoch_key] if epoch_key in runs.columns else None
        if not isinstance(epochs, list) or len(epochs) != len(values) \
                or any(math.isnan(e) for e in epochs):
            epochs = list(range(len(values)))
        rows += [(index, float(e), v) for e, v in zip(epochs, values, strict=True)
                 if not math.isnan(v)]
    return pd.DataFrame(rows, columns=["run", "epoch", "value"])


def epoch_curve(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per epoch of the list ``key`` over ``runs``: ``mean``, ``std`` (ddof 1), ``min``,
    ``max`` and ``n`` (index: epoch, ascending)."""
    values = epoch_values(runs, key)
    if values.empty:
        return pd.DataFrame(columns=["mean", "std", "min", "max", "n"])
    grouped = values.groupby("epoch")["value"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1),
                         "min": grouped.min(), "max": grouped.max(), "n": grouped.size()})


@dataclass(frozen=True)
class EpochRow:
    """A row of the epoch figure: ``key`` solid (and ``dashed`` on the same panels)."""

    key: str
    title: str
    ylabel: str
    dashed: str | None = None


EPOCH_ROWS = (
    EpochRow("robust_val_acc_per_epoch", "robust val accuracy",
             "accuracy (solid: robust, dashed: clean)", dashed="val_clean_acc_per_epoch"),
    EpochRow("grad_var_per_epoch", "gradient variance", "grad_var"),
    EpochRow("grad_norm_per_epoch", "mini-batch gradient norm", "grad_norm (L2)"),
)


def _recorded(runs: pd.DataFrame, key: str | None) -> bool:
    return key is not None and key in runs.columns and \
        runs[key].map(lambda v: isinstance(v, list) and len(v) > 0).any()


def plot_adv_training_epochs_figure(df: pd.DataFrame, dataset: str, model: str, *,
                                    spread: str = "minmax",
                                    study_: Study | None = None) -> Figure:
    """Per epoch, one panel per (row, batch size), one line per method: the robust validation
    accuracy (gid ``"mean"``, solid) with the clean validation accuracy dashed (gid
    ``"clean"``), then the gradient variance (log scale) and norm per epoch; each the mean
    over ok, trained seeds with a band (gid ``"spread"``). Untrained runs' values are hollow
    markers (gid ``"untrained"``). A row only when recorded. Raises :class:`NoStudyData`
    when no trained study run recorded a per-epoch list."""
    _check_spread(spread)
    s = study(df, dataset, model) if study_ is None else study_
    _require(s, "epoch figure")
    trained = s.trained
    rows = [r for r in EPOCH_ROWS if _recorded(trained, r.key) or _recorded(trained, r.dashed)]
    if not rows:
        raise NoStudyData(f"no trained study run of {dataset}/{model} recorded a per-epoch list")
    keys = [k for r in rows for k in (r.key, r.dashed) if k is not None]
    batch_sizes = [b for b in s.batch_sizes
                   if any(_recorded(s.runs[s.runs["batch_size"] == b], k) for k in keys)]
    n = len(batch_sizes)
    fig, axes = figure_grid(n * len(rows), study_note(s), max_cols=n, panel_size=(3.6, 2.9))
    ok = s.runs[s.runs["status"] == "ok"]
    for r, row in enumerate(rows):
        for ax, batch_size in zip(axes[r * n:(r + 1) * n], batch_sizes, strict=True):
            at = ok[ok["batch_size"] == batch_size]
            for line in s.lines:
                mine = line.rows(at)
                good = mine[~untrained(mine)]
                _draw_epochs(ax, good, row.key, line, spread, gid="mean")
                if row.dashed is not None:
                    _draw_epochs(ax, good, row.dashed, line, spread, gid="clean",
                                 linestyle="--", band=False)
                _mark_untrained(ax, mine[untrained(mine)], [row.key, row.dashed], line)
            values = pd.Series([v for k in (row.key, row.dashed) if k is not None
                                for v in epoch_values(at, k)["value"]], dtype=float)
            _decorate(ax, f"B = {batch_size}: {row.title}", row.ylabel, row.key, values)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{cell_title(dataset, model)}: per epoch, natural vs adversarial "
                 f"training\n({_seeds_text(s)})", fontsize=11)
    extra = [Patch(facecolor="0.6", alpha=0.35, label=f"band: {_band_text(spread)}")]
    if any(r.dashed for r in rows):
        extra += [Line2D([], [], color="0.3", linestyle="-", label="solid: robust val acc"),
                  Line2D([], [], color="0.3", linestyle="--", label="dashed: clean val acc")]
    if untrained(ok).any():
        extra.append(Line2D([], [], color="0.2", marker="o", markerfacecolor="none",
                            linestyle="none", label="hollow: untrained, out of lines"))
    _legend(fig, s, extra)
    return fig


def _draw_epochs(ax, runs: pd.DataFrame, key: str | None, line: MethodStyle, spread: str, *,
                 gid: str, linestyle: str = "-", band: bool = True) -> None:
    if key is None:
        return
    curve = epoch_curve(runs, key)
    if curve.empty:
        return
    x = curve.index.to_numpy(dtype=float)
    mean = curve["mean"].to_numpy(dtype=float)
    if band and (curve["n"] > 1).any():
        if spread == "minmax":
            lo, hi = curve["min"].to_numpy(float), curve["max"].to_numpy(float)
        else:
            std = curve["std"].fillna(0.0).to_numpy(float)
            lo, hi = mean - std, mean + std
        ax.fill_between(x, lo, hi, color=line.colour, alpha=0.15, linewidth=0, gid="spread")
    ax.plot(x, mean, color=line.colour, linestyle=linestyle, marker=line.marker,
            markersize=3, linewidth=1.5, label=line.label, gid=gid)


def _mark_untrained(ax, runs: pd.DataFrame, keys: Sequence[str | None],
                    line: MethodStyle) -> None:
    for key in (k for k in keys if k is not None):
        values = epoch_values(runs, key)
        if not values.empty:
            ax.plot(values["epoch"].to_numpy(float), values["value"].to_numpy(float),
                    linestyle="none", marker=line.marker, markersize=4, markerfacecolor="none",
                    markeredgecolor=line.colour, gid="untrained")
