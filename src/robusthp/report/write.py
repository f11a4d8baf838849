"""The report on disk: ``results.csv``, ``summary.csv``, ``trends.csv`` and one PNG per figure.

Which figures there are follows the table and the catalog: one per (dataset, model), a
Section 4 momentum figure per regime the catalog says sweeps momentum, and a robustness
curve figure per (dataset, model) whose runs recorded ``min_eps_curve``. Against the noise
scale (``x="noise_scale"``) the batch-size figures are named ``..._noise_scale.png``. Each
(dataset, model) the optimizer study compares (:mod:`~robusthp.report.optimizers`) adds its
three figures (``_optimizers``, ``_bands``, ``_function``: the same whatever the x-axis
of the batch-size figures) and ``optimizers.csv``, which is only written when some
(dataset, model) is compared: a sweep without the study's metrics writes what it always did.
Likewise each dataset in the invariance study (:mod:`~robusthp.report.invariance`: runs that
recorded ``rot_acc@`` or SVD-Universal keys) adds ``<dataset>_invariance.png``,
``<dataset>_invariance_robustness.png`` and ``<dataset>_universal.png`` (each when its data
exist) and ``invariance.csv``. Each (dataset, model) in the adversarial-training study
(:mod:`~robusthp.report.adv_training`: two or more methods, one adversarial) adds
``<dataset>_<model>_adv_training.png``, ``<dataset>_<model>_adv_training_epochs.png`` (each
when its data exist) and ``adv_training.csv``; its batch-size and momentum figures draw the
natural runs only (:func:`~robusthp.report.figures.natural_runs`). Runs that recorded the
Hessian's density or trace add ``<dataset>_<model>_hessian_density.png`` and
``<dataset>_<model>_hessian_trace.png`` (:mod:`~robusthp.report.spectrum`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from robusthp.report.adv_training import (
    adv_training_figure_names,
    adv_training_figures,
    adv_training_table,
)
from robusthp.report.curves import has_curves, plot_robustness_curves
from robusthp.report.figures import natural_runs, plot_batch_size_figure, plot_momentum_figure
from robusthp.report.flags import DEFAULT_UNTRAINED_MARGIN, untrained
from robusthp.report.invariance import invariance_datasets, invariance_figures, invariance_table
from robusthp.report.names import regime_order, sweeps_momentum
from robusthp.report.optimizers import optimizer_figure_names, optimizer_figures, optimizer_table
from robusthp.report.spectrum import spectrum_figures
from robusthp.report.stats import summarize, trend_table
from robusthp.report.table import collect, csv_columns
from robusthp.report.xaxis import NoNoiseScale, get_x_axis, noise_scale

log = logging.getLogger(__name__)


def figure_names(df: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    """(dataset, model, regime or None) of every batch-size figure :func:`write_report` draws
    (of the natural runs where a (dataset, model) mixes them with adversarial training)."""
    out = []
    placed = df.dropna(subset=["dataset", "model", "regime", "momentum", "batch_size"])
    for (dataset, model), runs in placed.groupby(["dataset", "model"], sort=True):
        runs, _ = natural_runs(runs)
        if runs.empty:  # adversarial training of several kinds and no natural run
            continue
        out.append((dataset, model, None))
        out += [(dataset, model, r) for r in regime_order(runs["regime"]) if sweeps_momentum(r)]
    return out


def curve_figure_names(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) of every robustness-curve figure :func:`write_report` draws."""
    with_curve = df[has_curves(df) & ~untrained(df)]
    with_curve = with_curve.dropna(subset=["dataset", "model", "regime", "momentum",
                                           "batch_size"])
    return sorted(set(zip(with_curve["dataset"], with_curve["model"], strict=True)))


def write_report(dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                 momenta: Sequence[float] | None = None, spread: str = "minmax",
                 df: pd.DataFrame | None = None, x: str = "batch_size",
                 untrained_margin: float = DEFAULT_UNTRAINED_MARGIN) -> dict[str, Path]:
    """Collect ``dirs`` and write the tables and the figures to ``out_dir``.

    ``results.csv`` (one row per run, :func:`~robusthp.report.table.csv_columns`),
    ``summary.csv`` (:func:`~robusthp.report.summarize`) and ``trends.csv``
    (:func:`~robusthp.report.trend_table`); both leave untrained runs and unconverged
    eigenvalues out. ``optimizers.csv``
    (:func:`~robusthp.report.optimizers.optimizer_table`) when the optimizer study compares
    some (dataset, model); ``invariance.csv``
    (:func:`~robusthp.report.invariance.invariance_table`) when some dataset is in the
    invariance study; ``adv_training.csv``
    (:func:`~robusthp.report.adv_training.adv_training_table`) when some (dataset, model) is
    in the adversarial-training study. ``momenta`` filters the lines of the per-(dataset,
    model) figures (not the Section 4 momentum figures); ``x`` is ``"batch_size"`` or ``"noise_scale"``;
    ``untrained_margin`` is used when ``df`` is not given. Returns ``{file name: path}`` of
    everything written. Raises ``FileNotFoundError`` for a missing dir and ``ValueError``
    when no results are found or a figure has no run with a noise scale.
    """
    dirs = list(dirs)
    get_x_axis(x)  # a bad x fails before anything is written
    df = collect(dirs, untrained_margin=untrained_margin) if df is None else df
    if df.empty:
        raise ValueError(f"no results.json found under {', '.join(map(str, dirs))}")
    if x == "noise_scale" and noise_scale(df).isna().all():
        raise NoNoiseScale("no run has a noise scale lr / (B (1 - m)): lr is missing or "
                           "momentum is 1 in every run (use x='batch_size')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: out_dir / name for name in ("results.csv", "summary.csv", "trends.csv")}
    df.to_csv(written["results.csv"], columns=csv_columns(df), index=False)
    summarize(df).to_csv(written["summary.csv"], index=False)
    trend_table(df).to_csv(written["trends.csv"], index=False)
    if optimizer_figure_names(df):
        written["optimizers.csv"] = out_dir / "optimizers.csv"
        optimizer_table(df).to_csv(written["optimizers.csv"], index=False)
    if invariance_datasets(df):
        written["invariance.csv"] = out_dir / "invariance.csv"
        invariance_table(df).to_csv(written["invariance.csv"], index=False)
    if adv_training_figure_names(df):
        written["adv_training.csv"] = out_dir / "adv_training.csv"
        adv_training_table(df).to_csv(written["adv_training.csv"], index=False)
    for name, fig in _figures(df, momenta, spread, x):  # one at a time: saved, then freed
        fig.savefig(out_dir / name)
        written[name] = out_dir / name
        log.info("wrote %s", out_dir / name)
    return written


def _figures(df: pd.DataFrame, momenta, spread: str, x: str) -> Iterator[tuple[str, Figure]]:
    suffix = get_x_axis(x).suffix
    for dataset, model, regime in figure_names(df):
        try:
            if regime is None:
                name = f"{dataset}_{model}{suffix}.png"
                fig = plot_batch_size_figure(df, dataset, model, momenta=momenta, spread=spread,
                                             x=x)
            else:
                name = f"{dataset}_{model}_{regime}_momentum{suffix}.png"
                fig = plot_momentum_figure(df, dataset, model, regime, spread=spread, x=x)
        except NoNoiseScale as error:  # others of the sweep have one (checked up front)
            log.warning("%s not drawn: %s", name, error)
            continue
        yield name, fig
    for dataset, model in curve_figure_names(df):
        yield f"{dataset}_{model}_robustness_curves.png", plot_robustness_curves(df, dataset, model)
    yield from spectrum_figures(df, spread, x)
    for dataset, model in optimizer_figure_names(df):
        yield from optimizer_figures(df, dataset, model)
    for dataset in invariance_datasets(df):
        yield from invariance_figures(df, dataset)
    for dataset, model in adv_training_figure_names(df):
        yield from adv_training_figures(df, dataset, model, spread=spread)
