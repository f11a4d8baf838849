"""robusthp.report draws the optimizer study (issue 14; Ma, Pan, Farahmand 2023): SGD vs
Adam vs RMSProp at one batch size, 3 seeds each, with the perturbation and function metrics
of the callbacks. Synthetic results.json files with known values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from robusthp import catalog, report
from robusthp.report import optimizers
from robusthp.results import write_json_atomic

STUDY = ("sgd_ma2023", "adam", "rmsprop")  # the catalog's order
SEEDS = (0, 1, 2)
BATCH_SIZE = 128
NOISE_VAR = (0.01, 0.05, 0.1)
L2_EPS = (0.5, 0.7, 1.0)
LINF_EPS = (0.05, 0.07, 0.1)
BANDS = 12  # more than 10: band 10 and 11 must sort after 9
CLEAN = {"sgd_ma2023": 0.980, "adam": 0.985, "rmsprop": 0.975}
ROBUST = {"sgd_ma2023": 0.8, "adam": 0.45, "rmsprop": 0.3}  # SGD the most robust
UNTRAINED = ("adam", 3)  # an extra seed that stayed at chance: clean acc 0.11 < 0.2
FAILED = ("rmsprop", 3)  # an extra seed that failed: no metrics
FUNCTION_KEYS = ("lipschitz_upper", "lipschitz_ma2023", "weight_norm", "input_grad_norm_median",
                 "input_grad_norm_p95", "input_grad_norm_mean")
# results.csv after the fixed columns, by hand: accuracy keys by attack then budget
# (FGSM, PGD, Gaussian, PGD-L2, AutoAttack L-inf, bands), the study's clean accuracy, band
# drops by band index, the function measures, the per-run counts, then the flags
EXTRA_COLUMNS = [
    *(f"fgsm_acc@{e:g}" for e in LINF_EPS), *(f"pgd_acc@{e:g}" for e in LINF_EPS),
    *(f"gaussian_acc@{v:g}" for v in NOISE_VAR), *(f"pgd_l2_acc@{e:g}" for e in L2_EPS),
    "autoattack_linf_acc@0.05", *(f"band_acc@{i}" for i in range(BANDS)),
    "perturbation_clean_acc", *(f"band_drop@{i}" for i in range(BANDS)),
    *FUNCTION_KEYS, "perturbation_num_samples", "perturbation_bands", "function_num_samples",
    "hessian_converged", "untrained",
]


def metrics_for(regime: str, seed: int) -> dict:
    """Known values; seeds spread unevenly (seed**2), so the std is not a round number."""
    clean = CLEAN[regime] + 0.002 * seed
    robust = ROBUST[regime] + 0.01 * seed ** 2
    p_clean = clean - 0.002  # clean accuracy on the perturbation's first points
    drops = [(1 - robust) * i / 40 + 0.001 * seed for i in range(BANDS)]
    m = {"test_acc": clean, "clean_acc": clean - 0.004, "val_acc": 0.97,
         "fgsm_acc": robust - LINF_EPS[0], "pgd_acc": robust - 2 * LINF_EPS[0],
         "hessian_top_eig": 5.0 + seed, "hessian_converged": True,
         "perturbation_clean_acc": p_clean, "autoattack_linf_acc@0.05": robust - 0.15,
         "perturbation_num_samples": 500, "perturbation_bands": BANDS,
         "lipschitz_upper": 10 ** (1 + 3 * (1 - robust)) * (1 + 0.1 * seed),
         "lipschitz_ma2023": 10 ** (2 * (1 - robust)) + seed,
         "lipschitz_layers": [["conv1", 2.0 + seed], ["fc", 3.0]],
         "input_grad_norm_median": 1 + 4 * (1 - robust) + 0.1 * seed,
         "input_grad_norm_p95": 3 + 8 * (1 - robust) + 0.3 * seed ** 2,
         "input_grad_norm_mean": 2 + 5 * (1 - robust) + 0.2 * seed,
         "weight_norm": 20 + 30 * (1 - robust) + seed ** 2, "function_num_samples": 500}
    m |= {f"fgsm_acc@{e:g}": robust - e for e in LINF_EPS}
    m |= {f"pgd_acc@{e:g}": robust - 2 * e for e in LINF_EPS}
    m |= {f"gaussian_acc@{v:g}": p_clean - 3 * v * (1 - robust) for v in NOISE_VAR}
    m |= {f"pgd_l2_acc@{e:g}": robust - 0.3 * e for e in L2_EPS}
    m |= {f"band_acc@{i}": p_clean - d for i, d in enumerate(drops)}
    m |= {f"band_drop@{i}": d for i, d in enumerate(drops)}
    return m


def untrained_metrics() -> dict:
    m = {k: (0.11 if isinstance(v, float) and "acc" in k else v)
         for k, v in metrics_for(*UNTRAINED).items()}
    return m | {"test_acc": 0.11, "weight_norm": 999.0, "lipschitz_upper": 1e9}


def write_run(root: Path, regime: str, seed: int, *, metrics: dict | None = None,
              status: str = "ok", batch_size: int = BATCH_SIZE, momentum: float = 0.0) -> Path:
    run_dir = root / f"{regime}_m{momentum}_bs{batch_size}_s{seed}"
    lr = catalog.MA2023_LR.get(regime, {}).get("mnist", 0.01)
    write_json_atomic(run_dir / "results.json", {
        "schema": 1, "status": status, "error": None if status == "ok" else "on purpose",
        "cell": {"dataset": "mnist", "model": "stdcnn", "regime": regime,
                 "batch_size": batch_size, "momentum": momentum, "lr": lr, "seed": seed,
                 "epochs": 4},
        "metrics": (metrics_for(regime, seed) if metrics is None else metrics)
        if status == "ok" else {},
        "wall_time_s": 1.0,
    })
    return run_dir


def make_study(root: Path) -> Path:
    for regime in STUDY:
        for seed in SEEDS:
            write_run(root, regime, seed)
    write_run(root, *UNTRAINED, metrics=untrained_metrics())
    write_run(root, *FAILED, status="failed")
    return root


def paper_metrics(seed: int) -> dict:
    return {"test_acc": 0.97 + 0.001 * seed, "clean_acc": 0.97, "fgsm_acc@0.1": 0.5,
            "pgd_acc@0.1": 0.3, "hessian_top_eig": 10.0}


def make_paper_sweep(root: Path) -> Path:
    """The paper's kind of sweep: two regimes, two batch sizes, no study metric."""
    for regime in ("lr", "lr_bs"):
        for batch_size in (64, 256):
            for seed in (0, 1):
                write_run(root, regime, seed, metrics=paper_metrics(seed), batch_size=batch_size)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("optimizers"))


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


@pytest.fixture(scope="module")
def written(sweep, df, tmp_path_factory) -> dict[str, Path]:
    return report.write_report([sweep], tmp_path_factory.mktemp("report"), df=df)


@pytest.fixture(scope="module")
def table(df) -> pd.DataFrame:
    return optimizers.optimizer_table(df)


def trained(regime: str, key: str) -> np.ndarray:
    return np.array([metrics_for(regime, s)[key] for s in SEEDS])


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.axison and ax.get_title()}


def _artists(ax, gid, label=None):
    return [a for a in ax.get_children()
            if a.get_gid() == gid and (label is None or a.get_label() == label)]


def _note(fig) -> str:
    (note,) = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == "note"]
    return note.get_text()


def _mean_point(ax, regime, gid="mean"):
    (point,) = _artists(ax, gid, catalog.REGIMES[regime].label)
    return point.get_xdata()[0], point.get_ydata()[0]


# ---------------------------------------------------------------------------- tables


def test_results_csv_carries_the_study_scalars_in_order(written):
    csv = pd.read_csv(written["results.csv"])
    assert list(csv.columns) == [*report.COLUMNS, *EXTRA_COLUMNS]
    assert "lipschitz_layers" not in csv.columns  # a list: never a column
    row = csv[(csv["regime"] == "rmsprop") & (csv["seed"] == 2)].iloc[0]
    want = metrics_for("rmsprop", 2)
    for key in ("band_drop@11", "pgd_l2_acc@1", "gaussian_acc@0.05", "lipschitz_upper",
                "input_grad_norm_p95", "perturbation_clean_acc"):
        assert row[key] == pytest.approx(want[key])


def test_table_means_and_stds_are_numpys_over_trained_seeds(table):
    assert list(table["regime"]) == list(STUDY)
    assert list(table["optimizer"]) == ["sgd", "adam", "rmsprop"]
    assert (table["batch_size"] == BATCH_SIZE).all() and (table["dataset"] == "mnist").all()
    counts = table.set_index("regime")[["n", "n_untrained", "n_failed", "n_diverged"]]
    assert counts.to_dict("index") == {
        "sgd_ma2023": {"n": 3, "n_untrained": 0, "n_failed": 0, "n_diverged": 0},
        "adam": {"n": 3, "n_untrained": 1, "n_failed": 0, "n_diverged": 0},  # weight norm 999 out
        "rmsprop": {"n": 3, "n_untrained": 0, "n_failed": 1, "n_diverged": 0},
    }
    keys = ["test_acc", "clean_acc", "perturbation_clean_acc", "gaussian_acc@0.1",
            "pgd_l2_acc@0.7", "fgsm_acc@0.07", "pgd_acc@0.1", "autoattack_linf_acc@0.05",
            "band_acc@11", "band_drop@0", "band_drop@10", *FUNCTION_KEYS]
    for _, row in table.iterrows():
        for key in keys:
            values = trained(row["regime"], key)
            assert row[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-12), key
            assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9), key
    assert "lipschitz_layers_mean" not in table.columns
    assert "fgsm_acc_mean" not in table.columns  # suffixed keys recorded: no plain duplicate


def test_optimizers_csv_is_the_table_and_rebuilds_from_results_csv(written, table):
    back = pd.read_csv(written["optimizers.csv"])
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["weight_norm_mean"], table["weight_norm_mean"])
    again = optimizers.optimizer_table(report.read_table(written["results.csv"]))
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


# ---------------------------------------------------------------------------- which groups


def test_the_three_figures_are_written_for_the_group(written):
    names = {"mnist_stdcnn_optimizers.png", "mnist_stdcnn_bands.png", "mnist_stdcnn_function.png"}
    assert names <= set(written)
    for name in names:
        image = imread(written[name])
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01


def test_a_plain_paper_sweep_writes_what_it_always_did(tmp_path):
    root = make_paper_sweep(tmp_path / "paper")
    runs = report.collect([root])
    assert optimizers.optimizer_figure_names(runs) == []
    assert optimizers.optimizer_table(runs).empty
    written = report.write_report([root], tmp_path / "out", df=runs)
    assert set(written) == {"results.csv", "summary.csv", "trends.csv", "mnist_stdcnn.png",
                            "mnist_stdcnn_lr_momentum.png", "mnist_stdcnn_lr_bs_momentum.png"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(written)
    assert list(pd.read_csv(written["results.csv"]).columns) == [
        *report.COLUMNS, "fgsm_acc@0.1", "pgd_acc@0.1"]


def test_paper_runs_beside_the_study_stay_out_of_it(tmp_path):
    root = make_paper_sweep(make_study(tmp_path / "both"))
    runs = report.collect([root])
    assert optimizers.optimizer_figure_names(runs) == [("mnist", "stdcnn")]
    assert list(optimizers.optimizer_table(runs)["regime"]) == list(STUDY)


@pytest.mark.parametrize(("regimes", "compared"), [
    (("sgd_ma2023",), False),  # one SGD regime: nothing to compare
    (("adam",), True),  # an adaptive regime on its own is still the study
    (("lr", "lr_bs"), True),  # two regimes with the study's metrics
])
def test_which_groups_are_compared(tmp_path, regimes, compared):
    for regime in regimes:
        write_run(tmp_path, regime, 0, metrics=metrics_for("sgd_ma2023", 0))
    runs = report.collect([tmp_path])
    assert optimizers.optimizer_figure_names(runs) == ([("mnist", "stdcnn")] if compared else [])


def test_only_the_figures_with_data_are_drawn(tmp_path):
    for regime in STUDY:  # function measures only: no perturbation, no bands
        write_run(tmp_path, regime, 0, metrics={
            "test_acc": 0.98, **{k: v for k, v in metrics_for(regime, 0).items()
                                 if k in FUNCTION_KEYS}})
    runs = report.collect([tmp_path])
    assert [name for name, _ in optimizers.optimizer_figures(runs, "mnist", "stdcnn")] == [
        "mnist_stdcnn_function.png"]


# ---------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def scatter(df):
    return optimizers.plot_perturbation_figure(df, "mnist", "stdcnn")


def test_perturbation_figure_panels_and_points(scatter):
    panels = _panels(scatter)
    assert list(panels) == [
        *(f"Gaussian noise, var {v:g} in pixels" for v in NOISE_VAR),
        *(f"PGD L2, eps {e:g} in pixels" for e in L2_EPS),
        *(f"FGSM L-inf, eps {e:g} in pixels" for e in LINF_EPS),
        *(f"PGD L-inf, eps {e:g} in pixels" for e in LINF_EPS),
        "AutoAttack L-inf, eps 0.05 in pixels",
    ]
    gauss = panels["Gaussian noise, var 0.05 in pixels"]
    for regime in STUDY:  # x: clean accuracy on the same points as the perturbation
        assert _mean_point(gauss, regime) == pytest.approx(
            (trained(regime, "perturbation_clean_acc").mean(),
             trained(regime, "gaussian_acc@0.05").mean()))
    fgsm = panels["FGSM L-inf, eps 0.07 in pixels"]
    assert _mean_point(fgsm, "adam") == pytest.approx(
        (trained("adam", "clean_acc").mean(), trained("adam", "fgsm_acc@0.07").mean()))
    assert gauss.get_xlabel() == "clean accuracy, same test points"
    assert gauss.get_ylabel() == "accuracy under perturbation"
    for ax in panels.values():
        assert len(_artists(ax, "identity")) == 1
        assert [len(a.get_xdata()) for a in _artists(ax, "seeds")] == [3, 3, 3]  # untrained out
        lo, hi = ax.get_ylim()
        assert lo <= ax.get_xlim()[1] <= hi + 1e-9  # the y = x line reaches into the panel


def test_legend_colours_title_and_note(scatter):
    legend = {t.get_text(): h for t, h in zip(scatter.legends[0].get_texts(),
                                              scatter.legends[0].legend_handles, strict=True)}
    for regime in STUDY:
        spec = catalog.REGIMES[regime]
        assert legend[spec.label].get_color() == spec.colour
    assert "y = x: no accuracy lost" in legend
    assert "n = 3 seeds per point" in scatter.get_suptitle()
    assert "[0,1] pixels" in scatter.get_suptitle()
    note = _note(scatter)
    assert "n = 3 seeds per point" in note
    assert "1 untrained run (clean acc < 0.2) left out" in note
    assert "1 failed run not plotted" in note


def test_band_figure_accuracy_change_per_band(df):
    fig = optimizers.plot_band_figure(df, "mnist", "stdcnn")
    (ax,) = [a for a in fig.axes if a.axison]
    for regime in STUDY:
        (line,) = _artists(ax, "mean", catalog.REGIMES[regime].label)
        assert list(line.get_xdata()) == list(range(BANDS))
        want = [-trained(regime, f"band_drop@{i}").mean() for i in range(BANDS)]
        assert list(line.get_ydata()) == pytest.approx(want)
    assert len(_artists(ax, "spread")) == len(STUDY)
    assert "DCT band" in ax.get_xlabel() and "0 = lowest" in ax.get_xlabel()
    assert ax.get_ylabel() == "accuracy change (band acc - clean acc)"
    assert "1 untrained run" in _note(fig)


def test_band_change_falls_back_to_band_acc_minus_clean(df):
    ok = df[(df["status"] == "ok") & ~df["untrained"]]  # the untrained fake's drops are stale
    runs = ok.drop(columns=[c for c in df.columns if c.startswith("band_drop@")])
    changes, with_drops = optimizers.band_changes(runs), optimizers.band_changes(ok)
    assert list(changes.columns) == list(range(BANDS))
    pd.testing.assert_frame_equal(changes, with_drops, atol=1e-12)


def test_function_figure_panels_log_scale_and_p95(df):
    fig = optimizers.plot_function_figure(df, "mnist", "stdcnn")
    panels = _panels(fig)
    assert list(panels) == [p.title for p in optimizers.FUNCTION_PANELS]
    lip = panels["Lipschitz upper bound (L2, power iteration)"]
    assert lip.get_yscale() == "log" and "(log scale)" in lip.get_ylabel()
    assert panels["Weight norm"].get_yscale() == "linear"
    for i, regime in enumerate(STUDY):
        x, y = _mean_point(lip, regime)
        assert (x, y) == pytest.approx((i, trained(regime, "lipschitz_upper").mean()))
        assert _mean_point(panels["Weight norm"], regime)[1] == pytest.approx(
            trained(regime, "weight_norm").mean())  # the untrained 999 is out
        grads = panels["Input-gradient norm ||grad_x f_y(x)||_2"]
        assert _mean_point(grads, regime, "whisker")[1] == pytest.approx(
            trained(regime, "input_grad_norm_p95").mean())
    labels = [t.get_text() for t in lip.get_xticklabels()]
    assert labels == [catalog.REGIMES[r].label for r in STUDY]
    # SGD has the smallest bound and weight norm in these values
    assert _mean_point(lip, "sgd_ma2023")[1] < _mean_point(lip, "rmsprop")[1]


def test_regime_cells_with_other_batch_sizes_are_separate_points(tmp_path):
    for regime in STUDY:
        write_run(tmp_path, regime, 0)
    write_run(tmp_path, "adam", 0, batch_size=256)
    runs = report.collect([tmp_path])
    points = optimizers.study(runs, "mnist", "stdcnn").points
    assert [p.label for p in points] == ["SGD (Ma et al.), B = 128", "Adam, B = 128",
                                          "Adam, B = 256", "RMSProp, B = 128"]
    assert points[1].marker != points[2].marker and points[1].colour == points[2].colour
    table = optimizers.optimizer_table(runs)
    assert list(table["batch_size"]) == [128, 128, 256, 128] and (table["n"] == 1).all()
    assert table["weight_norm_std"].isna().all()  # one seed: no std
    assert not math.isnan(table["weight_norm_mean"].iloc[0])
