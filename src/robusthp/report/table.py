"""The per-run table: one row per ``results.json``, typed and sorted, written and read back.

Everything else in the report starts from this table. A results file that cannot be parsed
is a row with status ``"unreadable"``, never skipped, so nothing is dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from robusthp.results import CELL_KEYS, find_results, read_results

METRICS = ("test_acc", "clean_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")
COLUMNS = (*CELL_KEYS, *METRICS, "status", "wall_time_s", "run_dir")
"""Columns of ``results.csv``, in order. Missing metrics are empty cells."""

UNREADABLE = "unreadable"  # status given to a results.json that cannot be parsed
GROUP_KEYS = ("dataset", "model", "regime", "momentum", "batch_size", "lr", "epochs")
"""A cell of the sweep: every setting except the seed."""
_INT_COLUMNS = ("batch_size", "seed", "epochs")
_FLOAT_COLUMNS = ("momentum", "lr", *METRICS, "wall_time_s")


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
    """Read a ``results.csv`` written by :func:`~robusthp.report.write_report` back, same dtypes."""
    df = pd.read_csv(path, dtype={"dataset": str, "model": str, "regime": str, "status": str,
                                  "run_dir": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a robusthp results table: missing columns {missing}")
    if "error" not in df.columns:
        df["error"] = None
    return _typed(df)
