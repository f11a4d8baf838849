"""The summary on the terminal: mean ± std per cell, then every run that went wrong and why.

``rich`` is imported on first print, so importing the report stays quick.
"""

from __future__ import annotations

import shutil
from typing import Any

import pandas as pd

from robusthp.report.flags import untrained
from robusthp.report.stats import summarize


def print_summary(df: pd.DataFrame, file: Any = None) -> None:
    """A compact table (mean ± std and n over ok, trained seeds per cell; median eps* when
    recorded) and the runs that went wrong."""
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((160, 24)).columns
    console = Console(file=file, width=max(width, 120))
    table = Table(title="robusthp sweep: mean ± std over ok seeds", show_edge=False,
                  pad_edge=False, header_style="bold")
    metrics = {"test acc": "test_acc", "FGSM acc": "fgsm_acc", "PGD acc": "pgd_acc",
               "top eig": "hessian_top_eig"}
    if "median_min_eps" in df.columns and df["median_min_eps"].notna().any():
        metrics["median eps*"] = "median_min_eps"
    # Θ_train only when the sweep varies it or trains on rotations (else it is 0 everywhere)
    rotated = "rotation" in df.columns and bool((df["rotation"].fillna(0) != 0).any())
    # the adversarial training method only when some run trained adversarially
    adversarial = "adv_train" in df.columns and bool(
        (df["adv_train"].fillna("none") != "none").any())
    cells = ("dataset", "model", "regime", "m", "bs", "lr", *(("rot",) if rotated else ()),
             *(("AT",) if adversarial else ()), "n")
    for col in (*cells, *metrics, "div/fail"):
        table.add_column(col, justify="left" if col in ("dataset", "model", "regime") else "right")
    for _, r in summarize(df, list(metrics.values())).iterrows():
        table.add_row(
            str(r["dataset"]), str(r["model"]), str(r["regime"]), f"{r['momentum']:g}",
            str(r["batch_size"]), f"{r['lr']:.3g}", *((f"{r['rotation']:g}",) if rotated else ()),
            *((_adv_text(r["adv_train"]),) if adversarial else ()), str(r["n"]),
            *(_fmt(r[f"{m}_mean"], r[f"{m}_std"], m) for m in metrics.values()),
            f"{r['n_diverged']}/{r['n_failed']}",
        )
    console.print(table)
    counts = df["status"].value_counts()
    line = f"{len(df)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    n_untrained = int(untrained(df).sum())
    if n_untrained:
        line += (f"; {n_untrained} of the ok ones untrained (clean acc below chance + margin), "
                 "left out of n and the statistics")
    console.print(line)
    for _, r in df[~df["status"].isin(["ok", "diverged"])].iterrows():
        error = "no error recorded" if pd.isna(r["error"]) else r["error"]
        console.print(f"  {r['status']}: {r['run_dir']}: {error}",
                      markup=False, highlight=False)


def _adv_text(adv_train) -> str:
    return "none" if pd.isna(adv_train) else str(adv_train)


def _fmt(mean: float, std: float, metric: str) -> str:
    if pd.isna(mean):
        return "-"
    spec = ".3g" if metric in ("hessian_top_eig", "median_min_eps") or abs(mean) > 1.5 else ".3f"
    return f"{mean:{spec}}" + ("" if pd.isna(std) else f" ± {std:{spec}}")
