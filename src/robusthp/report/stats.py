"""Statistics over seeds: what a line of a figure and a row of ``summary.csv`` show.

Only runs with status ``ok`` enter the statistics, and of those not the untrained ones nor,
for a Hessian metric, the unconverged estimates (:mod:`~robusthp.report.flags`); the others
are counted, so a cell with diverged, failed or untrained seeds says so instead of looking
like a smaller sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from robusthp.report.columns import extra_metrics
from robusthp.report.flags import masked, unconverged
from robusthp.report.flags import untrained as untrained_of
from robusthp.report.table import GROUP_KEYS, METRICS

COUNTS = ("n", "n_diverged", "n_failed", "n_untrained", "n_unconverged")
TREND_METRICS = ("test_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metrics summarized over seeds: :data:`~robusthp.report.table.METRICS`, then the
    extra ones ``df`` has (accuracy at each eps and reading, eps*, test-split Hessian)."""
    return [*METRICS, *extra_metrics(df.columns)]


def summarize(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std (ddof 1), min and max of each metric over the seeds of each cell.

    Cells are :data:`~robusthp.report.table.GROUP_KEYS` (everything but the seed). Statistics
    use the runs with status ``ok`` that are not ``untrained``; a Hessian metric also drops
    estimates with ``hessian_converged`` false. ``n`` counts the trained ok runs,
    ``n_diverged`` and ``n_failed`` the others (``n_failed`` includes unreadable runs with a
    known cell), ``n_untrained`` the ok runs left out as untrained and ``n_unconverged`` the
    trained ones whose top eigenvalue did not converge. Columns: the keys, :data:`COUNTS`,
    then ``<metric>_mean``, ``_std``, ``_min``, ``_max`` for ``metrics`` (default
    :func:`metric_columns`).
    """
    metrics = metric_columns(df) if metrics is None else list(metrics)
    keys = list(GROUP_KEYS)
    placed = df.dropna(subset=["dataset", "model", "regime", "batch_size"])
    if placed.empty:
        stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std", "min", "max")]
        return pd.DataFrame(columns=[*keys, *COUNTS, *stats])
    status, untrained = placed["status"], untrained_of(placed)
    ok = status == "ok"
    counts = placed.assign(
        n=(ok & ~untrained).astype(int),
        n_diverged=(status == "diverged").astype(int),
        n_failed=(~status.isin(["ok", "diverged"])).astype(int),
        n_untrained=(ok & untrained).astype(int),
        n_unconverged=(ok & ~untrained & unconverged(placed, "hessian_top_eig")).astype(int),
    ).groupby(keys, dropna=False)[list(COUNTS)].sum()
    values = masked(placed[ok], metrics)
    stats = values.groupby(keys, dropna=False)[metrics].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    out = counts.join(stats, how="left").reset_index()
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def trend_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Least-squares slope of each mean metric per doubling of batch size, per line.

    One row per (dataset, model, regime, momentum); columns ``<metric>_per_doubling`` (NaN
    with fewer than two batch sizes) and ``batch_sizes`` (how many points the slope uses).
    ``metrics`` default: test, FGSM and PGD accuracy, top eigenvalue, then the extra metrics
    ``df`` has. Untrained runs and unconverged eigenvalues are left out (see
    :func:`summarize`). A flat curve (the paper's LR/BS finding) has slopes near 0.
    """
    metrics = [*TREND_METRICS, *extra_metrics(df.columns)] if metrics is None else list(metrics)
    summary = summarize(df, metrics)
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
