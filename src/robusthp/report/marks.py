"""Points drawn beside the lines: diverged runs (``x`` at the bottom) and hollow markers
for runs left out of the lines (untrained, unconverged Hessian; :mod:`~robusthp.report.flags`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from robusthp.report.flags import unconverged, untrained
from robusthp.report.style import LineStyle


def mark_diverged(ax, diverged: pd.DataFrame, styles: Sequence[LineStyle]) -> None:
    """An ``x`` per (line, x value) with a diverged run, stacked at the panel's bottom
    (artists with gid ``"diverged"``); ``diverged`` needs an ``x`` column."""
    k = 0
    for style in styles:
        rows = style.rows(diverged)
        if rows.empty:
            continue
        x = sorted(rows["x"].astype(float).unique())
        y = [0.05 + 0.06 * k] * len(x)
        ax.plot(x, y, transform=ax.get_xaxis_transform(), linestyle="none", marker="x",
                markersize=8, markeredgewidth=2.2, color=style.colour, gid="diverged",
                clip_on=False)
        k += 1


def left_out_runs(runs: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """The ok runs with a value of ``metric`` drawn hollow, by reason (``"untrained"``,
    ``"unconverged"``: also the artists' gids, in drawing order)."""
    ok = runs[(runs["status"] == "ok") & runs[metric].notna()]
    is_untrained = untrained(ok)
    return {"untrained": ok[is_untrained],
            "unconverged": ok[~is_untrained & unconverged(ok, metric)]}


def mark_left_out(ax, runs: pd.DataFrame, styles: Sequence[LineStyle], metric: str) -> int:
    """Hollow markers, in the line's colour and marker, at each left-out run's value.

    One artist per (line, reason), gid ``"untrained"`` or ``"unconverged"``; ``runs`` needs
    an ``x`` column. Returns the number of points drawn.
    """
    drawn = 0
    for gid, rows in left_out_runs(runs, metric).items():
        for style in styles:
            line = style.rows(rows)
            if line.empty:
                continue
            ax.plot(line["x"].astype(float).to_numpy(), line[metric].to_numpy(dtype=float),
                    linestyle="none", marker=style.marker, markersize=6, markeredgewidth=1.4,
                    markerfacecolor="none", markeredgecolor=style.colour, gid=gid)
            drawn += len(line)
    return drawn
