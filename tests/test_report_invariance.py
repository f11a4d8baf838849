"""robusthp.report draws the invariance study (Kamath, Deshpande, Subrahmanyam: rotation
invariance vs robustness, SVD-Universal): StdCNN and P4CNN on MNIST trained with random
rotations Θ_train in {0, 90, 180}°, 3 seeds each, with the invariance, adversarial and
SVD-Universal callbacks' keys. Synthetic results.json files with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from robusthp import catalog, report
from robusthp.report import invariance
from robusthp.report.columns import parse_acc_key, parse_universal_key
from robusthp.results import write_json_atomic

MODELS = ("stdcnn", "p4cnn")  # the catalog's order
ROTATIONS = (0.0, 90.0, 180.0)
SEEDS = (0, 1, 2)
THETAS = tuple(range(0, 181, 15))
FIXED = (-90, -45, 0, 45, 90)
EPS = (0.1, 0.3)  # the callback's list: 0.1 first (the primary eps), the catalog's 0.3 second
NORMS = (0, 1, 2, 3, 4, 6, 8, 10)
ATTACKS = ("gradient", "fgsm")
GAIN = {"stdcnn": 0.6, "p4cnn": 0.9}  # how much invariance a training rotation buys
UNTRAINED = ("p4cnn", 90.0, 3)  # an extra seed that stayed at chance: clean acc 0.11 < 0.2
FAILED = ("stdcnn", 0.0, 3)  # an extra seed that failed: no metrics
DIVERGED = ("p4cnn", 180.0, 4)
FIGURES = {"mnist_invariance.png", "mnist_invariance_robustness.png", "mnist_universal.png"}


def metrics_for(model: str, rotation: float, seed: int) -> dict:
    """Known values; seeds spread unevenly (seed**2), so the std is not a round number."""
    clean = 0.985 - 0.00005 * rotation + 0.002 * seed
    inv = GAIN[model] * rotation / 180 + 0.01 * seed ** 2  # 0 (none) .. 1 (invariant)
    robust = 0.7 - 0.002 * rotation * GAIN[model] + 0.01 * seed ** 2
    m = {"test_acc": clean, "clean_acc": clean - 0.003, "val_acc": 0.98,
         "hessian_top_eig": 3.0 + seed, "fgsm_acc": robust - EPS[0],
         "pgd_acc": robust - 2 * EPS[0],  # the plain keys: the first eps in pixels
         "median_min_eps": 0.2 - 0.0004 * rotation * GAIN[model] + 0.001 * seed ** 2,
         "min_eps_auc": 0.1 - 0.0001 * rotation + 0.001 * seed, "min_eps_space": "pixel",
         "min_eps_max": 0.6, "invariance_num_samples": 1000, "universal_n": 10,
         "universal_num_samples": 500,
         "universal_invariant_sv_ratio": 0.3 + 0.001 * rotation + 0.01 * seed}
    for eps in EPS:
        m |= {f"fgsm_acc@{eps:g}": robust - eps, f"pgd_acc@{eps:g}": robust - 2 * eps,
              f"fgsm_acc@{eps:g}norm": robust - 0.5 * eps, f"pgd_acc@{eps:g}norm": robust - eps}
    m |= {f"rot_acc@{t:g}": clean - (1 - inv) * 0.5 * t / 180 for t in THETAS}
    m |= {f"rot_fixed_acc@{a:g}": clean - (1 - inv) * 0.5 * abs(a) / 180 - 0.001 * seed
          for a in FIXED}
    for attack in ATTACKS:
        k = 0.03 + 0.0002 * rotation * GAIN[model] + (0.01 if attack == "fgsm" else 0.0)
        for s in NORMS:
            flip = k * s + 0.004 * seed ** 2
            m |= {f"universal_flip@{attack}@{s:g}": flip,
                  f"universal_error@{attack}@{s:g}": flip + 0.01 + 0.001 * seed,
                  f"universal_flip_unclamped@{attack}@{s:g}": flip + 0.002,
                  f"universal_error_unclamped@{attack}@{s:g}": flip + 0.012}
        m |= {f"universal_sv_ratio@{attack}": 0.5 + 0.001 * rotation + 0.01 * seed ** 2,
              f"universal_invariant_cos@{attack}": 0.1 + 0.002 * rotation * GAIN[model]
              + 0.005 * seed ** 2}
    return m


def untrained_metrics() -> dict:
    m = {k: (0.11 if isinstance(v, float) and "acc" in k else v)
         for k, v in metrics_for(*UNTRAINED).items()}
    return m | {"test_acc": 0.11, "universal_flip@gradient@4": 0.99}


def write_run(root: Path, model: str, rotation: float | None, seed: int, *,
              metrics: dict | None = None, status: str = "ok", regime: str = "lr",
              batch_size: int = 128) -> Path:
    run_dir = root / f"{model}_r{rotation}_{regime}_bs{batch_size}_s{seed}"
    cell = {"dataset": "mnist", "model": model, "regime": regime, "batch_size": batch_size,
            "momentum": 0.0, "lr": 0.01, "seed": seed, "epochs": 4}
    if rotation is not None:  # None: a run recorded before cell.rotation existed
        cell["rotation"] = rotation
    write_json_atomic(run_dir / "results.json", {
        "schema": 1, "status": status, "error": None if status == "ok" else "on purpose",
        "cell": cell,
        "metrics": (metrics_for(model, rotation or 0.0, seed) if metrics is None else metrics)
        if status == "ok" else {},
        "config": {"eval": {"adversarial": {"pgd_steps": 40}}},
        "wall_time_s": 1.0,
    })
    return run_dir


def make_study(root: Path) -> Path:
    for model in MODELS:
        for rotation in ROTATIONS:
            for seed in SEEDS:
                write_run(root, model, rotation, seed)
    write_run(root, *UNTRAINED, metrics=untrained_metrics())
    write_run(root, *FAILED, status="failed")
    write_run(root, *DIVERGED, status="diverged")
    return root


def paper_metrics(seed: int) -> dict:
    return {"test_acc": 0.97 + 0.001 * seed, "clean_acc": 0.97, "fgsm_acc@0.1": 0.5,
            "pgd_acc@0.1": 0.3, "hessian_top_eig": 10.0}


def make_paper_sweep(root: Path) -> Path:
    """The paper's kind of sweep: two regimes, two batch sizes, no invariance key."""
    for regime in ("lr", "lr_bs"):
        for batch_size in (64, 256):
            for seed in (0, 1):
                write_run(root, "stdcnn", 0.0, seed, metrics=paper_metrics(seed), regime=regime,
                          batch_size=batch_size)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("invariance"))


@pytest.fixture(scope="module")
def df(sweep) -> pd.DataFrame:
    return report.collect([sweep])


@pytest.fixture(scope="module")
def written(sweep, df, tmp_path_factory) -> dict[str, Path]:
    return report.write_report([sweep], tmp_path_factory.mktemp("report"), df=df)


@pytest.fixture(scope="module")
def table(df) -> pd.DataFrame:
    return invariance.invariance_table(df)


def trained(model: str, rotation: float, key: str) -> np.ndarray:
    return np.array([metrics_for(model, rotation, s)[key] for s in SEEDS])


def label(model: str) -> str:
    return catalog.MODELS[model].label if model in catalog.MODELS else model


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.axison and ax.get_title()}


def _artists(ax, gid, label_=None):
    return [a for a in ax.get_children()
            if a.get_gid() == gid and (label_ is None or a.get_label() == label_)]


def _note(fig) -> str:
    (note,) = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == "note"]
    return note.get_text()


# ---------------------------------------------------------------------------- columns


def test_keys_parse():
    assert parse_acc_key("rot_fixed_acc@-45").eps == -45  # a negative fixed angle
    assert parse_acc_key("rot_acc@180").attack == "rot"
    key = parse_universal_key("universal_error_unclamped@deepfool@2.5")
    assert (key.kind, key.attack, key.norm) == ("error_unclamped", "deepfool", 2.5)
    assert parse_universal_key("universal_sv_ratio@fgsm").norm is None
    assert parse_universal_key("universal_n") is None
    assert parse_universal_key("universal_flip@gradient") is None


def test_results_csv_carries_the_invariance_keys_in_order(written):
    csv = pd.read_csv(written["results.csv"])
    universal = []
    for attack in ATTACKS:
        universal.append(f"universal_sv_ratio@{attack}")
        for kind in ("flip", "error", "flip_unclamped", "error_unclamped"):
            universal += [f"universal_{kind}@{attack}@{s:g}" for s in NORMS]
        universal.append(f"universal_invariant_cos@{attack}")
    extra = [
        *(f"fgsm_acc@{e:g}" for e in EPS), *(f"fgsm_acc@{e:g}norm" for e in EPS),
        *(f"pgd_acc@{e:g}" for e in EPS), *(f"pgd_acc@{e:g}norm" for e in EPS),
        *(f"rot_acc@{t:g}" for t in THETAS), *(f"rot_fixed_acc@{a:g}" for a in FIXED),
        "median_min_eps", "min_eps_auc", "min_eps_max", "min_eps_space",
        *universal, "universal_invariant_sv_ratio",
        "invariance_num_samples", "universal_n", "universal_num_samples", "untrained",
    ]
    assert list(csv.columns) == [*report.COLUMNS, *extra]
    row = csv[(csv["model"] == "p4cnn") & (csv["rotation"] == 90) & (csv["seed"] == 2)].iloc[0]
    want = metrics_for("p4cnn", 90.0, 2)
    for key in ("rot_acc@135", "rot_fixed_acc@-45", "universal_flip@fgsm@6",
                "universal_error_unclamped@gradient@10", "universal_invariant_cos@gradient"):
        assert row[key] == pytest.approx(want[key])
    summary = pd.read_csv(written["summary.csv"])
    assert "universal_flip@gradient@4_mean" in summary.columns
    assert "universal_n_mean" not in summary.columns  # a count: not summarized


# ---------------------------------------------------------------------------- the table


def test_table_means_and_stds_are_numpys_over_trained_seeds(table):
    cells = [(m, r) for m in MODELS for r in ROTATIONS]
    assert list(zip(table["model"], table["rotation"], strict=True)) == cells
    assert (table["dataset"] == "mnist").all() and (table["batch_size"] == 128).all()
    counts = {(m, r): c for m, r, *c in table[["model", "rotation", "n", "n_untrained",
                                                "n_failed", "n_diverged"]].itertuples(index=False)}
    assert counts == {(m, r): [3, int((m, r) == UNTRAINED[:2]), int((m, r) == FAILED[:2]),
                               int((m, r) == DIVERGED[:2])] for m, r in cells}
    keys = ["test_acc", "clean_acc", "rot_acc@0", "rot_acc@45", "rot_acc@180",
            "rot_fixed_acc@-90", "rot_fixed_acc@45", "fgsm_acc@0.1", "pgd_acc@0.3norm",
            "median_min_eps", "min_eps_auc", "universal_flip@gradient@0",
            "universal_flip@gradient@4", "universal_flip@gradient@10",
            "universal_error@gradient@6", "universal_sv_ratio@gradient",
            "universal_invariant_cos@gradient", "universal_invariant_sv_ratio"]
    for _, row in table.iterrows():
        for key in keys:
            values = trained(row["model"], row["rotation"], key)
            assert row[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-12), key
            assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9), key
    # by hand, one cell: P4CNN at Θ_train 90 (the untrained seed 3's 0.11 left out)
    row = table[(table["model"] == "p4cnn") & (table["rotation"] == 90)].iloc[0]
    flips = [(0.03 + 0.0002 * 90 * 0.9) * 4 + 0.004 * s ** 2 for s in SEEDS]  # 0.1848 + ...
    assert row["universal_flip@gradient@4_mean"] == pytest.approx(0.1848 + 0.02 / 3)
    assert row["universal_flip@gradient@4_std"] == pytest.approx(
        np.sqrt(sum((f - np.mean(flips)) ** 2 for f in flips) / 2))
    assert row["universal_flip@gradient@4_std"] == pytest.approx(0.004 * np.std([0, 1, 4], ddof=1))
    assert not any("unclamped" in c or "@fgsm" in c for c in table.columns)  # default attack only
    assert "universal_n_mean" not in table.columns


def test_invariance_csv_is_the_table_and_rebuilds_from_results_csv(written, table):
    back = pd.read_csv(written["invariance.csv"])
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["rot_acc@90_mean"], table["rot_acc@90_mean"])
    again = invariance.invariance_table(report.read_table(written["results.csv"]))
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


# ---------------------------------------------------------------------------- which runs


def test_the_three_figures_are_written(written):
    assert FIGURES <= set(written)
    assert "invariance.csv" in written
    for name in FIGURES:
        image = imread(written[name])
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01


def test_a_plain_paper_sweep_adds_no_invariance_outputs(tmp_path):
    root = make_paper_sweep(tmp_path / "paper")
    runs = report.collect([root])
    assert invariance.invariance_datasets(runs) == []
    assert invariance.invariance_table(runs).empty
    assert list(invariance.invariance_figures(runs, "mnist")) == []
    written = report.write_report([root], tmp_path / "out", df=runs)
    assert set(written) == {"results.csv", "summary.csv", "trends.csv", "mnist_stdcnn.png",
                            "mnist_stdcnn_lr_momentum.png", "mnist_stdcnn_lr_bs_momentum.png"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(written)


def test_paper_runs_beside_the_study_stay_out_of_it(tmp_path):
    root = make_paper_sweep(make_study(tmp_path / "both"))
    runs = report.collect([root])
    assert invariance.invariance_datasets(runs) == ["mnist"]
    table = invariance.invariance_table(runs)
    assert list(zip(table["model"], table["rotation"], table["batch_size"], strict=True)) == [
        (m, r, 128) for m in MODELS for r in ROTATIONS]


def test_old_results_without_rotation_are_read_as_zero(tmp_path):
    for seed in SEEDS:
        write_run(tmp_path, "stdcnn", None, seed)  # no cell.rotation
    write_run(tmp_path, "stdcnn", 90.0, 0)
    runs = report.collect([tmp_path])
    assert sorted(runs["rotation"]) == [0.0, 0.0, 0.0, 90.0]
    s = invariance.study(runs, "mnist")
    assert [line.rotation for line in s.series[0].lines] == [0.0, 90.0]
    table = invariance.invariance_table(runs)
    assert list(table["rotation"]) == [0.0, 90.0] and list(table["n"]) == [3, 1]
    assert table["rot_acc@180_mean"].iloc[0] == pytest.approx(trained("stdcnn", 0.0,
                                                                      "rot_acc@180").mean())


def test_a_single_run_gets_the_profile_and_universal_figures(tmp_path):
    write_run(tmp_path, "p4cnn", 30.0, 0)
    runs = report.collect([tmp_path])
    s = invariance.study(runs, "mnist")
    assert not s.compared
    assert [name for name, _ in invariance.invariance_figures(runs, "mnist")] == [
        "mnist_invariance.png", "mnist_universal.png"]  # nothing against Θ_train
    assert len(invariance.invariance_table(runs)) == 1


def test_only_the_figures_with_data_are_drawn(tmp_path):
    for rotation in (0.0, 60.0):  # the invariance profile and accuracies, no SVD-Universal
        write_run(tmp_path, "z2cnn", rotation, 0, metrics={
            k: v for k, v in metrics_for("stdcnn", rotation, 0).items()
            if not k.startswith("universal_")})
    runs = report.collect([tmp_path])
    assert [name for name, _ in invariance.invariance_figures(runs, "mnist")] == [
        "mnist_invariance.png", "mnist_invariance_robustness.png"]
    table = invariance.invariance_table(runs)
    assert not any(c.startswith("universal_") for c in table.columns)
    assert table["rot_acc@90_std"].isna().all()  # one seed: no std


def test_universal_keys_alone_put_a_cell_in_the_study(tmp_path):
    for model in MODELS:  # SVD-Universal only
        write_run(tmp_path, model, 0.0, 0, metrics={
            k: v for k, v in metrics_for(model, 0.0, 0).items()
            if k.startswith("universal_") or k == "test_acc"})
    runs = report.collect([tmp_path])
    assert [name for name, _ in invariance.invariance_figures(runs, "mnist")] == [
        "mnist_invariance_robustness.png", "mnist_universal.png"]


def test_untrained_runs_only_are_not_in_the_study(tmp_path):
    write_run(tmp_path, *UNTRAINED, metrics=untrained_metrics())
    runs = report.collect([tmp_path])
    assert invariance.invariance_datasets(runs) == []
    assert "invariance.csv" not in report.write_report([tmp_path], tmp_path / "out", df=runs)


# ---------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def study(df):
    return invariance.study(df, "mnist")


def test_series_lines_and_colours(study):
    assert [s.label for s in study.series] == [label(m) for m in MODELS]
    assert study.rotations == list(ROTATIONS) and study.compared
    for series in study.series:
        assert [line.label for line in series.lines] == ["Θ_train = 0°", "Θ_train = 90°",
                                                         "Θ_train = 180°"]
        assert [len(line.runs) for line in series.lines] == [3, 3, 3]  # untrained out
    colours = [line.colour for line in study.series[0].lines]
    assert len(set(colours)) == 3
    assert colours == [line.colour for line in study.series[1].lines]  # Θ_train, not the model


def test_invariance_profile_figure(df):
    fig = invariance.plot_invariance_figure(df, "mnist")
    panels = _panels(fig)
    assert list(panels) == [*(f"{label(m)}: invariance profile" for m in MODELS),
                            *(f"{label(m)}: accuracy at a fixed rotation" for m in MODELS)]
    for model in MODELS:
        ax = panels[f"{label(model)}: invariance profile"]
        for rotation in ROTATIONS:
            (line,) = _artists(ax, "mean", f"Θ_train = {rotation:g}°")
            assert list(line.get_xdata()) == list(THETAS)
            want = [trained(model, rotation, f"rot_acc@{t}").mean() for t in THETAS]
            assert list(line.get_ydata()) == pytest.approx(want)
        assert len(_artists(ax, "spread")) == len(ROTATIONS)
        assert sorted(a.get_xdata()[0] for a in _artists(ax, "theta_train")) == list(ROTATIONS)
        assert len(_artists(ax, "chance")) == 1
        fixed = panels[f"{label(model)}: accuracy at a fixed rotation"]
        (line,) = _artists(fixed, "mean", "Θ_train = 90°")
        assert list(line.get_xdata()) == list(FIXED)
        assert list(line.get_ydata()) == pytest.approx(
            [trained(model, 90.0, f"rot_fixed_acc@{a}").mean() for a in FIXED])
    # more training rotation: more invariance at 180° (P4CNN, whose gain is larger)
    ax = panels[f"{label('p4cnn')}: invariance profile"]
    ends = [_artists(ax, "mean", f"Θ_train = {r:g}°")[0].get_ydata()[-1] for r in ROTATIONS]
    assert ends == sorted(ends)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["Θ_train = 0°", "Θ_train = 90°", "Θ_train = 180°"]
    note = _note(fig)
    assert "n = 3 seeds per cell" in note
    assert "1 untrained run (clean acc < 0.2) left out" in note
    assert "1 failed run not plotted" in note and "1 diverged run not plotted" in note


def test_robustness_figure_against_theta_train(df):
    fig = invariance.plot_robustness_figure(df, "mnist")
    panels = _panels(fig)
    assert list(panels) == [
        "Clean test accuracy", "Invariance: test rotated in [-180°, 180°]",
        "PGD-40 accuracy, eps 0.1 in pixels", "PGD-40 accuracy, eps 0.1 normalized (x std)",
        "FGSM accuracy, eps 0.1 in pixels", "FGSM accuracy, eps 0.1 normalized (x std)",
        "Median minimal eps* (pixel)",
    ]
    metrics = dict(zip(panels, ["test_acc", "rot_acc@180", "pgd_acc@0.1", "pgd_acc@0.1norm",
                                "fgsm_acc@0.1", "fgsm_acc@0.1norm", "median_min_eps"],
                       strict=True))
    for title, ax in panels.items():
        assert ax.get_xlabel() == "Θ_train (degrees)"
        for model in MODELS:
            (line,) = _artists(ax, "mean", label(model))
            assert list(line.get_xdata()) == list(ROTATIONS)
            assert list(line.get_ydata()) == pytest.approx(
                [trained(model, r, metrics[title]).mean() for r in ROTATIONS]), title
        assert [len(a.get_xdata()) for a in _artists(ax, "seeds")] == [3] * 6  # untrained out
    # the trade-off in these values: invariance up, PGD accuracy down with Θ_train
    pgd = _artists(panels["PGD-40 accuracy, eps 0.1 in pixels"], "mean", label("p4cnn"))[0]
    assert list(pgd.get_ydata()) == sorted(pgd.get_ydata(), reverse=True)


def test_primary_eps(df):
    runs = invariance.study(df, "mnist").trained
    assert invariance.primary_keys(runs, "pgd") == ["pgd_acc@0.1", "pgd_acc@0.1norm"]
    no_plain = runs.drop(columns=["pgd_acc"])  # then the catalog's eps (0.3 for MNIST)
    assert invariance.primary_keys(no_plain, "pgd") == ["pgd_acc@0.3", "pgd_acc@0.3norm"]
    plain_only = runs.drop(columns=[c for c in runs.columns if c.startswith("pgd_acc@")])
    assert invariance.primary_keys(plain_only, "pgd") == ["pgd_acc"]


def test_universal_figure(df):
    fig = invariance.plot_universal_figure(df, "mnist")
    panels = _panels(fig)
    curves = [f"{label(m)}: SVD-Universal from {name}" for m in MODELS
              for name in ("input gradients", "FGSM signs")]
    assert list(panels) == [
        *curves, "Fooling rate at s = 4 (input gradients)",
        "σ₁²/‖A‖_F² of the attack directions (input gradients)",
        "|cos(v₁, invariant direction)| (reconstruction) (input gradients)",
    ]
    for model in MODELS:
        for attack, name in zip(ATTACKS, ("input gradients", "FGSM signs"), strict=True):
            ax = panels[f"{label(model)}: SVD-Universal from {name}"]
            assert ax.title.get_fontweight() == ("bold" if attack == "gradient" else "normal")
            for rotation in ROTATIONS:
                (flip,) = _artists(ax, "flip", f"Θ_train = {rotation:g}°")
                (error,) = _artists(ax, "error", f"Θ_train = {rotation:g}°")
                assert list(flip.get_xdata()) == list(NORMS)
                assert list(flip.get_ydata()) == pytest.approx(
                    [trained(model, rotation, f"universal_flip@{attack}@{s}").mean()
                     for s in NORMS])
                assert error.get_linestyle() == "--"
                assert list(error.get_ydata()) == pytest.approx(
                    [trained(model, rotation, f"universal_error@{attack}@{s}").mean()
                     for s in NORMS])
    middle = panels["Fooling rate at s = 4 (input gradients)"]
    cos = panels["|cos(v₁, invariant direction)| (reconstruction) (input gradients)"]
    for model in MODELS:
        (line,) = _artists(middle, "mean", label(model))
        assert list(line.get_ydata()) == pytest.approx(
            [trained(model, r, "universal_flip@gradient@4").mean() for r in ROTATIONS])
        assert len(_artists(middle, "error")) == len(MODELS)
        (line,) = _artists(cos, "mean", label(model))
        assert list(line.get_ydata()) == pytest.approx(
            [trained(model, r, "universal_invariant_cos@gradient").mean() for r in ROTATIONS])
    assert len(fig.legends) == 2
    note = _note(fig)
    assert "clamped to [0,1]" in note and "points for v₁: 10" in note
    assert "1 untrained run" in note


def test_middle_norm_is_the_closest_to_four(df):
    runs = invariance.study(df, "mnist").trained
    assert invariance.middle_norm(runs, "gradient") == 4
    without = runs.drop(columns=[c for c in runs.columns if c.endswith("@gradient@4")])
    assert invariance.middle_norm(without, "gradient") == 3  # 3 and 6 ... 3 is closer


def test_the_printed_summary_tells_the_training_rotations_apart(df, tmp_path):
    import io

    from robusthp.report.printing import print_summary

    out = io.StringIO()
    print_summary(df, file=out)
    rows = [line for line in out.getvalue().splitlines() if line.startswith("mnist")]
    header = next(line for line in out.getvalue().splitlines() if "rot" in line.split())
    assert "rot" in header.split()
    assert len(rows) == len(set(rows))  # one distinct row per (model, Θ_train) cell
    plain = io.StringIO()
    print_summary(report.collect([make_paper_sweep(tmp_path)]), file=plain)
    assert "rot" not in plain.getvalue().split()
