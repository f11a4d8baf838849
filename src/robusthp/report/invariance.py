"""The invariance study (Kamath, Deshpande, Subrahmanyam: rotation invariance vs adversarial
robustness, arXiv 2002.11318; SVD-Universal, arXiv 2005.08632; universal invariant
directions, arXiv 2006.04449): StdCNN, Z2CNN and P4CNN trained on images rotated by a uniform
random angle in [-Θ_train, Θ_train] (``cell.rotation``, in degrees; 0 for a run recorded
before it existed), one line per Θ_train.

Which runs: a cell (every setting but the seed, :data:`~robusthp.report.table.GROUP_KEYS`)
is *in the study* when one of its ok runs recorded an invariance key (:func:`study_columns`:
``rot_acc@<theta>``, ``rot_fixed_acc@<angle>`` or an SVD-Universal ``universal_*`` key). A
dataset is in the study (:func:`invariance_datasets`) when one of its study runs trained,
even a single run; it is *compared* (:attr:`Study.compared`, the figures against Θ_train)
when its trained study runs cover at least two Θ_train values or two models (series). A plain
paper sweep records none of these keys: nothing of this module is written for it.

Per dataset in the study, :func:`invariance_figures` draws

- ``<dataset>_invariance.png``: invariance profiles, the accuracy on test images rotated by a
  uniform random angle in [-θ, θ] vs θ (``rot_acc@<theta>``, 0 ... 180°), one panel per
  model, one line per Θ_train (colour: Θ_train on a sequential colormap, dark = 0°; a dotted
  vertical at θ = Θ_train; chance dashed grey); when recorded, a second row of panels with the
  accuracy at each fixed angle (``rot_fixed_acc@<angle>``);
- ``<dataset>_invariance_robustness.png`` (compared only): against Θ_train, one line per
  model: clean accuracy, the invariance (accuracy under the widest test rotation recorded,
  ``rot_acc@180``: all angles), PGD and FGSM accuracy at the primary eps
  (:func:`primary_keys`) in each eps reading recorded (pixel, normalized) and the median
  minimal eps* per reading, side by side so the trade-off shows;
- ``<dataset>_universal.png``: SVD-Universal fooling rate vs the L2 norm s of u = s v₁ (in
  [0,1] pixels), one panel per (model, attack: the input gradient first, in bold, then the
  FGSM sign and DeepFool), one line per Θ_train: the flip rate #{f(x+u) ≠ f(x)}/N solid (the
  standard definition) with its +-1 std band, the error rate #{f(x+u) ≠ y}/N dashed (the
  authors' code); compared, also panels against Θ_train, one line per model, for the default
  attack: both rates at the norm closest to :data:`MIDDLE_NORM`, σ₁²/‖A‖_F² (the spectral
  property the method relies on) and, when recorded, |cos| of v₁ with the universal invariant
  direction (marked a reconstruction: the paper gives no definition);

each line the mean over the cell's ok, trained seeds with +-1 std (ddof 1; a band along a
curve, bars against Θ_train with the seeds as faint dots); a figure or panel without data is
not drawn. Untrained runs (:func:`~robusthp.report.flags.untrained`) are left out and
counted in the note, diverged and failed ones too. :func:`invariance_table` is
``invariance.csv``: n, mean and std per cell.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MultipleLocator

from robusthp.catalog import DATASETS
from robusthp.report.columns import (
    UNIVERSAL_ATTACKS,
    UNIVERSAL_INVARIANT_SV,
    acc_keys,
    parse_acc_key,
    parse_universal_key,
    universal_keys,
)
from robusthp.report.flags import untrained
from robusthp.report.layout import figure_grid
from robusthp.report.names import (
    DATASET_ALIASES,
    DATASET_LABELS,
    MODEL_LABELS,
    num_classes,
    regime_label,
)
from robusthp.report.panels import MIN_EPS_SPACES, min_eps_column, with_panel_columns
from robusthp.report.stats import summarize
from robusthp.report.table import GROUP_KEYS

log = logging.getLogger(__name__)

PROFILE = "rot"  # the accuracy keys' "attack": rot_acc@<theta>
FIXED = "rot_fixed"  # rot_fixed_acc@<angle>
VARIANT = ("regime", "momentum", "batch_size", "lr", "epochs")  # GROUP_KEYS but the line's
DEFAULT_ATTACK = "gradient"  # SVD-Universal from input gradients: the method's default
MIDDLE_NORM = 4.0  # L2 norm in [0,1] pixels of the fooling rate against Θ_train (|x| ~ 9.4)
THETA_COLOURS = "viridis"  # sequential: dark = no rotation, light = the largest Θ_train
MODEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
                 "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
UNIVERSAL_NAMES = {"gradient": "input gradients", "fgsm": "FGSM signs", "deepfool": "DeepFool"}
ROBUSTNESS_METRICS = ("median_min_eps", "min_eps_auc")
SPREAD_TEXT = "mean +- 1 std over seeds (ddof 1)"
THETA_TRAIN_TEXT = "Θ_train: training images rotated by a uniform angle in [-Θ, Θ] (degrees)"


# ---------------------------------------------------------------------------- which runs


def rotation_keys(columns: Sequence[str], attack: str = PROFILE) -> list[tuple[float, str]]:
    """(angle, key) of the ``rot_acc@<theta>`` (``attack="rot_fixed"``: ``rot_fixed_acc@``)
    columns among ``columns``, by angle."""
    return [(k.eps, k.key) for k in acc_keys(columns) if k.attack == attack]


def study_columns(columns: Sequence[str]) -> list[str]:
    """The invariance and SVD-Universal keys among ``columns`` (what puts a cell in the study)."""
    rot = [key for attack in (PROFILE, FIXED) for _, key in rotation_keys(columns, attack)]
    return [*rot, *universal_keys(columns)]


@dataclass(frozen=True)
class Line:
    """One cell of the study: a series' ok, trained runs at one Θ_train."""

    rotation: float
    label: str  # "Θ_train = 30°"
    colour: str
    runs: pd.DataFrame


@dataclass(frozen=True)
class Series:
    """One model (at one setting of the other keys): a panel of the profile and universal
    figures, a line of the panels against Θ_train."""

    model: str
    label: str
    colour: str
    marker: str
    lines: list[Line]


@dataclass(frozen=True)
class Study:
    """The study runs of one dataset: every run of its study cells, and its series."""

    dataset: str
    runs: pd.DataFrame
    series: list[Series]

    @property
    def trained(self) -> pd.DataFrame:
        return self.runs[(self.runs["status"] == "ok") & ~untrained(self.runs)]

    @property
    def rotations(self) -> list[float]:
        return sorted({line.rotation for s in self.series for line in s.lines})

    @property
    def compared(self) -> bool:
        """At least two Θ_train values or two series with a trained run."""
        return len(self.rotations) >= 2 or len(self.series) >= 2


def _with_rotation(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``rotation`` (Θ_train) 0 where missing (runs from before it existed)."""
    rotation = runs["rotation"] if "rotation" in runs.columns else pd.Series(np.nan, runs.index)
    return runs.assign(rotation=pd.to_numeric(rotation, errors="coerce").fillna(0.0).astype(float))


_CELL = ("model", *VARIANT, "rotation")


def _cell_keys(runs: pd.DataFrame) -> pd.Series:
    """The cell of each run (model, the other settings, Θ_train) as a tuple (missing: None)."""
    values = runs[list(_CELL)].astype(object).where(runs[list(_CELL)].notna(), None)
    return pd.Series(list(map(tuple, values.to_numpy())), index=runs.index, dtype=object)


def study(df: pd.DataFrame, dataset: str) -> Study:
    """The study runs and series of ``dataset`` (see the module docstring)."""
    runs = df[df["dataset"] == dataset].dropna(subset=["model", "regime", "batch_size"])
    runs = _with_rotation(runs)
    columns = study_columns(runs.columns)
    recorded = (runs["status"] == "ok") & (runs[columns].notna().any(axis=1) if columns else False)
    keys = _cell_keys(runs)
    runs = with_panel_columns(runs[keys.map(set(keys[recorded]).__contains__).astype(bool)])
    return Study(dataset, runs, _series(runs))


def model_order(models) -> list[str]:
    """The distinct ``models``: the catalog's in its order, then unknown ones by name."""
    rank = {m: i for i, m in enumerate(MODEL_LABELS)}
    return sorted(set(models), key=lambda m: (rank.get(m, len(rank)), m))


def _series(runs: pd.DataFrame) -> list[Series]:
    keys = _cell_keys(runs)
    models = model_order(runs["model"])
    groups = sorted({(k[0], k[1:-1]) for k in keys},
                    key=lambda g: (models.index(g[0]), *(_sortable(v) for v in g[1])))
    varying = [i for i in range(len(VARIANT)) if len({g[1][i] for g in groups}) > 1]
    rotations = sorted({k[-1] for k in keys})
    trained = (runs["status"] == "ok") & ~untrained(runs)
    drawn = sorted(set(keys[trained].map(lambda k: k[-1])))  # the colours span these
    out = []
    for model, variant in groups:
        lines = []
        for theta in rotations:
            in_cell = keys.map(lambda k, c=(model, *variant, theta): k == c).astype(bool)
            if (in_cell & trained).any():
                lines.append(Line(theta, theta_label(theta), theta_colour(theta, drawn),
                                  runs[in_cell & trained]))
        if not lines:
            continue
        label = MODEL_LABELS.get(model, model)
        if varying:
            label += ", " + ", ".join(_setting_text(VARIANT[i], variant[i]) for i in varying)
        i = len(out)
        out.append(Series(model, label, MODEL_COLOURS[i % len(MODEL_COLOURS)],
                          MARKERS[i % len(MARKERS)], lines))
    return out


def _sortable(value) -> tuple:
    if value is None:
        return (2, "")
    return (0, float(value)) if isinstance(value, int | float) else (1, str(value))


_SHORT = {"momentum": "m", "batch_size": "B", "lr": "lr", "epochs": "epochs"}


def _setting_text(key: str, value) -> str:
    if key == "regime":
        return "?" if value is None else regime_label(value)
    return f"{_SHORT[key]} = {'?' if value is None else f'{float(value):g}'}"


def theta_label(theta: float) -> str:
    return f"Θ_train = {theta:g}°"


def theta_colour(theta: float, rotations: Sequence[float]) -> str:
    """Θ_train on :data:`THETA_COLOURS`: 0° dark, the study's largest Θ_train light."""
    top = max(rotations, default=0.0)
    return to_hex(colormaps[THETA_COLOURS](0.88 * theta / top if top > 0 else 0.0))


def invariance_datasets(df: pd.DataFrame) -> list[str]:
    """The datasets in the invariance study: study cells with a trained run."""
    placed = df.dropna(subset=["dataset", "model", "regime", "batch_size"])
    return [d for d in sorted(set(placed["dataset"])) if study(placed, d).series]


# ---------------------------------------------------------------------------- keys


def _recorded(runs: pd.DataFrame, keys: Sequence[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(x, k) for x, k in keys if k in runs.columns and runs[k].notna().any()]


def universal_attacks(runs: pd.DataFrame) -> list[str]:
    """The attacks whose SVD-Universal fooling rates ``runs`` recorded: the input gradient,
    FGSM, DeepFool, then any other by name."""
    parsed = [parse_universal_key(k) for k in universal_keys(runs.columns)]
    attacks = {p.attack for p in parsed if p is not None and p.kind in ("flip", "error")
               and runs[p.key].notna().any()}
    return sorted(attacks, key=lambda a: (UNIVERSAL_ATTACKS.index(a)
                                          if a in UNIVERSAL_ATTACKS else len(UNIVERSAL_ATTACKS), a))


def default_attack(attacks: Sequence[str]) -> str | None:
    """:data:`DEFAULT_ATTACK` when recorded, else the first attack recorded (None: none)."""
    return DEFAULT_ATTACK if DEFAULT_ATTACK in attacks else next(iter(attacks), None)


def universal_curve(runs: pd.DataFrame, kind: str, attack: str) -> list[tuple[float, str]]:
    """(L2 norm, key) of the recorded ``universal_<kind>@<attack>@<s>`` columns, by norm."""
    parsed = [parse_universal_key(k) for k in universal_keys(runs.columns)]
    return _recorded(runs, sorted((p.norm, p.key) for p in parsed if p is not None
                                  and p.kind == kind and p.attack == attack))


def middle_norm(runs: pd.DataFrame, attack: str, target: float = MIDDLE_NORM) -> float | None:
    """The recorded L2 norm of ``attack``'s flip rate closest to ``target`` (the smaller on a tie)."""
    norms = [s for s, _ in universal_curve(runs, "flip", attack)]
    return min(norms, key=lambda s: (abs(s - target), s)) if norms else None


def primary_keys(runs: pd.DataFrame, attack: str) -> list[str]:
    """The accuracy keys of ``attack`` (``"pgd"``, ``"fgsm"``) at the primary eps, one per eps
    reading recorded (pixel, then normalized); the plain ``<attack>_acc`` when no suffixed key
    has a value.

    The primary eps is the adversarial callback's first: the one whose key holds the same
    values as the plain ``<attack>_acc`` (the first eps of the first reading). When that does
    not single one out: the dataset's catalog eps if recorded, else the smallest.
    """
    keys = [k for k in acc_keys(runs.columns) if k.attack == attack and runs[k.key].notna().any()]
    plain = f"{attack}_acc"
    if not keys:
        return [plain] if plain in runs.columns and runs[plain].notna().any() else []
    eps = sorted({k.eps for k in keys})
    matching = [e for e in eps if plain in runs.columns
                and any(_same(runs, k.key, plain) for k in keys if k.eps == e)]
    candidates = matching or eps
    default = _catalog_eps(runs)
    primary = next((e for e in candidates if default is not None and math.isclose(e, default)),
                   candidates[0])
    return [k.key for k in keys if k.eps == primary]


def _same(runs: pd.DataFrame, a: str, b: str) -> bool:
    both = runs[a].notna() & runs[b].notna()
    return bool(both.any()) and np.allclose(runs.loc[both, a].to_numpy(float),
                                            runs.loc[both, b].to_numpy(float), rtol=0, atol=1e-12)


def _catalog_eps(runs: pd.DataFrame) -> float | None:
    datasets = runs["dataset"].dropna().unique()
    if len(datasets) != 1:
        return None
    spec = DATASETS.get(DATASET_ALIASES.get(datasets[0], datasets[0]))
    return None if spec is None else spec.eps


def _attack_name(runs: pd.DataFrame, attack: str) -> str:
    """``PGD-40`` when every run has the same, known PGD steps; else the attack in capitals."""
    if attack != "pgd" or "pgd_steps" not in runs.columns:
        return attack.upper()
    steps = runs["pgd_steps"].dropna().unique()
    return f"PGD-{int(steps[0])}" if len(steps) == 1 and runs["pgd_steps"].notna().all() \
        else "PGD"


# ---------------------------------------------------------------------------- the table


def table_metrics(runs: pd.DataFrame) -> list[str]:
    """The metrics of ``invariance.csv`` that ``runs`` recorded, in column order: clean
    accuracy, the invariance profile and fixed angles, FGSM / PGD accuracy at every eps and
    reading, eps*, then for the default SVD-Universal attack the flip and error rates per
    norm, σ₁²/‖A‖_F² and |cos| with the invariant direction, and its σ₁²/‖A‖_F²."""
    ok = runs[runs["status"] == "ok"]
    out = [m for m in ("test_acc", "clean_acc") if m in runs.columns]
    out += [k for attack in (PROFILE, FIXED) for _, k in rotation_keys(runs.columns, attack)]
    for attack in ("fgsm", "pgd"):
        keys = [k.key for k in acc_keys(runs.columns) if k.attack == attack
                and ok[k.key].notna().any()]
        out += keys or [f"{attack}_acc"]
    out += [m for m in ROBUSTNESS_METRICS if m in runs.columns]
    attack = default_attack(universal_attacks(ok))
    for key in universal_keys(runs.columns):
        parsed = parse_universal_key(key)
        if parsed is not None and parsed.attack == attack and "unclamped" not in parsed.kind:
            out.append(key)
    out += [UNIVERSAL_INVARIANT_SV] if UNIVERSAL_INVARIANT_SV in runs.columns else []
    return [m for m in out if m in ok.columns and ok[m].notna().any()]


def invariance_table(df: pd.DataFrame) -> pd.DataFrame:
    """``invariance.csv``: one row per study cell of each dataset in the study.

    Columns: :data:`~robusthp.report.table.GROUP_KEYS` (``rotation`` is Θ_train), ``n`` (ok,
    trained seeds), ``n_untrained``, ``n_diverged``, ``n_failed``, then ``<metric>_mean`` and
    ``<metric>_std`` (ddof 1, over the ``n`` seeds) for :func:`table_metrics`. Rows by
    dataset, model (the catalog's order), the other settings, Θ_train. Untrained runs are
    left out of the statistics and counted. No dataset in the study: no rows.
    """
    runs = [study(df, d).runs for d in invariance_datasets(df)]
    runs = pd.concat(runs) if runs else _with_rotation(df.iloc[:0])
    metrics = table_metrics(runs) if not runs.empty else []
    summary = summarize(runs, metrics)
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    order = model_order(summary["model"])
    summary = summary.sort_values(list(GROUP_KEYS), key=lambda c: c.map(order.index)
                                  if c.name == "model" else c, kind="stable")
    return summary[[*GROUP_KEYS, "n", "n_untrained", "n_diverged", "n_failed",
                    *stats]].reset_index(drop=True)


# ---------------------------------------------------------------------------- figures


class NoStudyData(ValueError):
    """The study runs of a dataset recorded nothing a figure draws."""


def invariance_figures(df: pd.DataFrame, dataset: str) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of the invariance study's figures of ``dataset``, each only when
    its runs recorded something for it."""
    s = study(df, dataset)
    for suffix, plot in (("invariance", plot_invariance_figure),
                         ("invariance_robustness", plot_robustness_figure),
                         ("universal", plot_universal_figure)):
        try:
            fig = plot(df, dataset, study_=s)
        except NoStudyData as error:
            log.info("%s_%s.png not drawn: %s", dataset, suffix, error)
            continue
        yield f"{dataset}_{suffix}.png", fig


def _seeds_text(s: Study) -> str:
    n = [len(line.runs) for series in s.series for line in series.lines]
    if not n:
        return "no trained seeds"
    seeds = str(n[0]) if min(n) == max(n) else f"{min(n)}-{max(n)}"
    return f"n = {seeds} seed{'s' if max(n) > 1 else ''} per cell"


def study_note(s: Study, extra: Sequence[str] = ()) -> str:
    """The note under a study figure: seeds per cell, then what is left out and why."""
    lines = [f"{_seeds_text(s)}: {SPREAD_TEXT}"]
    counts = [(series.label, line.rotation, len(line.runs))
              for series in s.series for line in series.lines]
    if len({n for *_, n in counts}) > 1 and len(counts) <= 12:
        lines.append("seeds: " + ", ".join(f"{label} at {theta:g}° {n}"
                                           for label, theta, n in counts))
    ok = s.runs[s.runs["status"] == "ok"]
    n = int(untrained(ok).sum())
    if n:
        below = ok.loc[untrained(ok), "untrained_threshold"].dropna().unique()
        why = f" (clean acc < {below[0]:.3g})" if len(below) == 1 else ""
        lines.append(f"{n} untrained run{'s' if n != 1 else ''}{why} left out")
    for status, count in s.runs.loc[s.runs["status"] != "ok", "status"].value_counts().items():
        lines.append(f"{count} {status} run{'s' if count != 1 else ''} not plotted")
    return "\n".join([*lines, *extra])


def _require(s: Study, what: str) -> None:
    if not s.series:
        raise NoStudyData(f"no ok, trained study run of {s.dataset} ({what})")


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std (ddof 1; 0 for one value) of ``values``."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def _curve(runs: pd.DataFrame, keys: Sequence[tuple[float, str]]):
    """x, mean, std, seeds of each key with a value in ``runs`` (arrays)."""
    out = []
    for x, key in keys:
        values = runs[key].dropna().to_numpy(float) if key in runs.columns else np.empty(0)
        if len(values):
            out.append((x, *_mean_std(values), len(values)))
    table = np.array(out, dtype=float).reshape(-1, 4)  # rows: x, mean, std, seeds
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3]


def _draw_curve(ax, runs: pd.DataFrame, keys: Sequence[tuple[float, str]], *, colour: str,
                label: str, gid: str = "mean", linestyle: str = "-", band: bool = True,
                marker: str = "o") -> bool:
    """The mean over ``runs`` of each key at its x, with a +-1 std band (gid ``"spread"``)
    when several seeds; False when no key has a value."""
    x, mean, std, n = _curve(runs, keys)
    if not len(x):
        return False
    if band and (n > 1).any():
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0,
                        gid="spread")
    ax.plot(x, mean, color=colour, linestyle=linestyle, marker=marker, markersize=3.5,
            linewidth=1.5, label=label, gid=gid)
    return True


def _theta_handles(s: Study) -> list[Line2D]:
    return [Line2D([], [], color=theta_colour(t, s.rotations), linewidth=2, label=theta_label(t))
            for t in s.rotations]


def _model_handles(s: Study) -> list[Line2D]:
    return [Line2D([], [], color=series.colour, marker=series.marker, linewidth=1.5,
                   label=series.label) for series in s.series]


def _share_ylim(axes: Sequence, *, lo: float | None = None, hi: float | None = None) -> None:
    if not axes:
        return
    limits = [ax.get_ylim() for ax in axes]
    low = min(a for a, _ in limits) if lo is None else lo
    high = max(b for _, b in limits) if hi is None else hi
    for ax in axes:
        ax.set_ylim(low, high)


def _style(ax, title: str, xlabel: str, ylabel: str, *, bold: bool = False) -> None:
    ax.set_title(title, fontsize=9, fontweight="bold" if bold else "normal")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)


# -------------------------------------------------- the invariance profile


def plot_invariance_figure(df: pd.DataFrame, dataset: str, *,
                           study_: Study | None = None) -> Figure:
    """Accuracy on test images rotated by a uniform random angle in [-θ, θ] vs θ, one panel
    per series (model), one line per Θ_train (gid ``"mean"``, labelled ``"Θ_train = 30°"``)
    with a +-1 std band (gid ``"spread"``) and a dotted vertical at θ = Θ_train (gid
    ``"theta_train"``); chance dashed (gid ``"chance"``). A second row of panels, when
    recorded, with the accuracy at each fixed angle. Raises :class:`NoStudyData` when no
    trained study run recorded ``rot_acc@``."""
    s = study(df, dataset) if study_ is None else study_
    _require(s, "invariance figure")
    trained = s.trained
    profile = _recorded(trained, rotation_keys(trained.columns))
    if not profile:
        raise NoStudyData(f"no study run of {dataset} recorded rot_acc@<theta>")
    fixed = _recorded(trained, rotation_keys(trained.columns, FIXED))
    rows = [(PROFILE, profile), *([(FIXED, fixed)] if fixed else [])]
    n = len(s.series)
    fig, axes = figure_grid(n * len(rows), study_note(s), max_cols=min(n, 4),
                            panel_size=(3.9, 3.2), legend_width=2.3)
    chance = 1.0 / num_classes(dataset)
    for r, (kind, keys) in enumerate(rows):
        row = axes[r * n:(r + 1) * n]
        for ax, series in zip(row, s.series, strict=True):
            for line in series.lines:
                _draw_curve(ax, line.runs, keys, colour=line.colour, label=line.label)
                if kind == PROFILE:
                    ax.axvline(line.rotation, color=line.colour, linestyle=":", linewidth=1.1,
                               alpha=0.8, gid="theta_train")
            ax.axhline(chance, color="0.5", linestyle="--", linewidth=1, zorder=0, gid="chance")
            angles = [a for a, _ in keys]
            ax.xaxis.set_major_locator(MultipleLocator(45 if max(angles) - min(angles) > 200
                                                       else 30))
            if kind == PROFILE:
                _style(ax, f"{series.label}: invariance profile",
                       "θ (degrees): test images rotated by a uniform angle in [-θ, θ]",
                       "accuracy")
            else:
                _style(ax, f"{series.label}: accuracy at a fixed rotation",
                       "angle of every test image (degrees)", "accuracy")
        _share_ylim(row, lo=max(min(ax.get_ylim()[0] for ax in row), -0.02), hi=1.02)
    fig.suptitle(f"{DATASET_LABELS.get(dataset, dataset)}: rotation invariance profiles per "
                 f"training rotation Θ_train\n({_seeds_text(s)}; nearest-neighbour rotation, "
                 "black fill)", fontsize=10)
    extra = [Patch(facecolor="0.6", alpha=0.35, label="band: +- 1 std (ddof 1)"),
             Line2D([], [], color="0.3", linestyle=":", label="dotted: θ = Θ_train"),
             Line2D([], [], color="0.5", linestyle="--", label="chance")]
    fig.legend(handles=[*_theta_handles(s), *extra], loc="outside right upper", fontsize=8,
               frameon=False, title="training rotation", title_fontsize=8)
    return fig


# -------------------------------------------------- invariance vs robustness


@dataclass(frozen=True)
class TradePanel:
    """A panel against Θ_train: ``metric`` per series."""

    metric: str
    title: str
    ylabel: str
    accuracy: bool = True


def robustness_panels(runs: pd.DataFrame) -> list[TradePanel]:
    """The panels of the robustness figure ``runs`` recorded, in order: clean accuracy, the
    invariance (widest test rotation), PGD and FGSM at the primary eps per reading, the median
    eps* per reading."""
    out = []
    if "test_acc" in runs.columns and runs["test_acc"].notna().any():
        out.append(TradePanel("test_acc", "Clean test accuracy", "accuracy"))
    profile = _recorded(runs, rotation_keys(runs.columns))
    if profile:
        theta, key = profile[-1]
        out.append(TradePanel(key, f"Invariance: test rotated in [-{theta:g}°, {theta:g}°]",
                              "accuracy on rotated test images"))
    for attack in ("pgd", "fgsm"):
        name = _attack_name(runs, attack)
        for key in primary_keys(runs, attack):
            parsed = parse_acc_key(key)
            budget = parsed.eps_text if parsed is not None else "first eps"
            out.append(TradePanel(key, f"{name} accuracy, {budget}", "accuracy under attack"))
    spaces = [*MIN_EPS_SPACES, *sorted(c[len("median_min_eps["):-1] for c in runs.columns
                                       if c.startswith("median_min_eps[")
                                       and c[len("median_min_eps["):-1] not in MIN_EPS_SPACES)]
    for space in spaces:
        column = min_eps_column(space)
        if column in runs.columns and runs[column].notna().any():
            out.append(TradePanel(column, f"Median minimal eps* ({space})",
                                  f"median eps* ({MIN_EPS_SPACES.get(space, space)})",
                                  accuracy=False))
    return out


def plot_robustness_figure(df: pd.DataFrame, dataset: str, *,
                           study_: Study | None = None) -> Figure:
    """Clean accuracy, invariance, PGD / FGSM accuracy at the primary eps per reading and the
    median eps* against Θ_train, one line per series (model): the mean over ok, trained seeds
    (gid ``"mean"``, labelled as the legend) with +-1 std bars, seeds as faint dots (gid
    ``"seeds"``). Raises :class:`NoStudyData` when the dataset is not compared (one Θ_train
    and one model) or recorded none of these."""
    s = study(df, dataset) if study_ is None else study_
    _require(s, "invariance-robustness figure")
    if not s.compared:
        raise NoStudyData(f"the study of {dataset} has one Θ_train and one model: nothing "
                          "to draw against Θ_train")
    panels = robustness_panels(s.trained)
    if not panels:
        raise NoStudyData(f"no study run of {dataset} recorded accuracy or robustness")
    fig, axes = figure_grid(len(panels), study_note(s), max_cols=3, panel_size=(3.7, 3.1),
                            legend_width=2.2)
    for ax, panel in zip(axes, panels, strict=True):
        _trade_panel(ax, s, panel.metric)
        _style(ax, panel.title, "Θ_train (degrees)", panel.ylabel)
        if panel.accuracy:
            _min_span(ax)
    fig.suptitle(f"{DATASET_LABELS.get(dataset, dataset)}: invariance vs adversarial "
                 f"robustness against the training rotation\n({_seeds_text(s)}; "
                 f"{THETA_TRAIN_TEXT}; eps in [0,1] pixels or x std)", fontsize=10)
    extra = [Line2D([], [], color="0.3", marker="|", markersize=10, linestyle="none",
                    label="bar: +- 1 std (ddof 1)"),
             Line2D([], [], color="0.3", marker="o", markersize=3.5, alpha=0.35,
                    linestyle="none", label="faint dot: one seed")]
    fig.legend(handles=[*_model_handles(s), *extra], loc="outside right upper", fontsize=8,
               frameon=False, title="model (line: mean)", title_fontsize=8)
    return fig


def _trade_panel(ax, s: Study, metric: str, *, gid: str = "mean", linestyle: str = "-",
                 seeds: bool = True, label: bool = True) -> None:
    """``metric`` of each series against Θ_train: seeds faint, mean +- 1 std, a line."""
    for series in s.series:
        xs, means, stds = [], [], []
        for line in series.lines:
            if metric not in line.runs.columns:
                continue
            values = line.runs[metric].dropna().to_numpy(float)
            if not len(values):
                continue
            mean, std = _mean_std(values)
            xs.append(line.rotation)
            means.append(mean)
            stds.append(std)
            if seeds:
                ax.plot(np.full(len(values), line.rotation), values, linestyle="none",
                        marker=series.marker, markersize=3.5, alpha=0.35, color=series.colour,
                        gid="seeds")
        if not xs:
            continue
        ax.errorbar(xs, means, yerr=stds, fmt="none", ecolor=series.colour, elinewidth=1.2,
                    capsize=3)
        ax.plot(xs, means, color=series.colour, marker=series.marker, markersize=6,
                linestyle=linestyle, linewidth=1.5, markeredgecolor="0.15",
                label=series.label if label else "_nolegend_", gid=gid)
    rotations = s.rotations
    ax.set_xticks(rotations, [f"{t:g}" for t in rotations])
    if len(rotations) == 1:
        ax.set_xlim(rotations[0] - 10, rotations[0] + 10)


def _min_span(ax, span: float = 0.05) -> None:
    """An accuracy panel at least ``span`` tall (a few test points do not fill it)."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        lo = min(max(mid - span / 2, -0.005), 1.005 - span)
        ax.set_ylim(lo, lo + span)


# -------------------------------------------------- SVD-Universal


def plot_universal_figure(df: pd.DataFrame, dataset: str, *,
                          study_: Study | None = None) -> Figure:
    """SVD-Universal fooling rate vs L2 norm, one panel per (series, attack) (the default
    attack's titles bold), one line per Θ_train: the flip rate solid (gid ``"flip"``) with a
    +-1 std band (gid ``"spread"``), the error rate dashed (gid ``"error"``). When the dataset
    is compared, panels against Θ_train for the default attack, one line per series: both
    rates at the norm closest to :data:`MIDDLE_NORM` (flip gid ``"mean"``, error gid
    ``"error"``), ``universal_sv_ratio@`` and the reconstruction's
    ``universal_invariant_cos@`` when recorded. Raises :class:`NoStudyData` when no trained
    study run recorded a fooling rate."""
    s = study(df, dataset) if study_ is None else study_
    _require(s, "universal figure")
    trained = s.trained
    attacks = universal_attacks(trained)
    if not attacks:
        raise NoStudyData(f"no study run of {dataset} recorded universal_flip@ / universal_error@")
    main = default_attack(attacks)
    summary: list[tuple[str, object]] = []  # (title, how to draw it)
    if s.compared:
        norm = middle_norm(trained, main)
        if norm is not None:
            keys = tuple(dict(universal_curve(trained, kind, main)).get(norm)
                         for kind in ("flip", "error"))
            summary.append((f"Fooling rate at s = {norm:g} ({UNIVERSAL_NAMES.get(main, main)})",
                            ("rate", keys)))
        for kind, title in (("sv_ratio", "σ₁²/‖A‖_F² of the attack directions"),
                            ("invariant_cos", "|cos(v₁, invariant direction)| (reconstruction)")):
            key = f"universal_{kind}@{main}"
            if key in trained.columns and trained[key].notna().any():
                summary.append((f"{title} ({UNIVERSAL_NAMES.get(main, main)})", ("scalar", key)))
    slots, cols = _universal_slots(s, attacks, len(summary))
    fig, axes = figure_grid(len(slots), _universal_note(s), max_cols=cols,
                            panel_size=(3.7, 3.1), legend_width=2.6)
    for ax, slot in zip(axes, slots, strict=True):
        if slot is None:  # a row's padding: the next model (or the summary) starts a row
            ax.set_axis_off()
    curves = iter(ax for ax, slot in zip(axes, slots, strict=True) if slot == "curve")
    summary_axes = [ax for ax, slot in zip(axes, slots, strict=True) if slot == "summary"]
    for series in s.series:
        for attack in attacks:
            ax = next(curves)
            drawn = False
            for line in series.lines:
                drawn |= _draw_curve(ax, line.runs, universal_curve(line.runs, "flip", attack),
                                     colour=line.colour, label=line.label, gid="flip")
                drawn |= _draw_curve(ax, line.runs, universal_curve(line.runs, "error", attack),
                                     colour=line.colour, label=line.label, gid="error",
                                     linestyle="--", band=False, marker="none")
            if not drawn:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", fontsize=8,
                        color="0.4", transform=ax.transAxes)
            ax.set_ylim(-0.02, 1.02)
            _style(ax, f"{series.label}: SVD-Universal from {UNIVERSAL_NAMES.get(attack, attack)}",
                   "L2 norm s of u = s v₁ ([0,1] pixels)", "fooling rate",
                   bold=attack == main and len(attacks) > 1)
    for ax, (title, (how, what)) in zip(summary_axes, summary, strict=True):
        if how == "rate":
            flip, error = what
            _trade_panel(ax, s, flip)
            if error is not None:
                _trade_panel(ax, s, error, gid="error", linestyle="--", seeds=False, label=False)
            _min_span(ax, 0.1)
            ylabel = "fooling rate (dashed: error rate)"
        else:
            _trade_panel(ax, s, what)
            ylabel = "|cos|" if "cos" in what else "σ₁² / ‖A‖_F²"
        _style(ax, title, "Θ_train (degrees)", ylabel)
    fig.suptitle(f"{DATASET_LABELS.get(dataset, dataset)}: SVD-Universal fooling rate vs L2 "
                 f"norm, per training rotation Θ_train\n({_seeds_text(s)}; u = s v₁, v₁ the "
                 "top singular vector of the attack directions)", fontsize=10)
    styles = [Line2D([], [], color="0.3", linestyle="-", label="flip rate #{f(x+u) ≠ f(x)}/N"),
              Line2D([], [], color="0.3", linestyle="--", label="error rate #{f(x+u) ≠ y}/N"),
              Patch(facecolor="0.6", alpha=0.35, label="band: +- 1 std (ddof 1)")]
    fig.legend(handles=[*_theta_handles(s), *styles], loc="outside right upper", fontsize=8,
               frameon=False, title="training rotation", title_fontsize=8)
    if summary:
        fig.legend(handles=_model_handles(s), loc="outside right lower", fontsize=8,
                   frameon=False, title="model (panels vs Θ_train)", title_fontsize=8)
    return fig


def _universal_slots(s: Study, attacks: Sequence[str], n_summary: int
                     ) -> tuple[list[str | None], int]:
    """The panels of the universal figure in grid order (``"curve"``, ``"summary"``, None
    for an empty cell) and the columns: with several attacks a row per model (its attacks
    in order), with one the models side by side; the panels against Θ_train in rows below."""
    cols = len(attacks) if len(attacks) > 1 else min(3, max(len(s.series), n_summary))
    cols = max(cols, min(3, n_summary))
    while True:
        if len(attacks) > 1:
            per_model = math.ceil(len(attacks) / cols) * cols
            curves = [slot for _ in s.series
                      for slot in ["curve"] * len(attacks) + [None] * (per_model - len(attacks))]
        else:
            n = len(s.series)
            curves = ["curve"] * n + [None] * ((-n % cols) if n_summary else 0)
        slots = [*curves, *["summary"] * n_summary]
        if len(slots) <= 8 or cols >= 3:  # figure_grid takes 3 columns past 8 panels
            return slots, cols
        cols = 3


def _universal_note(s: Study) -> str:
    extra = ["fooling rates on x + u clamped to [0,1] pixels (unclamped: results.csv)"]
    for column, what in (("universal_n", "points for v₁"), ("universal_num_samples",
                                                              "test points per rate")):
        if column in s.trained.columns:
            values = sorted(s.trained[column].dropna().unique())
            if values:
                text = f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}-{values[-1]:g}"
                extra.append(f"{what}: {text}")
    return study_note(s, ["; ".join(extra)])
