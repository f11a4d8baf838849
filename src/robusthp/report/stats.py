"""Statistics over seeds: what a line of a figure and a row of ``summary.csv`` show.

Only runs with status ``ok`` enter the statistics; the others are counted, so a cell with
diverged or failed seeds says so instead of looking like a smaller sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from robusthp.report.table import GROUP_KEYS, METRICS


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1), min and max of each metric over the seeds of each cell.

    Cells are :data:`~robusthp.report.table.GROUP_KEYS` (everything but the seed). Statistics
    use the runs with status ``ok`` only; ``n`` counts them, ``n_diverged`` and ``n_failed``
    count the others (``n_failed`` includes unreadable runs with a known cell). Columns: the
    keys, ``n``, ``n_diverged``, ``n_failed``, then ``<metric>_mean``, ``_std``, ``_min``,
    ``_max``.
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
