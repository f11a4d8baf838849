"""The note under a figure: the runs it cannot draw as a point (diverged, failed, missing)
and the points it draws but keeps out of the lines (untrained, unconverged, eps* capped).

A mean over fewer seeds looks like any other; the note says which runs are absent and why,
so nothing leaves a figure silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from robusthp.report.flags import unconverged, untrained
from robusthp.report.style import LineStyle

HESSIAN_METRICS = ("hessian_top_eig", "hessian_top_eig@test")


def figure_note(runs: pd.DataFrame, styles: Sequence[LineStyle], batch_sizes: list[int],
                max_items: int = 6, *, without_x: int = 0) -> str:
    """Lines naming what the figure leaves out: first the counts (untrained, unconverged,
    eps* at the search top, ``without_x`` runs with no noise scale), then per line the
    diverged, failed and unreadable runs and the batch sizes with no run."""
    head = left_out_counts(runs)
    if without_x:
        head.append(f"{_runs(without_x)} without a noise scale (lr missing or momentum >= 1) "
                    "left out")
    items = [item for style in styles for item in _line_items(runs, style, batch_sizes)]
    if len(items) > max_items:
        items = items[:max_items] + [f"... and {len(items) - max_items} more (see results.csv)"]
    return "\n".join(head + items)


def left_out_counts(runs: pd.DataFrame) -> list[str]:
    """One line per kind of point drawn hollow or capped, with its count (none: no line)."""
    ok = runs[runs["status"] == "ok"]
    out = []
    is_untrained = untrained(ok)
    if is_untrained.any():
        below = ok.loc[is_untrained, "untrained_threshold"].dropna().unique() \
            if "untrained_threshold" in ok.columns else []
        why = f" (clean acc < {below[0]:.3g})" if len(below) == 1 else ""
        n = int(is_untrained.sum())
        out.append(f"{n} untrained run{'s' if n != 1 else ''}{why} drawn hollow, "
                   "left out of lines")
    trained = ok[~is_untrained]
    for metric in (m for m in HESSIAN_METRICS if m in ok.columns):
        n = int((unconverged(trained, metric) & trained[metric].notna()).sum())
        if n:
            where = " (test loss)" if "@test" in metric else ""
            out.append(f"{n} Hessian estimate{'s' if n > 1 else ''}{where} not converged: "
                       "drawn hollow, left out of the eigenvalue lines")
    if "min_eps_above_max" in ok.columns:
        n = int((trained["min_eps_above_max"] > 0.5).sum())
        if n:
            out.append(f"{_runs(n)}: over half the points not fooled within eps_max; "
                       "median eps* shown as eps_max (a lower bound)")
    return out


def _line_items(runs: pd.DataFrame, style: LineStyle, batch_sizes: list[int]) -> list[str]:
    items = []
    line = style.rows(runs)
    name = style.label.replace("m = ", "m=")
    diverged = line[line["status"] == "diverged"]
    if not diverged.empty:
        where = ", ".join(
            f"bs {int(b)} ({(diverged['batch_size'] == b).sum()} of "
            f"{(line['batch_size'] == b).sum()} runs)"
            for b in sorted(diverged["batch_size"].unique()))
        items.append(f"diverged: {name}: {where}")
    bad = line[~line["status"].isin(["ok", "diverged"])]
    for status, group in bad.groupby("status"):
        where = ", ".join(f"bs {int(b)} (seed {_seed(s)})"
                          for b, s in zip(group["batch_size"], group["seed"], strict=True))
        items.append(f"{status} (not plotted): {name}: {where}")
    absent = [b for b in batch_sizes if b not in set(line["batch_size"].astype(int))]
    if absent:
        items.append(f"missing (no run): {name}: bs {', '.join(map(str, absent))}")
    return items


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def _seed(seed: Any) -> str:
    return "?" if pd.isna(seed) else str(int(seed))
