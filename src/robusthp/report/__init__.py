"""The sweep report: every ``results.json`` under some sweep dirs -> one table, a summary, figures.

Reads results only; never trains, and imports neither torch nor Lightning (fast to start)::

    python -m robusthp.report SWEEP_DIR [SWEEP_DIR ...] [--out OUT_DIR] [--momentum 0 ...]

writes ``OUT_DIR/results.csv`` (one row per run, :data:`COLUMNS`), ``OUT_DIR/summary.csv``
(mean / std / min / max and n over seeds per cell, see :func:`summarize`) and the paper's
figures as PNGs:

- ``<dataset>_<model>.png``: test, FGSM and PGD accuracy and the top Hessian eigenvalue vs
  batch size, one line per (regime, momentum) (Figs. 1-6 and 15-22 of the paper);
- ``<dataset>_<model>_<regime>_momentum.png`` for each regime that sweeps momentum in
  :mod:`robusthp.catalog` (``lr``, ``lr_bs``): one line per momentum (Section 4, Figs. 7-14).

Names, labels, colours and the order of regimes come from :mod:`robusthp.catalog`.
One module per job:

- :mod:`~robusthp.report.table`: reading results into the per-run table;
- :mod:`~robusthp.report.stats`: statistics over seeds and trends over batch size;
- :mod:`~robusthp.report.names`: the catalog's labels and colours;
- :mod:`~robusthp.report.style`: how a line looks;
- :mod:`~robusthp.report.figures` and :mod:`~robusthp.report.notes`: the figures;
- :mod:`~robusthp.report.write`: the files; :mod:`~robusthp.report.printing`: the terminal;
- :mod:`~robusthp.report.cli`: the command line.
"""

from robusthp.report.cli import main
from robusthp.report.figures import (
    MIN_ACC_SPAN,
    PANELS,
    SPREADS,
    Panel,
    plot_batch_size_figure,
    plot_momentum_figure,
)
from robusthp.report.names import (
    DATASET_LABELS,
    MODEL_LABELS,
    REGIME_COLOURS,
    REGIME_LABELS,
    REGIME_ORDER,
    cell_title,
    regime_label,
)
from robusthp.report.printing import print_summary
from robusthp.report.stats import summarize, trend_table
from robusthp.report.style import LineStyle
from robusthp.report.table import COLUMNS, GROUP_KEYS, METRICS, UNREADABLE, collect, read_table
from robusthp.report.write import figure_names, write_report

__all__ = [
    "COLUMNS", "DATASET_LABELS", "GROUP_KEYS", "LineStyle", "METRICS", "MIN_ACC_SPAN",
    "MODEL_LABELS", "PANELS", "Panel", "REGIME_COLOURS", "REGIME_LABELS", "REGIME_ORDER",
    "SPREADS", "UNREADABLE", "cell_title", "collect", "figure_names", "main",
    "plot_batch_size_figure", "plot_momentum_figure", "print_summary", "read_table",
    "regime_label", "summarize", "trend_table", "write_report",
]
