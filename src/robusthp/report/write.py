"""The report on disk: ``results.csv``, ``summary.csv`` and one PNG per figure, in one dir.

Which figures there are follows the table and the catalog: one per (dataset, model), plus
a Section 4 momentum figure per regime the catalog says sweeps momentum.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from robusthp.report.figures import plot_batch_size_figure, plot_momentum_figure
from robusthp.report.names import regime_order, sweeps_momentum
from robusthp.report.stats import summarize
from robusthp.report.table import COLUMNS, collect

log = logging.getLogger(__name__)


def figure_names(df: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    """(dataset, model, regime or None) of every figure :func:`write_report` draws."""
    out = []
    placed = df.dropna(subset=["dataset", "model", "regime", "momentum", "batch_size"])
    for (dataset, model), runs in placed.groupby(["dataset", "model"], sort=True):
        out.append((dataset, model, None))
        out += [(dataset, model, r) for r in regime_order(runs["regime"]) if sweeps_momentum(r)]
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
