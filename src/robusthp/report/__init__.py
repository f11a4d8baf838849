"""The sweep report: every ``results.json`` under some sweep dirs -> tables and figures.

Reads results only; never trains, and imports neither torch nor Lightning (fast to start)::

    python -m robusthp.report SWEEP_DIR [SWEEP_DIR ...] [--out OUT_DIR] [--momentum 0 ...]
        [--x batch_size|noise_scale] [--untrained-margin 0.1] [--spread minmax|std]

Each run's ``evaluations/*.json`` (re-evaluations by ``python -m robusthp.evaluate``) add
the metrics its ``results.json`` lacks (the original's keys win; newest file first). It
writes to ``OUT_DIR``:

- ``results.csv``: one row per run; the fixed :data:`COLUMNS`, then a column for every
  accuracy key any run has (``fgsm_acc@0.3``, ``pgd_acc@0.3norm``: eps 0.3 in pixels /
  normalized, ordered by attack, reading, eps), the eps* results (``median_min_eps``,
  ``min_eps_auc``, ...), the optimizer study's scalars (``gaussian_acc@<var>``,
  ``pgd_l2_acc@<eps>``, ``band_acc@<i>`` and ``band_drop@<i>`` by band, the Lipschitz
  bounds, weight and input-gradient norms; never the list ``lipschitz_layers``),
  ``hessian_converged`` when recorded and ``untrained`` when a run is (clean accuracy <
  1/num_classes + margin); see :func:`csv_columns`;
- ``summary.csv`` (mean / std / min / max and counts over seeds per cell, :func:`summarize`)
  and ``trends.csv`` (slope per doubling of batch size, :func:`trend_table`), both for every
  metric and both without untrained runs and unconverged eigenvalues;
- ``<dataset>_<model>.png``: clean accuracy, FGSM and PGD accuracy at each (eps, reading),
  the top Hessian eigenvalue and the median eps* vs batch size, one line per (regime,
  momentum) (Figs. 1-6 and 15-22 of the paper);
- ``<dataset>_<model>_<regime>_momentum.png`` for each regime that sweeps momentum in
  :mod:`robusthp.catalog` (``lr``, ``lr_bs``): one line per momentum (Section 4, Figs. 7-14);
- with ``--x noise_scale`` the same figures against the SGD noise scale lr / (B (1 - m))
  (Jastrzebski et al. 2017; Smith & Le 2018), named ``..._noise_scale.png``;
- ``<dataset>_<model>_robustness_curves.png`` when runs recorded ``min_eps_curve``: accuracy
  vs eps, one panel per line of the sweep, one line per batch size;
- for each (dataset, model) the optimizer study compares (Ma, Pan, Farahmand 2023: SGD vs
  Adam vs RMSProp; cells whose runs recorded a perturbation or function metric, of two or
  more regimes or an adaptive one): ``<dataset>_<model>_optimizers.png`` (accuracy under
  each Gaussian noise, L2, L-inf and AutoAttack budget vs clean accuracy on the same test
  points, one point per optimizer, y = x dashed), ``<dataset>_<model>_bands.png`` (accuracy
  change per DCT band, low to high frequency), ``<dataset>_<model>_function.png`` (Lipschitz
  bounds, weight norm, input-gradient norm), and ``optimizers.csv`` (n, mean and std over
  seeds per optimizer cell); none of these for a sweep without the study's metrics;
- for each dataset in the invariance study (Kamath, Deshpande, Subrahmanyam: rotation
  invariance vs robustness, SVD-Universal; runs that recorded ``rot_acc@<theta>`` or
  ``universal_*`` keys, one line per training rotation Θ_train = ``cell.rotation``):
  ``<dataset>_invariance.png`` (accuracy on test images rotated in [-θ, θ] vs θ, one panel
  per model; fixed-angle accuracy in a second row), ``<dataset>_invariance_robustness.png``
  (clean accuracy, invariance, PGD / FGSM accuracy and eps* vs Θ_train, one line per model),
  ``<dataset>_universal.png`` (SVD-Universal flip and error rate vs L2 norm per model and
  attack; at a middle norm, σ₁²/‖A‖_F² and |cos| with the invariant direction vs Θ_train)
  and ``invariance.csv`` (n, mean and std per cell);
- for each (dataset, model) in the adversarial-training study (natural vs PGD / FGSM
  adversarial training, momentum SGD vs ENGM as the outer optimizer, Dabouei et al. 2022;
  runs of two or more methods (``cell.adv_train``, regime, momentum), one adversarial):
  ``<dataset>_<model>_adv_training.png`` (clean, PGD and FGSM accuracy per eps and reading,
  eps*, top Hessian eigenvalue, gradient variance and norm vs batch size, one line per
  method), ``<dataset>_<model>_adv_training_epochs.png`` (robust and clean validation
  accuracy, gradient variance and norm per epoch, a panel per batch size) and
  ``adv_training.csv`` (n, mean and std per cell); the paper figures of such a (dataset,
  model) draw its natural runs only.

Untrained runs and unconverged eigenvalues are hollow markers, out of every line and
statistic, and counted in the figure's note. Names, labels, colours and the order of
regimes come from :mod:`robusthp.catalog`. One module per job:

- :mod:`~robusthp.report.table`: reading results into the per-run table;
  :mod:`~robusthp.report.evaluations`: merging re-evaluations;
  :mod:`~robusthp.report.columns`: the keys a sweep adds and their order;
  :mod:`~robusthp.report.flags`: untrained runs and unconverged estimates;
- :mod:`~robusthp.report.stats`: statistics over seeds and trends over batch size;
- :mod:`~robusthp.report.names`: the catalog's labels and colours;
- :mod:`~robusthp.report.style`: how a line looks;
- :mod:`~robusthp.report.figures` (with :mod:`~robusthp.report.panels`,
  :mod:`~robusthp.report.xaxis`, :mod:`~robusthp.report.marks`,
  :mod:`~robusthp.report.layout` and :mod:`~robusthp.report.notes`): the batch-size figures;
  :mod:`~robusthp.report.curves`: the robustness curves;
  :mod:`~robusthp.report.optimizers`: the optimizer study's figures and table;
  :mod:`~robusthp.report.invariance`: the invariance study's;
  :mod:`~robusthp.report.adv_training`: the adversarial-training study's;
- :mod:`~robusthp.report.write`: the files; :mod:`~robusthp.report.printing`: the terminal;
- :mod:`~robusthp.report.cli`: the command line.
"""

from robusthp.report.adv_training import (
    adv_training_figure_names,
    adv_training_figures,
    adv_training_table,
)
from robusthp.report.cli import main
from robusthp.report.columns import AccKey, acc_keys, parse_acc_key
from robusthp.report.curves import plot_robustness_curves
from robusthp.report.evaluations import EVALUATIONS_DIR
from robusthp.report.figures import (
    MIN_ACC_SPAN,
    PANELS,
    SPREADS,
    Panel,
    natural_runs,
    plot_batch_size_figure,
    plot_momentum_figure,
)
from robusthp.report.flags import DEFAULT_UNTRAINED_MARGIN, mark_untrained, untrained_threshold
from robusthp.report.invariance import invariance_datasets, invariance_figures, invariance_table
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
from robusthp.report.stats import metric_columns, summarize, trend_table
from robusthp.report.style import LineStyle
from robusthp.report.table import (
    COLUMNS,
    GROUP_KEYS,
    METRICS,
    UNREADABLE,
    collect,
    csv_columns,
    read_table,
)
from robusthp.report.write import curve_figure_names, figure_names, write_report
from robusthp.report.xaxis import X_AXES, noise_scale

__all__ = [
    "COLUMNS", "DATASET_LABELS", "DEFAULT_UNTRAINED_MARGIN", "EVALUATIONS_DIR", "GROUP_KEYS",
    "AccKey", "LineStyle", "METRICS", "MIN_ACC_SPAN", "MODEL_LABELS", "PANELS", "Panel",
    "REGIME_COLOURS", "REGIME_LABELS", "REGIME_ORDER", "SPREADS", "UNREADABLE", "X_AXES",
    "acc_keys", "adv_training_figure_names", "adv_training_figures", "adv_training_table",
    "cell_title", "collect", "csv_columns", "curve_figure_names", "figure_names",
    "invariance_datasets", "invariance_figures", "invariance_table", "main", "mark_untrained",
    "metric_columns", "natural_runs", "noise_scale", "parse_acc_key",
    "plot_batch_size_figure", "plot_momentum_figure", "plot_robustness_curves",
    "print_summary", "read_table", "regime_label", "summarize", "trend_table",
    "untrained_threshold", "write_report",
]
