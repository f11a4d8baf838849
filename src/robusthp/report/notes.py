"""The note under a figure: the runs it cannot draw as a point (diverged, failed, missing).

A mean over fewer seeds looks like any other; the note says which runs are absent and why,
so nothing leaves a figure silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from robusthp.report.style import LineStyle


def figure_note(runs: pd.DataFrame, styles: Sequence[LineStyle], batch_sizes: list[int],
                max_items: int = 6) -> str:
    """Lines naming diverged, failed and unreadable runs and (line, batch size) with no run."""
    items = []
    for style in styles:
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
    if len(items) > max_items:
        items = items[:max_items] + [f"... and {len(items) - max_items} more (see results.csv)"]
    return "\n".join(items)


def _seed(seed: Any) -> str:
    return "?" if pd.isna(seed) else str(int(seed))
