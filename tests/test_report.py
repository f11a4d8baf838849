"""robusthp.report on a small synthetic sweep: table, summary, figures, CLI."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

from robusthp import report
from robusthp.results import write_json_atomic

EXPECTED_COLUMNS = [
    "dataset", "model", "regime", "batch_size", "momentum", "lr", "seed", "epochs", "rotation", "adv_train",
    "test_acc", "clean_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig",
    "status", "wall_time_s", "run_dir",
]
BATCH_SIZES = (64, 256)
REGIMES = ("lr", "lr_bs")
SEEDS = (0, 1)
DIVERGED = ("lr_bs", 4096, 0)  # (regime, batch size, seed): the only run at bs 4096
FAILED = ("lr", 256, 2)  # an extra seed that failed


def metrics_for(regime: str, batch_size: int, seed: int) -> dict[str, float]:
    """Known values: under lr accuracy falls 0.01 per doubling, under lr_bs it is flat."""
    doublings = math.log2(batch_size / 64)
    slope = -0.01 if regime == "lr" else 0.0
    wiggle = 0.002 * (seed + 1)
    return {
        "test_acc": 0.98 + slope * doublings + wiggle,
        "clean_acc": 0.975 + slope * doublings,
        "fgsm_acc": 0.60 + 3 * slope * doublings - wiggle,
        "pgd_acc": 0.30 + 2 * slope * doublings + 0.5 * wiggle,
        "hessian_top_eig": 10.0 * (1.5 ** doublings if regime == "lr" else 1.0) + seed,
        "val_acc": 0.97,
    }


def write_run(root: Path, regime: str, batch_size: int, seed: int, status: str = "ok",
              momentum: float = 0.0, model: str = "stdcnn") -> Path:
    run_dir = root / f"{model}_{regime}_m{momentum}_bs{batch_size}_s{seed}"
    metrics = metrics_for(regime, batch_size, seed) if status == "ok" else {}
    write_json_atomic(run_dir / "results.json", {
        "schema": 1,
        "status": status,
        "error": None if status == "ok" else f"{status} on purpose",
        "cell": {"dataset": "mnist", "model": model, "regime": regime, "batch_size": batch_size,
                 "momentum": momentum, "lr": 0.01 if regime == "lr" else 0.00015625 * batch_size,
                 "seed": seed, "epochs": 2},
        "metrics": metrics,
        "wall_time_s": 1.5 + seed,
    })
    return run_dir


def make_sweep(root: Path) -> Path:
    for regime in REGIMES:
        for batch_size in BATCH_SIZES:
            for seed in SEEDS:
                write_run(root, regime, batch_size, seed)
    write_run(root, *DIVERGED, status="diverged")
    write_run(root, *FAILED, status="failed")
    return root


N_RUNS = len(REGIMES) * len(BATCH_SIZES) * len(SEEDS) + 2


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


@pytest.fixture(scope="module")
def written(sweep, tmp_path_factory) -> dict[str, Path]:
    return report.write_report([sweep], tmp_path_factory.mktemp("report"))


def test_csv_has_one_row_per_run_and_the_documented_columns(written, sweep):
    table = pd.read_csv(written["results.csv"])
    assert list(table.columns) == EXPECTED_COLUMNS
    assert len(table) == N_RUNS
    got = {(r.regime, r.batch_size, r.seed, r.status) for r in table.itertuples()}
    want = {(r, b, s, "ok") for r in REGIMES for b in BATCH_SIZES for s in SEEDS}
    want |= {(*DIVERGED, "diverged"), (*FAILED, "failed")}
    assert got == want
    failed = table[table["status"] == "failed"].iloc[0]
    assert failed[["test_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig"]].isna().all()
    assert Path(failed["run_dir"]).parent == sweep
    ok = table[table["status"] == "ok"]
    assert ok["test_acc"].notna().all() and (ok["epochs"] == 2).all()


def test_read_table_round_trips(written, df):
    back = report.read_table(written["results.csv"])
    pd.testing.assert_frame_equal(back[EXPECTED_COLUMNS], df[EXPECTED_COLUMNS])


def test_summary_mean_std_n_over_seeds(df):
    summary = report.summarize(df)
    for regime in REGIMES:
        for batch_size in BATCH_SIZES:
            row = summary[(summary["regime"] == regime) & (summary["batch_size"] == batch_size)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["n"] == len(SEEDS)
            for metric in ("test_acc", "fgsm_acc", "hessian_top_eig"):
                values = [metrics_for(regime, batch_size, s)[metric] for s in SEEDS]
                assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(values))
                assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values))
                assert row[f"{metric}_min"] == pytest.approx(min(values))
    failed_cell = summary[(summary["regime"] == "lr") & (summary["batch_size"] == 256)].iloc[0]
    assert (failed_cell["n"], failed_cell["n_failed"], failed_cell["n_diverged"]) == (2, 1, 0)
    diverged_cell = summary[summary["batch_size"] == 4096].iloc[0]
    assert (diverged_cell["n"], diverged_cell["n_diverged"]) == (0, 1)
    assert math.isnan(diverged_cell["test_acc_mean"])


def test_trend_table_slopes_per_doubling(df):
    trends = report.trend_table(df).set_index("regime")
    assert trends.loc["lr", "test_acc_per_doubling"] == pytest.approx(-0.01)
    assert trends.loc["lr_bs", "test_acc_per_doubling"] == pytest.approx(0.0, abs=1e-12)


def test_pngs_exist_and_are_not_blank(written):
    pngs = {name for name in written if name.endswith(".png")}
    assert pngs == {"mnist_stdcnn.png", "mnist_stdcnn_lr_momentum.png",
                    "mnist_stdcnn_lr_bs_momentum.png"}
    for name in pngs:
        path = written[name]
        assert path.stat().st_size > 20_000
        pixels = imread(path)
        assert pixels.shape[0] > 400 and pixels.shape[1] > 800
        assert pixels[..., :3].std() > 0.05  # not one flat colour


def _artists(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_figure_marks_diverged_and_lists_failed_and_missing(df):
    fig = report.plot_batch_size_figure(df, "mnist", "stdcnn")
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == [
        "Clean test accuracy", "FGSM accuracy", "PGD accuracy", "Top Hessian eigenvalue"]
    crosses = _artists(fig, "diverged")
    assert len(crosses) == len(panels)  # one marker set per panel, for the lr_bs line
    assert all(list(c.get_xdata()) == [4096.0] and c.get_marker() == "x" for c in crosses)
    assert list(panels[0].get_xticks()) == [64, 256, 4096]
    assert panels[0].get_xscale() == "log"
    (note,) = _artists(fig, "note")
    text = note.get_text()
    assert "diverged: fixed LR/BS, m=0: bs 4096 (1 of 1 runs)" in text
    assert "failed (not plotted): fixed LR, m=0: bs 256 (seed 2)" in text
    assert "missing (no run): fixed LR, m=0: bs 4096" in text
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "diverged (x at panel bottom)" in labels
    assert any("min-max" in label for label in labels)


def test_lines_take_the_paper_colours(df):
    fig = report.plot_batch_size_figure(df, "mnist", "stdcnn", spread="std")
    means = _artists(fig, "mean")[:2]  # first panel: lr then lr_bs
    assert means[0].get_color() == pytest.approx(
        tuple(int(report.REGIME_COLOURS["lr"][i:i + 2], 16) / 255 for i in (1, 3, 5)), abs=1e-6)
    assert [m.get_label() for m in means] == ["fixed LR, m = 0", "fixed LR/BS, m = 0"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("std" in label for label in labels)


def test_momentum_filter_keeps_benchmark(tmp_path):
    root = tmp_path / "sweep"
    for m in (0.0, 0.9):
        write_run(root, "lr", 64, 0, momentum=m)
        write_run(root, "lr", 128, 0, momentum=m)
    write_run(root, "benchmark", 64, 0, momentum=0.9)
    runs = report.collect([root])
    fig = report.plot_batch_size_figure(runs, "mnist", "stdcnn", momenta=[0])
    labels = {a.get_label() for a in _artists(fig, "mean")}
    assert labels == {"fixed LR, m = 0", "Benchmark, m = 0.9"}
    with pytest.raises(ValueError, match="no runs"):
        report.plot_batch_size_figure(runs, "cifar10", "stdcnn")


def test_unreadable_results_are_kept(tmp_path):
    write_run(tmp_path, "lr", 64, 0)
    broken = tmp_path / "broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    runs = report.collect([tmp_path])
    assert list(runs["status"]) == ["ok", "unreadable"]
    assert runs["run_dir"].iloc[1] == str(broken.parent)
    assert report.summarize(runs)["n"].tolist() == [1]


def test_cli_writes_default_out_dir(tmp_path, capsys):
    make_sweep(tmp_path)
    assert report.main([str(tmp_path), "--momentum", "0"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "report" / "results.csv").is_file()
    assert len(list((tmp_path / "report").glob("*.png"))) == 3
    assert "failed: " in out and "failed on purpose" in out
    assert f"{N_RUNS} runs" in out


def test_cli_missing_dir_exit_2_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep dir not found") and err.count("\n") == 1


def test_cli_no_results_exit_1(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no results.json found" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_module_runs_without_torch_and_fails_cleanly(tmp_path):
    """``python -m robusthp.report`` on a bad dir: exit 2, no traceback, torch never imported."""
    code = ("import sys, runpy; sys.argv = ['report', sys.argv[1]]\n"
            "try:\n    runpy.run_module('robusthp.report', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    bad = [m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules]\n"
            "    print('heavy:', bad); raise\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "heavy: []" in proc.stdout


def test_regime_names_and_colours_come_from_the_catalog(tmp_path):
    """A regime registered in the catalog is labelled, coloured and gets a momentum figure;
    one the catalog does not know falls back to its name and a spare colour."""
    from robusthp import catalog

    spec = catalog.RegimeSpec("sqrt_test", "sqrt LR (test)", "#123456", keys={"lr": 0.01},
                              lr=lambda k, bs: k["lr"])
    catalog.register_regime(spec)
    try:
        for regime in ("sqrt_test", "unknown_test"):
            for batch_size in (64, 128):
                write_run(tmp_path, regime, batch_size, 0)
        runs = report.collect([tmp_path])
        assert report.figure_names(runs) == [("mnist", "stdcnn", None),
                                             ("mnist", "stdcnn", "sqrt_test")]
        fig = report.plot_batch_size_figure(runs, "mnist", "stdcnn")
        means = {m.get_label(): m.get_color() for m in _artists(fig, "mean")[:2]}
        assert list(means) == ["sqrt LR (test), m = 0", "unknown_test, m = 0"]
        assert means["sqrt LR (test), m = 0"] == pytest.approx((0x12 / 255, 0x34 / 255, 0x56 / 255))
        assert means["unknown_test, m = 0"] == pytest.approx((0x2c / 255, 0xa0 / 255, 0x2c / 255))
        assert report.REGIME_COLOURS["sqrt_test"] == "#123456"
    finally:
        del catalog.REGIMES["sqrt_test"]
    assert "sqrt_test" not in report.REGIME_COLOURS
