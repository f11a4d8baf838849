"""Points that are drawn but kept out of the lines: untrained runs, unconverged Hessians.

A run that finished ``ok`` but whose clean test accuracy (``test_acc``, else ``clean_acc``)
is below chance + a margin (1 / num_classes + 0.1 by default) did not learn: its attack
accuracies and curvature say nothing about the batch size. It is flagged ``untrained``,
drawn hollow, and left out of every mean, band, trend and slope. A top-eigenvalue estimate
whose iteration did not converge (``hessian_converged`` false) is treated the same way in
the eigenvalue panel only.
"""

from __future__ import annotations

import pandas as pd

from robusthp.report.columns import converged_flag
from robusthp.report.names import num_classes

DEFAULT_UNTRAINED_MARGIN = 0.1  # above chance accuracy, in accuracy units


def untrained_threshold(dataset: str, margin: float = DEFAULT_UNTRAINED_MARGIN) -> float:
    """The clean accuracy below which a run counts as untrained: 1 / num_classes + margin."""
    return 1.0 / num_classes(dataset) + margin


def mark_untrained(df: pd.DataFrame, margin: float = DEFAULT_UNTRAINED_MARGIN) -> pd.DataFrame:
    """``df`` with ``untrained`` (bool) and ``untrained_threshold`` (float) columns.

    Only runs with status ``ok`` and a clean accuracy can be untrained; the others are False
    (a diverged or failed run is out of the lines anyway).
    """
    acc = df["test_acc"].fillna(df["clean_acc"])
    threshold = df["dataset"].map(
        lambda d: untrained_threshold(d, margin) if isinstance(d, str) else float("nan"))
    df = df.copy()
    df["untrained_threshold"] = threshold.astype(float).where(acc.notna())
    df["untrained"] = ((df["status"] == "ok") & acc.notna() & (acc < threshold)).astype(bool)
    return df


def untrained(runs: pd.DataFrame) -> pd.Series:
    """The ``untrained`` flag of each run (all False for a table without the column)."""
    if "untrained" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["untrained"].fillna(False).astype(bool)


def unconverged(runs: pd.DataFrame, metric: str) -> pd.Series:
    """True where ``metric`` is a Hessian estimate flagged not converged (missing flag: False)."""
    flag = converged_flag(metric)
    if flag is None or flag not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs[flag].eq(False).fillna(False).astype(bool)


def left_out(runs: pd.DataFrame, metric: str) -> pd.Series:
    """True where a run's ``metric`` is drawn hollow and kept out of the statistics."""
    return untrained(runs) | unconverged(runs, metric)


def masked(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """A copy of ``runs`` with each metric set to NaN where it is :func:`left_out`."""
    runs = runs.copy()
    for metric in metrics:
        runs[metric] = runs[metric].where(~left_out(runs, metric))
    return runs
