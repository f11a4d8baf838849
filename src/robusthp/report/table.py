"""The per-run table: one row per ``results.json``, typed and sorted, written and read back.

Everything else in the report starts from this table. A results file that cannot be parsed
is a row with status ``"unreadable"``, never skipped, so nothing is dropped silently. A
run's ``evaluations/*.json`` add the keys its results.json lacks
(:mod:`~robusthp.report.evaluations`); the keys a sweep adds (accuracy at each eps and
reading, eps*, flags) follow the fixed columns (:mod:`~robusthp.report.columns`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from robusthp.report.columns import FLAGS, HESSIAN_FLAGS, MIN_EPS_SETTINGS, extra_columns, is_extra
from robusthp.report.evaluations import merged_metrics, overridden
from robusthp.report.flags import DEFAULT_UNTRAINED_MARGIN, mark_untrained
from robusthp.results import CELL_DEFAULTS, CELL_KEYS, find_results, read_results

METRICS = ("test_acc", "clean_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")
COLUMNS = (*CELL_KEYS, *METRICS, "status", "wall_time_s", "run_dir")
"""The fixed columns of ``results.csv``, in order; :func:`csv_columns` adds the sweep's own."""

UNREADABLE = "unreadable"  # status given to a results.json that cannot be parsed
GROUP_KEYS = ("dataset", "model", "regime", "momentum", "batch_size", "lr", "epochs", "rotation",
              "adv_train")
"""A cell of the sweep: every setting except the seed."""
_INT_COLUMNS = ("batch_size", "seed", "epochs")
_FLOAT_COLUMNS = ("momentum", "lr", "rotation", *METRICS, "wall_time_s", "pgd_steps", "pgd_restarts")


def collect(dirs: Iterable[str | os.PathLike], *,
            untrained_margin: float = DEFAULT_UNTRAINED_MARGIN) -> pd.DataFrame:
    """One row per ``results.json`` found under ``dirs``.

    Columns: :data:`COLUMNS`, the extra keys any run has (:func:`csv_columns`), then
    ``error``, ``pgd_steps`` (from the run's config), ``min_eps_curve`` and
    ``hessian_density`` (dicts, when recorded), ``untrained`` and ``untrained_threshold`` (see
    :func:`~robusthp.report.flags.mark_untrained`, with ``untrained_margin``). Raises
    ``FileNotFoundError`` naming the first dir that does not exist. A file that cannot be
    parsed becomes a row with status ``"unreadable"``; it is never skipped. Rows are sorted
    by cell, then seed.
    """
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.exists():
            raise FileNotFoundError(f"sweep dir not found: {d}")
    rows = [_row(path) for path in find_results(*dirs)]
    extras = extra_columns({k for row in rows for k in row})
    columns = [*COLUMNS, *extras, "error", "pgd_steps", "pgd_restarts", "min_eps_curve",
               "hessian_density"]
    return _typed(pd.DataFrame(rows, columns=columns), untrained_margin)


def _row(path: Path) -> dict[str, Any]:
    data = read_results(path)
    row: dict[str, Any] = {"run_dir": str(path.parent)}
    if data is None:
        return row | {"status": UNREADABLE, "error": f"cannot parse {path}"}
    cell = data.get("cell") or {}
    metrics, used = merged_metrics(path.parent, data.get("metrics") or {})
    row |= {k: cell.get(k, CELL_DEFAULTS.get(k)) for k in CELL_KEYS}
    row |= {m: metrics.get(m) for m in METRICS}
    row |= {k: v for k, v in metrics.items() if is_extra(k)}
    row |= {"status": data.get("status"), "wall_time_s": data.get("wall_time_s"),
            "error": data.get("error"), "min_eps_curve": metrics.get("min_eps_curve"),
            "hessian_density": metrics.get("hessian_density"),
            "pgd_steps": _pgd_setting(data, used, "pgd_steps"),
            "pgd_restarts": _pgd_setting(data, used, "pgd_restarts", default=1)}
    return row


def _pgd_setting(data: dict, used: list[dict], key: str, default: int | None = None) -> int | None:
    """PGD's ``key`` (steps, restarts) in the run's config (``default`` for a run recorded
    before the key existed); None when unknown or a re-evaluation changed it."""
    config = data.get("config") or {}
    adversarial = (config.get("eval") or {}).get("adversarial") or {}
    value = adversarial.get(key, default if adversarial else None)
    if any(v != str(value) for v in overridden(used, f"eval.adversarial.{key}")):
        return None
    return value


def csv_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``results.csv``: :data:`COLUMNS`, then the extra ones with a value
    (accuracy keys, eps*, test-split Hessian, ``hessian_converged``), then ``untrained``
    when some run is untrained."""
    extras = [c for c in extra_columns(df.columns) if c != "untrained" and df[c].notna().any()]
    flag = ["untrained"] if "untrained" in df.columns and df["untrained"].any() else []
    return [*COLUMNS, *extras, *flag]


def _typed(df: pd.DataFrame, untrained_margin: float) -> pd.DataFrame:
    # every conversion built first and replaced at once: a sweep's hundreds of metric
    # columns set one by one fragment the frame (pandas' PerformanceWarning)
    converted = {col: pd.to_numeric(df[col], errors="coerce").astype("Int64") for col in _INT_COLUMNS}
    numeric = [*_FLOAT_COLUMNS, *(c for c in extra_columns(df.columns)
                                  if c not in FLAGS and c not in MIN_EPS_SETTINGS), "min_eps_max"]
    converted |= {col: pd.to_numeric(df[col], errors="coerce").astype(float)
                  for col in numeric if col in df.columns}
    df = df.copy()
    df[list(converted)] = pd.DataFrame(converted, index=df.index)
    for col in HESSIAN_FLAGS:  # hessian_converged is always a column (missing: unknown)
        if col in df.columns or col == "hessian_converged":
            df[col] = _boolean(df[col] if col in df.columns else pd.Series(pd.NA, index=df.index))
    df["status"] = df["status"].fillna(UNREADABLE)
    keys = ["dataset", "model", "regime", "momentum", "batch_size", "seed", "run_dir"]
    df = df.sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)
    return mark_untrained(df.drop(columns=["untrained"], errors="ignore"), untrained_margin)


def _boolean(values: pd.Series) -> pd.Series:
    """True / False / missing from JSON booleans or their CSV text."""
    words = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    return values.map(lambda v: v if isinstance(v, bool) or pd.isna(v)
                      else words.get(str(v).strip().lower(), pd.NA)).astype("boolean")


def read_table(path: str | os.PathLike, *,
               untrained_margin: float = DEFAULT_UNTRAINED_MARGIN) -> pd.DataFrame:
    """Read a ``results.csv`` written by :func:`~robusthp.report.write_report` back, same dtypes.

    ``untrained`` is recomputed from the accuracies with ``untrained_margin``;
    ``min_eps_curve`` and ``hessian_density`` are not in the CSV (their figures are drawn
    from :func:`collect`).
    """
    df = pd.read_csv(path, dtype={"dataset": str, "model": str, "regime": str, "status": str,
                                  "run_dir": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a robusthp results table: missing columns {missing}")
    for col in ("error", "pgd_steps", "min_eps_curve", "hessian_density"):
        if col not in df.columns:
            df[col] = None
    return _typed(df, untrained_margin)
