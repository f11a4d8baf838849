"""robusthp.report draws the adversarial-training study (natural vs PGD-AT, momentum SGD vs
ENGM as the outer optimizer, Dabouei et al. 2022): StdCNN on MNIST, three methods at two
batch sizes, three seeds each, with the adversarial, eps*, Hessian, gradient-statistics and
robust-validation callbacks' keys. Synthetic results.json files with known values."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from robusthp import catalog, report
from robusthp.report import adv_training
from robusthp.report.printing import print_summary
from robusthp.results import write_json_atomic

METHODS = (("none", "lr"), ("pgd", "lr"), ("pgd", "engm"))  # (adv_train, regime), legend order
MOMENTUM = 0.9
BATCH_SIZES = (64, 256)
SEEDS = (0, 1, 2)
EPOCHS = (0, 2, 4)  # the callbacks measure every other epoch
UNTRAINED = ("pgd", "engm", 256, 3)  # an extra seed that stayed at chance: clean acc 0.11
DIVERGED = ("pgd", "lr", 64, 4)
FIGURES = {"mnist_stdcnn_adv_training.png", "mnist_stdcnn_adv_training_epochs.png"}
GRAD_KEYS = ("grad_norm", "grad_var", "grad_batch_var", "grad_mean_norm", "grad_example_norm",
             "grad_norm_per_epoch", "grad_var_per_epoch", "grad_stats_epochs")


def outer(regime: str) -> str:
    if regime == "lr":
        return "SGD"
    return catalog.REGIMES[regime].label if regime in catalog.REGIMES else regime


def label(adv: str, regime: str, momentum: float = MOMENTUM) -> str:
    return f"{ {'none': 'natural', 'pgd': 'PGD-AT'}[adv]} ({outer(regime)} m={momentum:g})"


def metrics_for(adv: str, regime: str, batch_size: int, seed: int) -> dict:
    """Known values; seeds spread unevenly (seed**2) so the std is not a round number.
    Adversarial training: lower clean accuracy, higher robustness, larger gradient variance."""
    doublings = math.log2(batch_size / 64)
    at = adv != "none"
    clean = 0.98 - 0.01 * doublings - 0.03 * at + 0.001 * seed ** 2
    robust = (0.6 + 0.05 * (regime == "engm") if at else 0.05) - 0.02 * doublings \
        + 0.01 * seed ** 2
    grad_var = (4.0 if at else 1.0) * 2.0 ** -doublings * (1 + 0.1 * seed ** 2)
    grad_norm = (2.0 if at else 1.0) * (1 + 0.05 * seed ** 2) + 0.1 * doublings
    m = {"test_acc": clean, "clean_acc": clean - 0.002, "val_acc": clean,
         "fgsm_acc": robust + 0.05, "pgd_acc": robust - 0.1,  # the first eps, in pixels
         "hessian_top_eig": 20.0 / (1 + 3 * at) + seed + doublings,
         "median_min_eps": 0.05 + 0.2 * at + 0.01 * seed ** 2, "min_eps_space": "pixel",
         "min_eps_max": 0.6,
         "grad_norm": grad_norm, "grad_var": grad_var, "grad_batch_var": grad_var / batch_size,
         "grad_mean_norm": 0.5 * grad_norm, "grad_example_norm": 3 * grad_norm,
         "grad_stats_epochs": list(EPOCHS),
         "grad_var_per_epoch": [grad_var * (1 + 0.2 * e) for e in EPOCHS],
         "grad_norm_per_epoch": [grad_norm * (1 + 0.1 * e) for e in EPOCHS],
         "robust_val_epochs": list(EPOCHS),
         "robust_val_acc_per_epoch": [robust * (0.6 + 0.1 * e) for e in EPOCHS],
         "val_clean_acc_per_epoch": [clean - 0.01 * (4 - e) for e in EPOCHS],
         "robust_val_acc": robust, "robust_val_best_acc": robust + 0.01 * seed,
         "robust_val_best_epoch": 4 - seed}
    for eps in (0.1, 0.3):
        m |= {f"pgd_acc@{eps:g}": robust - eps, f"pgd_acc@{eps:g}norm": robust - 0.5 * eps,
              f"fgsm_acc@{eps:g}": robust + 0.15 - eps,
              f"fgsm_acc@{eps:g}norm": robust + 0.15 - 0.5 * eps}
    return m


def write_run(root: Path, adv: str, regime: str, batch_size: int, seed: int, *,
              momentum: float = MOMENTUM, metrics: dict | None = None, status: str = "ok",
              adv_key: bool = True) -> Path:
    run_dir = root / f"{adv}_{regime}_m{momentum}_bs{batch_size}_s{seed}"
    cell = {"dataset": "mnist", "model": "stdcnn", "regime": regime, "batch_size": batch_size,
            "momentum": momentum, "lr": 0.05 if regime == "engm" else 0.01, "seed": seed,
            "epochs": 5, "rotation": 0.0}
    if adv_key:  # False: a run recorded before cell.adv_train existed
        cell["adv_train"] = adv
    if metrics is None:
        metrics = metrics_for(adv, regime, batch_size, seed)
    write_json_atomic(run_dir / "results.json", {
        "schema": 1, "status": status, "error": None if status == "ok" else "on purpose",
        "cell": cell, "metrics": metrics if status == "ok" else {},
        "config": {"eval": {"adversarial": {"pgd_steps": 40}}}, "wall_time_s": 1.0,
    })
    return run_dir


def untrained_metrics() -> dict:
    m = metrics_for(*UNTRAINED)
    return m | {"test_acc": 0.11, "clean_acc": 0.11, "grad_var": 1e3,
                "robust_val_acc_per_epoch": [0.1, 0.1, 0.1]}


def make_study(root: Path) -> Path:
    for adv, regime in METHODS:
        for batch_size in BATCH_SIZES:
            for seed in SEEDS:
                write_run(root, adv, regime, batch_size, seed)
    write_run(root, *UNTRAINED, metrics=untrained_metrics())
    write_run(root, *DIVERGED, status="diverged")
    return root


def paper_metrics(batch_size: int, seed: int) -> dict:
    return {"test_acc": 0.97 - 0.001 * math.log2(batch_size) + 0.001 * seed,
            "clean_acc": 0.97, "fgsm_acc@0.1": 0.5, "pgd_acc@0.1": 0.3, "hessian_top_eig": 10.0}


def make_paper_sweep(root: Path, momenta=(0.0, 0.5)) -> Path:
    """The paper's kind of sweep: natural training only, two regimes and momenta."""
    for regime in ("lr", "lr_bs"):
        for momentum in momenta:
            for batch_size in BATCH_SIZES:
                for seed in (0, 1):
                    write_run(root, "none", regime, batch_size, seed, momentum=momentum,
                              metrics=paper_metrics(batch_size, seed), adv_key=False)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("adv_training"))


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


@pytest.fixture(scope="module")
def written(sweep, df, tmp_path_factory) -> dict[str, Path]:
    return report.write_report([sweep], tmp_path_factory.mktemp("report"), df=df)


@pytest.fixture(scope="module")
def table(df) -> pd.DataFrame:
    return adv_training.adv_training_table(df)


def trained(adv: str, regime: str, batch_size: int, key: str) -> np.ndarray:
    return np.array([metrics_for(adv, regime, batch_size, s)[key] for s in SEEDS])


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.axison and ax.get_title()}


def _artists(ax, gid, label_=None):
    return [a for a in ax.get_children()
            if a.get_gid() == gid and (label_ is None or a.get_label() == label_)]


def _note(fig) -> str:
    (note,) = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == "note"]
    return note.get_text()


# ---------------------------------------------------------------------------- which runs


def test_methods_labels_order_and_colours(df):
    s = adv_training.study(df, "mnist", "stdcnn")
    assert [line.label for line in s.lines] == [label(a, r) for a, r in METHODS]
    assert [line.adv_train for line in s.lines] == [a for a, _ in METHODS]
    colours = [line.colour for line in s.lines]
    assert len(set(colours)) == len(colours)
    # stable: the same method has the same colour without the others around
    alone = adv_training.Method("pgd", "engm", 0.9)
    assert alone.colour == colours[2] == adv_training.method_colour("pgd", "engm")
    assert adv_training.method_colour("trades", "adam") == \
        adv_training.method_colour("trades", "adam")
    assert adv_training.adv_name("trades") == "TRADES-AT"
    assert adv_training.outer_name("not_a_regime") == "not_a_regime"  # the raw name


def test_study_detection(tmp_path):
    for seed in SEEDS:  # one adversarial method alone: no comparison
        write_run(tmp_path / "one", "pgd", "lr", 64, seed)
    assert adv_training.adv_training_figure_names(report.collect([tmp_path / "one"])) == []
    paper = report.collect([make_paper_sweep(tmp_path / "paper")])  # natural only
    assert adv_training.adv_training_figure_names(paper) == []
    both = report.collect([tmp_path / "one", tmp_path / "paper"])  # two methods, one AT
    assert adv_training.adv_training_figure_names(both) == [("mnist", "stdcnn")]
    s = adv_training.study(both, "mnist", "stdcnn")
    # no natural run at the AT's m = 0.9: every natural method stays in
    assert len(s.lines) == 5 and s.left_out == 0


def test_a_plain_paper_sweep_writes_none_of_it(tmp_path):
    root = make_paper_sweep(tmp_path / "paper")
    runs = report.collect([root])
    assert adv_training.adv_training_table(runs).empty
    assert list(adv_training.adv_training_figures(runs, "mnist", "stdcnn")) == []
    written = report.write_report([root], tmp_path / "out", df=runs)
    assert not any("adv_training" in name for name in written)
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(written)


def test_the_figures_and_the_csv_are_written(written):
    assert FIGURES <= set(written) and "adv_training.csv" in written
    for name in FIGURES:
        image = imread(written[name])
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01


# ---------------------------------------------------------------------------- the table


def test_csv_means_and_stds_are_numpys_over_trained_seeds(table, written):
    cells = [(label(a, r), b) for a, r in METHODS for b in BATCH_SIZES]
    assert list(zip(table["method"], table["batch_size"], strict=True)) == cells
    assert list(table.columns[:3]) == ["dataset", "model", "method"]
    keys = ["test_acc", "clean_acc", "pgd_acc@0.1", "pgd_acc@0.3", "pgd_acc@0.3norm",
            "fgsm_acc@0.3", "fgsm_acc@0.1norm", "median_min_eps", "hessian_top_eig",
            "grad_norm", "grad_var", "grad_batch_var", "grad_mean_norm", "grad_example_norm",
            "robust_val_acc", "robust_val_best_acc", "robust_val_best_epoch"]
    methods = dict(zip((label(a, r) for a, r in METHODS), METHODS, strict=True))
    for _, row in table.iterrows():
        adv, regime = methods[row["method"]]
        assert row["adv_train"] == adv and row["regime"] == regime and row["n"] == 3
        for key in keys:
            values = trained(adv, regime, row["batch_size"], key)
            assert row[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-12), key
            assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9), key
    assert not any(c.startswith(("grad_var_per_epoch", "robust_val_epochs"))
                   for c in table.columns)  # lists are not summarized
    # by hand, one cell: PGD-AT with ENGM at B = 256 (the untrained seed's 1e3 left out)
    row = table[(table["regime"] == "engm") & (table["batch_size"] == 256)].iloc[0]
    grad_var = [4.0 / 4 * (1 + 0.1 * s ** 2) for s in SEEDS]  # 1.0, 1.1, 1.4
    assert row["grad_var_mean"] == pytest.approx(3.5 / 3)
    assert row["grad_var_std"] == pytest.approx(np.std(grad_var, ddof=1))
    assert (row["n_untrained"], row["n_diverged"]) == (1, 0)
    diverged = table[(table["regime"] == "lr") & (table["adv_train"] == "pgd")
                     & (table["batch_size"] == 64)].iloc[0]
    assert diverged["n_diverged"] == 1
    back = pd.read_csv(written["adv_training.csv"])
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["grad_var_mean"], table["grad_var_mean"])


def test_the_table_rebuilds_from_results_csv(written, table):
    """results.csv has no gradient column: they are read from the runs' results.json."""
    again = adv_training.adv_training_table(report.read_table(written["results.csv"]))
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


def test_a_run_missing_the_gradient_metrics_does_not_break_it(tmp_path):
    for adv in ("none", "pgd"):
        for seed in SEEDS:
            m = metrics_for(adv, "lr", 64, seed)
            if (adv, seed) == ("pgd", 2):  # no gradient-statistics callback in this run
                m = {k: v for k, v in m.items() if k not in GRAD_KEYS}
            write_run(tmp_path / "sweep", adv, "lr", 64, seed, metrics=m)
    runs = report.collect([tmp_path / "sweep"])
    table = adv_training.adv_training_table(runs)
    row = table[table["adv_train"] == "pgd"].iloc[0]
    assert row["n"] == 3
    assert row["grad_var_mean"] == pytest.approx(np.mean([metrics_for("pgd", "lr", 64, s)[
        "grad_var"] for s in (0, 1)]))
    assert row["test_acc_mean"] == pytest.approx(trained("pgd", "lr", 64, "test_acc").mean())
    written = report.write_report([tmp_path / "sweep"], tmp_path / "out", df=runs)
    assert FIGURES <= set(written)
    without = {k: v for k, v in metrics_for("pgd", "lr", 64, 0).items() if k not in GRAD_KEYS
               and not k.startswith(("robust_val", "val_clean"))}
    write_run(tmp_path / "bare", "none", "lr", 64, 0, metrics=without)
    write_run(tmp_path / "bare", "pgd", "lr", 64, 0, metrics=without)
    bare = report.collect([tmp_path / "bare"])
    names = [name for name, _ in adv_training.adv_training_figures(bare, "mnist", "stdcnn")]
    assert names == ["mnist_stdcnn_adv_training.png"]  # no list per epoch: no epoch figure
    assert "grad_var_mean" not in adv_training.adv_training_table(bare).columns


# ---------------------------------------------------------------------------- figures


def test_batch_size_figure(df):
    fig = adv_training.plot_adv_training_figure(df, "mnist", "stdcnn", spread="std")
    panels = _panels(fig)
    metrics = {
        "Clean test accuracy": "test_acc",
        "PGD-40 accuracy, eps 0.1 in pixels": "pgd_acc@0.1",
        "PGD-40 accuracy, eps 0.3 in pixels": "pgd_acc@0.3",
        "PGD-40 accuracy, eps 0.1 normalized (x std)": "pgd_acc@0.1norm",
        "PGD-40 accuracy, eps 0.3 normalized (x std)": "pgd_acc@0.3norm",
        "FGSM accuracy, eps 0.1 in pixels": "fgsm_acc@0.1",
        "FGSM accuracy, eps 0.3 in pixels": "fgsm_acc@0.3",
        "FGSM accuracy, eps 0.1 normalized (x std)": "fgsm_acc@0.1norm",
        "FGSM accuracy, eps 0.3 normalized (x std)": "fgsm_acc@0.3norm",
        "Median minimal eps* (pixel)": "median_min_eps",
        "Top Hessian eigenvalue": "hessian_top_eig",
        "Gradient variance (last measured epoch)": "grad_var",
        "Mini-batch gradient norm (last measured epoch)": "grad_norm",
    }
    assert list(panels) == list(metrics)
    for title, ax in panels.items():
        assert ax.get_xscale() == "log"
        for adv, regime in METHODS:
            (line,) = _artists(ax, "mean", label(adv, regime))
            assert list(line.get_xdata()) == list(BATCH_SIZES)
            assert list(line.get_ydata()) == pytest.approx(
                [trained(adv, regime, b, metrics[title]).mean() for b in BATCH_SIZES]), title
        assert len(_artists(ax, "spread")) == len(METHODS)
        assert len(_artists(ax, "untrained")) == 1  # the ENGM seed at chance, hollow
        assert _artists(ax, "untrained")[0].get_markerfacecolor() == "none"
        assert len(_artists(ax, "diverged")) == 1
    assert panels["Gradient variance (last measured epoch)"].get_yscale() == "log"
    # the ENGM paper's premise in these values: AT's gradient variance above NT's
    ax = panels["Gradient variance (last measured epoch)"]
    natural = _artists(ax, "mean", label("none", "lr"))[0].get_ydata()
    pgd = _artists(ax, "mean", label("pgd", "lr"))[0].get_ydata()
    assert (np.asarray(pgd) > np.asarray(natural)).all()
    # the std band: mean +- 1 std (ddof 1) over the three seeds
    band = _artists(panels["Clean test accuracy"], "spread")[0]
    top = band.get_paths()[0].vertices[:, 1].max()
    values = trained("none", "lr", 64, "test_acc")
    assert top == pytest.approx(max(values.mean() + values.std(ddof=1),
                                    trained("none", "lr", 256, "test_acc").mean()
                                    + trained("none", "lr", 256, "test_acc").std(ddof=1)))
    note = _note(fig)
    assert "1 untrained run (clean acc < 0.2) drawn hollow" in note
    assert "diverged" in note
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == [label(a, r) for a, r in METHODS]


def test_epoch_figure_reads_the_lists(df):
    fig = adv_training.plot_adv_training_epochs_figure(df, "mnist", "stdcnn")
    panels = _panels(fig)
    rows = ("robust val accuracy", "gradient variance", "mini-batch gradient norm")
    assert list(panels) == [f"B = {b}: {r}" for r in rows for b in BATCH_SIZES]
    keys = {"robust val accuracy": "robust_val_acc_per_epoch",
            "gradient variance": "grad_var_per_epoch",
            "mini-batch gradient norm": "grad_norm_per_epoch"}
    for b in BATCH_SIZES:
        for row, key in keys.items():
            ax = panels[f"B = {b}: {row}"]
            assert ax.get_xlabel() == "epoch"
            for adv, regime in METHODS:
                (line,) = _artists(ax, "mean", label(adv, regime))
                assert list(line.get_xdata()) == list(EPOCHS)
                seeds = np.array([metrics_for(adv, regime, b, s)[key] for s in SEEDS])
                assert list(line.get_ydata()) == pytest.approx(list(seeds.mean(axis=0)))
        ax = panels[f"B = {b}: robust val accuracy"]
        for adv, regime in METHODS:  # the clean val accuracy dashed on the same panel
            (clean,) = _artists(ax, "clean", label(adv, regime))
            assert clean.get_linestyle() == "--"
            seeds = np.array([metrics_for(adv, regime, b, s)["val_clean_acc_per_epoch"]
                              for s in SEEDS])
            assert list(clean.get_ydata()) == pytest.approx(list(seeds.mean(axis=0)))
    assert panels["B = 64: gradient variance"].get_yscale() == "log"
    hollow = _artists(panels["B = 256: robust val accuracy"], "untrained")
    assert [list(a.get_ydata()) for a in hollow] == [[0.1, 0.1, 0.1], pytest.approx(
        untrained_metrics()["val_clean_acc_per_epoch"])]
    assert not _artists(panels["B = 64: robust val accuracy"], "untrained")


def test_epochs_fall_back_to_the_list_index(tmp_path):
    for adv in ("none", "pgd"):
        m = metrics_for(adv, "lr", 64, 0)
        m = {k: v for k, v in m.items() if k not in ("robust_val_epochs", "grad_stats_epochs")}
        write_run(tmp_path, adv, "lr", 64, 0, metrics=m)
    fig = adv_training.plot_adv_training_epochs_figure(report.collect([tmp_path]), "mnist",
                                                       "stdcnn")
    (line,) = _artists(_panels(fig)["B = 64: gradient variance"], "mean", label("pgd", "lr"))
    assert list(line.get_xdata()) == [0, 1, 2]


# ---------------------------------------------------------------------------- the paper's


def test_paper_figures_keep_only_natural_runs(tmp_path):
    root = make_study(tmp_path / "both")
    make_paper_sweep(root / "paper", momenta=(0.0, MOMENTUM))
    runs = report.collect([root])
    fig = report.plot_batch_size_figure(runs, "mnist", "stdcnn")
    ax = _panels(fig)["Clean test accuracy"]
    lines = {a.get_label(): a for a in _artists(ax, "mean")}
    assert sorted(lines) == sorted(f"{r}, m = {m:g}" for r in ("fixed LR", "fixed LR/BS")
                                   for m in (0.0, MOMENTUM))
    # the fixed-LR m = 0.9 line: the study's natural runs and the paper sweep's, not the PGD-AT
    want = [np.mean([metrics_for("none", "lr", b, s)["test_acc"] for s in SEEDS]
                    + [paper_metrics(b, s)["test_acc"] for s in (0, 1)]) for b in BATCH_SIZES]
    assert list(lines["fixed LR, m = 0.9"].get_ydata()) == pytest.approx(want)
    n_adv = len(SEEDS) * len(BATCH_SIZES) * 2 + 2  # the two PGD-AT methods, untrained, diverged
    assert f"{n_adv} adversarially trained runs left out (the adversarial-training figures)" \
        in _note(fig)
    momentum = report.plot_momentum_figure(runs, "mnist", "stdcnn", "lr")
    assert f"{n_adv} adversarially trained runs" in _note(momentum)
    names = report.figure_names(runs)
    assert ("mnist", "stdcnn", "engm") not in names  # ENGM has no natural run
    # the study: the natural runs at the AT's (regime, momentum) only
    s = adv_training.study(runs, "mnist", "stdcnn")
    assert [line.label for line in s.lines] == [label(a, r) for a, r in METHODS]
    assert s.left_out == 2 * 2 * 2 * 2 - 2 * 2  # the paper sweep but fixed LR at m = 0.9
    assert "natural runs of other (regime, momentum) left out" in _note(
        adv_training.plot_adv_training_figure(runs, "mnist", "stdcnn"))


def test_runs_without_adv_train_are_natural(tmp_path):
    make_paper_sweep(tmp_path)  # cell.adv_train absent
    runs = report.collect([tmp_path])
    assert set(runs["adv_train"]) == {"none"}
    assert report.natural_runs(runs)[1] == 0


def test_the_printed_summary_shows_the_method(df, tmp_path):
    out = io.StringIO()
    print_summary(df, file=out)
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "dataset" in line)
    assert "AT" in header.split()
    rows = [line for line in text.splitlines() if line.startswith("mnist")]
    assert len(rows) == len(set(rows)) == len(METHODS) * len(BATCH_SIZES)
    assert sum("pgd" in line.split() for line in rows) == 4
    plain = io.StringIO()
    print_summary(report.collect([make_paper_sweep(tmp_path)]), file=plain)
    assert "AT" not in plain.getvalue().split()
