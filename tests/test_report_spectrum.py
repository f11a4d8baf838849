"""The report's Hessian density and trace figures on a synthetic sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robusthp import report
from robusthp.report.columns import converged_flag
from robusthp.report.spectrum import (
    DENSITY_FLOOR,
    DENSITY_WIDTH,
    density_figure_names,
    plot_density_figure,
    plot_trace_figure,
    trace_figure_names,
)
from robusthp.results import write_json_atomic
from robusthp.spectral_density import smoothed_density

BATCH_SIZES = (64, 256)
REGIMES = ("lr", "lr_bs")
SEEDS = (0, 1)


def density_for(batch_size: int, seed: int) -> dict:
    """Two start vectors; the top node grows with the batch size (sharper minima)."""
    top = 10.0 * batch_size / 64 + seed
    return {"nodes": [[-0.1, 0.0, 0.5, top], [0.0, 0.2, top * 0.99]],
            "weights": [[0.2, 0.5, 0.29, 0.01], [0.6, 0.39, 0.01]], "dim": 1000}


def write_run(root: Path, regime: str, batch_size: int, seed: int, spectrum: bool = True,
              converged: bool = True) -> None:
    metrics = {"test_acc": 0.98, "clean_acc": 0.98, "fgsm_acc": 0.5, "pgd_acc": 0.3,
               "hessian_top_eig": 10.0 * batch_size / 64 + seed, "hessian_converged": converged}
    if spectrum:
        metrics |= {"hessian_trace": 100.0 + batch_size + 10 * seed, "hessian_trace_se": 2.0,
                    "hessian_density": density_for(batch_size, seed),
                    "hessian_layer_top_eig": {"conv1": 1.0, "fc": 2.0}}
    write_json_atomic(root / f"{regime}_bs{batch_size}_s{seed}" / "results.json", {
        "schema": 1, "status": "ok", "error": None,
        "cell": {"dataset": "mnist", "model": "m1", "regime": regime, "batch_size": batch_size,
                 "momentum": 0.0, "lr": 0.01, "seed": seed, "epochs": 2},
        "metrics": metrics, "wall_time_s": 1.0,
    })


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spectrum_sweep")
    for regime in REGIMES:
        for batch_size in BATCH_SIZES:
            for seed in SEEDS:
                write_run(root, regime, batch_size, seed, converged=(batch_size, seed) != (64, 1))
    return root


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


def test_table_keeps_trace_as_a_column_and_the_density_in_memory(df, sweep, tmp_path):
    assert df["hessian_trace"].dtype == float and df["hessian_trace"].notna().all()
    assert all(isinstance(d, dict) for d in df["hessian_density"])
    written = report.write_report([sweep], tmp_path)
    csv = pd.read_csv(written["results.csv"])
    assert "hessian_trace" in csv.columns and "hessian_density" not in csv.columns
    assert "hessian_layer_top_eig" not in csv.columns
    summary = pd.read_csv(written["summary.csv"])
    assert "hessian_trace_mean" in summary.columns
    assert {"mnist_m1_hessian_density.png", "mnist_m1_hessian_trace.png"} <= set(written)
    back = report.read_table(written["results.csv"])
    assert back["hessian_trace"].tolist() == pytest.approx(df["hessian_trace"].tolist())


def test_trace_is_not_masked_by_the_eigenvalue_flag(df):
    assert converged_flag("hessian_trace") is None
    assert converged_flag("hessian_top_eig") == "hessian_converged"
    summary = report.summarize(df)
    cell = summary[(summary["regime"] == "lr") & (summary["batch_size"] == 64)].iloc[0]
    assert cell["hessian_trace_mean"] == pytest.approx(100 + 64 + 5)  # both seeds
    assert cell["hessian_top_eig_mean"] == pytest.approx(10.0)  # seed 1 unconverged: out


def test_density_figure_one_panel_per_line_one_curve_per_batch_size(df):
    fig = plot_density_figure(df, "mnist", "m1")
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == len(REGIMES)
    for ax in axes:
        curves = [line for line in ax.get_lines() if line.get_gid() == "density"]
        assert [c.get_label() for c in curves] == [f"B = {b}" for b in BATCH_SIZES]
        assert ax.get_yscale() == "log"
    # a curve is the mean over every start vector of the cell's seeds
    curve = [c for c in axes[0].get_lines() if c.get_label() == "B = 256"][0]
    grid = curve.get_xdata()
    dens = [density_for(256, s) for s in SEEDS]
    nodes = [n for d in dens for n in d["nodes"]]
    weights = [w for d in dens for w in d["weights"]]
    _, want = smoothed_density(nodes, weights, grid=grid,
                               width=DENSITY_WIDTH * float(grid[-1] - grid[0]))
    np.testing.assert_allclose(curve.get_ydata() - DENSITY_FLOOR, want, rtol=1e-9, atol=1e-12)
    # the grid spans every node of the panel, both batch sizes
    assert grid[0] < -0.1 and grid[-1] > density_for(256, 1)["nodes"][0][-1]


def test_trace_figure_has_the_top_eigenvalue_beside_the_trace(df):
    fig = plot_trace_figure(df, "mnist", "m1")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["Top Hessian eigenvalue", "Hessian trace (Hutchinson)"]
    trace_ax = fig.axes[1]
    means = [line for line in trace_ax.get_lines() if line.get_gid() == "mean"]
    assert len(means) == len(REGIMES)
    assert sorted(means[0].get_ydata()) == pytest.approx([100 + 64 + 5, 100 + 256 + 5])


def test_no_spectrum_figures_without_the_keys(tmp_path):
    for regime in REGIMES:
        for batch_size in BATCH_SIZES:
            write_run(tmp_path / "runs", regime, batch_size, 0, spectrum=False)
    df = report.collect([tmp_path / "runs"])
    assert density_figure_names(df) == [] and trace_figure_names(df) == []
    written = report.write_report([tmp_path / "runs"], tmp_path / "out", df=df)
    assert not any("hessian_" in name for name in written)
    with pytest.raises(ValueError, match="hessian_density"):
        plot_density_figure(df, "mnist", "m1")


def test_malformed_density_is_ignored(tmp_path):
    write_run(tmp_path, "lr", 64, 0)
    path = tmp_path / "lr_bs64_s0" / "results.json"
    record = json.loads(path.read_text())
    record["metrics"]["hessian_density"] = {"nodes": [[1.0]], "weights": []}
    write_json_atomic(path, record)
    assert density_figure_names(report.collect([tmp_path])) == []
