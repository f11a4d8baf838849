"""robusthp.report reads everything issue 13's results.json files hold (/tmp/notes contract):
accuracy at every eps and reading, eps*, robustness curves, re-evaluation files, untrained
runs and unconverged Hessians, and the noise-scale x-axis. Synthetic sweeps, known values."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pandas as pd
import pytest

from robusthp import catalog, report
from robusthp.results import write_json_atomic

# (regime, momentum) lines of the sweep; lr as the catalog's regimes set it
LINES = (("lr", 0.0), ("lr", 0.9), ("lr_bs", 0.0), ("benchmark", 0.9))
BATCH_SIZES = (64, 256)
SEEDS = (0, 1)
EPS_MAX = 0.6  # top of the eps* search, pixels
UNTRAINED = ("lr", 0.0, 256, 2)  # an extra seed that stayed at chance (clean acc 0.11 < 0.2)
UNTRAINED_ACC = 0.11
UNCONVERGED = ("lr_bs", 0.0, 64, 1)  # its top-eigenvalue iteration did not converge
UNCONVERGED_EIG = 1000.0
ABOVE_MAX = ("benchmark", 0.9, 256, 0)  # most points not fooled within eps_max
# results.csv columns after the fixed ones, written out by hand: accuracy keys by (attack,
# reading, eps), then eps*, then the flags
EXTRA_COLUMNS = [
    "fgsm_acc@0.1", "fgsm_acc@0.3", "fgsm_acc@0.3norm",
    "pgd_acc@0.1", "pgd_acc@0.3", "pgd_acc@0.3norm",
    "median_min_eps", "min_eps_auc", "min_eps_above_max", "min_eps_max", "min_eps_space",
    "hessian_converged", "untrained",
]


def lr_of(regime: str, batch_size: int) -> float:
    return 0.00015625 * batch_size if regime == "lr_bs" else 0.01


def values_for(regime: str, momentum: float, batch_size: int, seed: int) -> dict[str, float]:
    """Known values: accuracy falls 0.01 per doubling under lr, robustness with momentum."""
    doublings = math.log2(batch_size / 64)
    slope = -0.01 if regime == "lr" else 0.0
    base = 0.97 + slope * doublings + 0.002 * seed
    robust = 0.5 - 0.1 * momentum + 2 * slope * doublings - 0.01 * seed
    return {"test_acc": base, "clean_acc": base - 0.005,
            "fgsm@0.1": robust + 0.2, "fgsm@0.3": robust, "fgsm@0.3norm": robust + 0.1,
            "pgd@0.1": robust + 0.1, "pgd@0.3": robust - 0.2, "pgd@0.3norm": robust - 0.1,
            "eig": 10.0 * 1.5 ** doublings + seed, "median_eps": 0.05 + 0.01 * doublings + 0.001 * seed}


def curve_for(values: dict[str, float]) -> dict[str, list[float]]:
    """acc(eps) on 101 points 0 .. EPS_MAX: clean accuracy falling linearly to 0 at 2 x median."""
    eps = [EPS_MAX * i / 100 for i in range(101)]
    acc = [max(0.0, values["test_acc"] * (1 - e / (2 * values["median_eps"]))) for e in eps]
    return {"eps": eps, "acc": acc}


def metrics_of(values: dict[str, float], converged: bool = True, above_max: float = 0.1) -> dict:
    v = values
    return {
        "test_acc": v["test_acc"], "clean_acc": v["clean_acc"], "val_acc": 0.9,
        "fgsm_acc": v["fgsm@0.3"], "pgd_acc": v["pgd@0.3"],  # first eps, first reading
        "fgsm_acc@0.3": v["fgsm@0.3"], "fgsm_acc@0.1": v["fgsm@0.1"],
        "fgsm_acc@0.3norm": v["fgsm@0.3norm"],
        "pgd_acc@0.3": v["pgd@0.3"], "pgd_acc@0.1": v["pgd@0.1"],
        "pgd_acc@0.3norm": v["pgd@0.3norm"],
        "adversarial_eps": [{"key": "0.3", "eps": 0.3, "space": "pixel", "pixel_eps": [0.3]},
                            {"key": "0.3norm", "eps": 0.3, "space": "normalized",
                             "pixel_eps": [0.09243]}],
        "hessian_top_eig": v["eig"], "hessian_eigs": [v["eig"]], "hessian_converged": converged,
        "median_min_eps": v["median_eps"], "min_eps_auc": v["median_eps"] / EPS_MAX,
        "min_eps_max": EPS_MAX, "min_eps_space": "pixel", "min_eps_above_max": above_max,
        "min_eps_curve": curve_for(v), "min_eps_star": [0.01, 0.02],
    }


def write_run(root: Path, regime: str, momentum: float, batch_size: int, seed: int, *,
              metrics: dict | None = None, status: str = "ok", lr: float | None = -1.0,
              dataset: str = "mnist", pgd_steps: int = 40) -> Path:
    run_dir = root / f"{dataset}_{regime}_m{momentum}_bs{batch_size}_s{seed}"
    if metrics is None:
        metrics = metrics_of(values_for(regime, momentum, batch_size, seed))
    write_json_atomic(run_dir / "results.json", {
        "schema": 1, "status": status, "error": None,
        "cell": {"dataset": dataset, "model": "stdcnn", "regime": regime,
                 "batch_size": batch_size, "momentum": momentum,
                 "lr": lr_of(regime, batch_size) if lr == -1.0 else lr,
                 "seed": seed, "epochs": 2},
        "metrics": metrics if status == "ok" else {},
        "config": {"eval": {"adversarial": {"pgd_steps": pgd_steps,
                                            "eps_space": ["pixel", "normalized"]}}},
        "wall_time_s": 1.0,
    })
    return run_dir


def make_sweep(root: Path) -> Path:
    for regime, momentum in LINES:
        for batch_size in BATCH_SIZES:
            for seed in SEEDS:
                cell = (regime, momentum, batch_size, seed)
                values = values_for(*cell)
                write_run(root, *cell, metrics=metrics_of(
                    values, converged=cell != UNCONVERGED,
                    above_max=0.7 if cell == ABOVE_MAX else 0.1) | (
                    {"hessian_top_eig": UNCONVERGED_EIG} if cell == UNCONVERGED else {}))
    untrained = values_for(*UNTRAINED) | {"test_acc": UNTRAINED_ACC, "clean_acc": UNTRAINED_ACC}
    untrained |= {k: 0.0 for k in untrained if "@" in k} | {"eig": 99.0, "median_eps": 0.0001}
    write_run(root, *UNTRAINED, metrics=metrics_of(untrained))
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep13"))


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


@pytest.fixture(scope="module")
def fig(df):
    return report.plot_batch_size_figure(df, "mnist", "stdcnn")


def _artists(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.axison and ax.get_title()}


def _mean_line(ax, label):
    (line,) = [a for a in _artists(ax, "mean") if a.get_label() == label]
    return dict(zip(line.get_xdata(), line.get_ydata(), strict=True))


def trained_seeds(regime, momentum, batch_size, key):
    return [values_for(regime, momentum, batch_size, s)[key] for s in SEEDS]


# ---------------------------------------------------------------------------- tables


def test_csv_has_a_column_per_accuracy_key_in_order(df, tmp_path):
    path = tmp_path / "results.csv"
    df.to_csv(path, columns=report.csv_columns(df), index=False)  # as write_report does
    table = pd.read_csv(path)
    assert list(table.columns) == [*report.COLUMNS, *EXTRA_COLUMNS]
    assert len(table) == len(LINES) * len(BATCH_SIZES) * len(SEEDS) + 1
    row = table[(table["regime"] == "lr") & (table["momentum"] == 0.9)
                & (table["batch_size"] == 256) & (table["seed"] == 1)].iloc[0]
    want = values_for("lr", 0.9, 256, 1)
    for key in ("fgsm@0.1", "fgsm@0.3norm", "pgd@0.1", "pgd@0.3", "pgd@0.3norm"):
        attack, eps = key.split("@")
        assert row[f"{attack}_acc@{eps}"] == pytest.approx(want[key])
    assert row["median_min_eps"] == pytest.approx(want["median_eps"])
    assert row["min_eps_space"] == "pixel"
    flagged = table[table["untrained"]]
    assert flagged[["regime", "momentum", "batch_size", "seed"]].values.tolist() == [list(UNTRAINED)]
    assert table["untrained"].dtype == bool
    assert table["hessian_converged"].eq(False).sum() == 1


def test_summary_and_trends_cover_the_new_metrics_without_untrained_runs(df):
    summary = report.summarize(df)
    cell = summary[(summary["regime"] == "lr") & (summary["momentum"] == 0.0)
                   & (summary["batch_size"] == 256)].iloc[0]
    assert (cell["n"], cell["n_untrained"]) == (len(SEEDS), 1)
    assert cell["pgd_acc@0.3norm_mean"] == pytest.approx(
        statistics.mean(trained_seeds("lr", 0.0, 256, "pgd@0.3norm")))
    assert cell["median_min_eps_mean"] == pytest.approx(
        statistics.mean(trained_seeds("lr", 0.0, 256, "median_eps")))
    trends = report.trend_table(df)
    lr0 = trends[(trends["regime"] == "lr") & (trends["momentum"] == 0.0)].iloc[0]
    # 2 x -0.01 per doubling for every attack accuracy; the untrained seed (all 0) would
    # pull the bs-256 mean down by a third of it and steepen the slope
    assert lr0["pgd_acc@0.1_per_doubling"] == pytest.approx(-0.02)
    assert lr0["fgsm_acc@0.3norm_per_doubling"] == pytest.approx(-0.02)
    assert lr0["test_acc_per_doubling"] == pytest.approx(-0.01)


def test_read_table_round_trips_the_new_columns(sweep, df, tmp_path):
    path = tmp_path / "results.csv"
    df.to_csv(path, columns=report.csv_columns(df), index=False)
    back = report.read_table(path)
    cols = [*report.COLUMNS, *EXTRA_COLUMNS]
    pd.testing.assert_frame_equal(back[cols], df[cols])


def test_unconverged_hessian_only_leaves_the_eigenvalue_out(df):
    summary = report.summarize(df)
    cell = summary[(summary["regime"] == "lr_bs") & (summary["batch_size"] == 64)].iloc[0]
    assert cell["hessian_top_eig_mean"] == pytest.approx(values_for("lr_bs", 0.0, 64, 0)["eig"])
    assert cell["test_acc_mean"] == pytest.approx(
        statistics.mean(trained_seeds("lr_bs", 0.0, 64, "test_acc")))
    assert (cell["n"], cell["n_unconverged"]) == (2, 1)


# ---------------------------------------------------------------------------- figures


def test_a_panel_per_eps_and_reading(fig):
    assert list(_panels(fig)) == [
        "Clean test accuracy",
        "FGSM accuracy, eps 0.1 in pixels", "FGSM accuracy, eps 0.3 in pixels",
        "FGSM accuracy, eps 0.3 normalized (x std)",
        "PGD-40 accuracy, eps 0.1 in pixels", "PGD-40 accuracy, eps 0.3 in pixels",
        "PGD-40 accuracy, eps 0.3 normalized (x std)",
        "Top Hessian eigenvalue", "Median minimal eps* (pixel)",
    ]
    ax = _panels(fig)["PGD-40 accuracy, eps 0.3 normalized (x std)"]
    ys = _mean_line(ax, "fixed LR/BS, m = 0")
    assert ys[256.0] == pytest.approx(statistics.mean(trained_seeds("lr_bs", 0.0, 256, "pgd@0.3norm")))
    eps = _panels(fig)["Median minimal eps* (pixel)"]
    assert _mean_line(eps, "Benchmark, m = 0.9")[64.0] == pytest.approx(
        statistics.mean(trained_seeds("benchmark", 0.9, 64, "median_eps")))


def test_untrained_run_is_hollow_counted_and_does_not_move_the_mean(fig):
    panels = _panels(fig)
    clean = panels["Clean test accuracy"]
    ys = _mean_line(clean, "fixed LR, m = 0")
    assert ys[256.0] == pytest.approx(statistics.mean(trained_seeds("lr", 0.0, 256, "test_acc")))
    (hollow,) = _artists(clean, "untrained")
    assert list(hollow.get_xdata()) == [256.0]
    assert list(hollow.get_ydata()) == pytest.approx([UNTRAINED_ACC])
    assert hollow.get_markerfacecolor() == "none"
    assert all(len(_artists(ax, "untrained")) == 1 for ax in panels.values())
    (note,) = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == "note"]
    assert "1 untrained run (clean acc < 0.2) drawn hollow, left out of lines" in note.get_text()
    assert "1 Hessian estimate not converged" in note.get_text()
    assert "1 run: over half the points not fooled within eps_max" in note.get_text()
    eig = panels["Top Hessian eigenvalue"]
    (unconverged,) = _artists(eig, "unconverged")
    assert list(unconverged.get_ydata()) == [UNCONVERGED_EIG]
    assert _mean_line(eig, "fixed LR/BS, m = 0")[64.0] == pytest.approx(
        values_for("lr_bs", 0.0, 64, 0)["eig"])
    assert not _artists(clean, "unconverged")  # its accuracy is on the line
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "hollow: left out of lines (see note)" in labels


def test_noise_scale_axis(df):
    fig = report.plot_batch_size_figure(df, "mnist", "stdcnn", x="noise_scale")
    ax = _panels(fig)["Clean test accuracy"]
    assert ax.get_xscale() == "log" and "noise scale" in ax.get_xlabel()
    for regime, momentum in LINES:
        label = f"{report.regime_label(regime)}, m = {momentum:g}"
        (line,) = [a for a in _artists(ax, "mean") if a.get_label() == label]
        want = [lr_of(regime, b) / (b * (1 - momentum)) for b in BATCH_SIZES]
        assert list(line.get_xdata()) == pytest.approx(want, rel=1e-12)
    # fixed LR/BS keeps lr / B: both batch sizes sit at one noise scale, 0.00015625
    (lr_bs,) = [a for a in _artists(ax, "mean") if a.get_label() == "fixed LR/BS, m = 0"]
    assert list(lr_bs.get_xdata()) == pytest.approx([0.00015625] * len(BATCH_SIZES))
    (hollow,) = _artists(ax, "untrained")
    assert list(hollow.get_xdata()) == pytest.approx([0.01 / 256])


def test_noise_scale_leaves_out_runs_without_one(tmp_path, capsys):
    root = tmp_path / "sweep"
    for b in BATCH_SIZES:
        write_run(root, "lr", 0.0, b, 0)
    write_run(root, "lr", 0.0, 128, 0, lr=None)
    write_run(root, "lr", 1.0, 64, 0)
    runs = report.collect([root])
    fig = report.plot_batch_size_figure(runs, "mnist", "stdcnn", x="noise_scale")
    (note,) = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == "note"]
    assert "2 runs without a noise scale (lr missing or momentum >= 1) left out" in note.get_text()
    means = _artists(_panels(fig)["Clean test accuracy"], "mean")
    assert sorted(x for m in means for x in m.get_xdata()) == pytest.approx([0.01 / 256, 0.01 / 64])

    none = tmp_path / "none"
    write_run(none, "lr", 1.0, 64, 0)
    write_run(none, "lr", 0.0, 64, 1, lr=None)
    with pytest.raises(ValueError, match="noise scale"):
        report.write_report([none], tmp_path / "out", x="noise_scale")
    assert report.main([str(none), "--x", "noise_scale", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --x noise_scale:") and err.count("\n") == 1


def test_robustness_curves_one_line_per_batch_size(df):
    fig = report.plot_robustness_curves(df, "mnist", "stdcnn")
    panels = _panels(fig)
    assert list(panels) == ["fixed LR, m = 0", "fixed LR, m = 0.9", "fixed LR/BS, m = 0",
                            "Benchmark"]
    for (regime, momentum), ax in zip(LINES, panels.values(), strict=True):
        curves = _artists(ax, "curve")
        assert [c.get_label() for c in curves] == [f"B = {b}" for b in BATCH_SIZES]
        assert ax.get_xlabel() == "eps ([0, 1] pixels)"
        for line, b in zip(curves, BATCH_SIZES, strict=True):
            seeds = [curve_for(values_for(regime, momentum, b, s))["acc"] for s in SEEDS]
            # the untrained seed (lr, m 0, bs 256: acc 0 beyond eps 0) is not in the mean
            want = [statistics.mean(at_eps) for at_eps in zip(*seeds, strict=True)]
            assert list(line.get_ydata()) == pytest.approx(want)
            assert line.get_xdata()[-1] == pytest.approx(EPS_MAX)
        assert curves[0].get_color() != curves[1].get_color()
    assert report.curve_figure_names(df) == [("mnist", "stdcnn")]


def test_test_split_hessian_gets_its_own_panel_and_flag(tmp_path):
    """eval.hessian.split=test suffixes every hessian_* key with @test (the contract)."""
    for seed, converged in enumerate((True, False)):
        write_run(tmp_path, "lr", 0.0, 64, seed, metrics={
            "test_acc": 0.9, "hessian_top_eig@test": 5.0 + 100 * seed,
            "hessian_converged@test": converged, "hessian_split@test": "test"})
    runs = report.collect([tmp_path])
    assert report.summarize(runs)["hessian_top_eig@test_mean"].tolist() == [5.0]
    fig = report.plot_batch_size_figure(runs, "mnist", "stdcnn")
    panels = _panels(fig)
    assert list(panels) == ["Clean test accuracy", "Top Hessian eigenvalue (test loss)"]
    (hollow,) = _artists(panels["Top Hessian eigenvalue (test loss)"], "unconverged")
    assert list(hollow.get_ydata()) == [105.0]


# ---------------------------------------------------------------------------- inputs


def _touch(path: Path, payload: dict, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    os.utime(path, (mtime, mtime))


def test_evaluation_files_only_add_keys_newest_first(tmp_path):
    run_dir = write_run(tmp_path, "lr", 0.0, 64, 0,
                        metrics={"test_acc": 0.9, "clean_acc": 0.9, "pgd_acc@0.3": 0.2})
    evals = run_dir / report.EVALUATIONS_DIR
    # names sort the other way round from times: the time decides
    _touch(evals / "z_older.json", {"schema": 1, "status": "ok", "metrics": {
        "pgd_acc@0.3": 0.5, "pgd_acc@0.1": 0.6, "median_min_eps": 0.05}}, 1_000_000)
    _touch(evals / "a_newer.json", {"schema": 1, "status": "ok", "metrics": {
        "pgd_acc@0.1": 0.7, "fgsm_acc@0.1": 0.8},
        "overrides": ["eval.adversarial.pgd_steps=100"]}, 2_000_000)
    _touch(evals / "m_failed.json", {"schema": 1, "status": "failed", "error": "boom",
                                     "metrics": {"fgsm_acc@0.2": 0.1}}, 3_000_000)
    (evals / "broken.json").write_text("{not json")
    row = report.collect([tmp_path]).iloc[0]
    assert row["pgd_acc@0.3"] == 0.2  # the original results.json wins
    assert row["pgd_acc@0.1"] == 0.7  # the newest evaluation wins over the older one
    assert row["fgsm_acc@0.1"] == 0.8 and row["median_min_eps"] == 0.05  # each adds its keys
    assert "fgsm_acc@0.2" not in row.index  # a failed evaluation adds nothing
    assert pd.isna(row["pgd_steps"])  # a re-evaluation with other PGD steps: unknown


def test_untrained_threshold_follows_num_classes_and_margin(tmp_path):
    spec = catalog.DatasetSpec("hundred_test", "Hundred", 3, 32, 100, (0.5,), (0.25,), 10,
                               False, 0.01, "n/a")
    catalog.register_dataset(spec)
    try:
        accs = {"hundred_test": (0.105, 0.115), "unknown_test": (0.19, 0.21)}  # below, above
        for dataset, (below, above) in accs.items():
            for seed, acc in enumerate((below, above)):
                write_run(tmp_path, "lr", 0.0, 64, seed, dataset=dataset,
                          metrics={"test_acc": acc, "clean_acc": 0.5})
        write_run(tmp_path, "lr", 0.0, 128, 0, dataset="mnist", metrics={"clean_acc": 0.15})
        runs = report.collect([tmp_path]).set_index(["dataset", "seed", "batch_size"])
        assert runs["untrained"].to_dict() == {
            ("hundred_test", 0, 64): True, ("hundred_test", 1, 64): False,  # 0.01 + 0.1
            ("mnist", 0, 128): True,  # no test_acc: clean_acc 0.15 < 0.2
            ("unknown_test", 0, 64): True, ("unknown_test", 1, 64): False,  # 10 classes
        }
        loose = report.collect([tmp_path], untrained_margin=0.0)
        assert not loose["untrained"].any()  # 0.105 > 0.01, 0.15 and 0.19 > 0.1
    finally:
        del catalog.DATASETS["hundred_test"]


def test_cli_x_and_margin_flags(tmp_path, capsys):
    root = tmp_path / "sweep"
    for b in BATCH_SIZES:
        curve = curve_for({"test_acc": 0.9, "median_eps": 0.1})
        write_run(root, "lr_bs", 0.0, b, 0, metrics={
            "test_acc": 0.15 if b == 64 else 0.9, "fgsm_acc@0.3": 0.4, "min_eps_curve": curve})
    assert report.main([str(root), "--x", "noise_scale", "--untrained-margin", "0.01"]) == 0
    out = root / "report"
    assert {p.name for p in out.glob("*.png")} == {
        "mnist_stdcnn_noise_scale.png", "mnist_stdcnn_lr_bs_momentum_noise_scale.png",
        "mnist_stdcnn_robustness_curves.png"}
    assert {p.name for p in out.glob("*.csv")} == {"results.csv", "summary.csv", "trends.csv"}
    assert "untrained" not in pd.read_csv(out / "results.csv").columns  # 0.15 > 0.11
    assert "trends.csv" in capsys.readouterr().out
    assert report.collect([root])["untrained"].tolist() == [True, False]  # default margin 0.1
    with pytest.raises(SystemExit) as bad:
        report.main([str(root), "--untrained-margin", "2"])
    assert bad.value.code == 2
