"""The grid of a figure: panels in rows, a note under them; on an Agg canvas, no pyplot.

Figures are plain :class:`matplotlib.figure.Figure` objects with their own Agg canvas (no
pyplot, no global backend switch), so they save headless and also display in a notebook.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure_grid(n_panels: int, note: str, *, max_cols: int = 2,
                panel_size: tuple[float, float] = (4.3, 3.1),
                legend_width: float = 3.0) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes (``max_cols`` per row, three when there are more
    than eight panels) and ``note`` as a text artist with gid ``"note"`` under them."""
    ncols = min(max_cols if n_panels <= 8 else max(max_cols, 3), n_panels)
    nrows = math.ceil(n_panels / ncols)
    note_lines = note.count("\n") + 1 if note else 0
    width, height = panel_size
    fig = Figure(figsize=(width * ncols + legend_width, height * nrows + 0.2 * note_lines + 0.6),
                 layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    ratios = [1.0] * nrows + ([0.2 * note_lines / height] if note else [])
    grid = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(n_panels)]
    if note:
        note_ax = fig.add_subplot(grid[nrows, :])
        note_ax.set_axis_off()
        note_ax.text(0.0, 1.0, note, va="top", ha="left", fontsize=8, family="monospace",
                     transform=note_ax.transAxes, gid="note")
    return fig, axes
