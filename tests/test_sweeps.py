"""Sweeps: presets compose, lines set regime + momentum, sweeps resume, report reads them."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from robusthp.config import settings_from_config
from robusthp.run import job_dir, sweep_name

CONF = resources.files("robusthp.conf")
EXPERIMENTS = sorted(p.name[:-5] for p in CONF.joinpath("experiment").iterdir() if p.name.endswith(".yaml"))
LINES = sorted(p.name[:-5] for p in CONF.joinpath("line").iterdir() if p.name.endswith(".yaml"))


def _compose(overrides):
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_into_settings(experiment):
    cfg = _compose([f"experiment={experiment}"])
    settings = settings_from_config(cfg)
    assert settings.train.epochs >= 1


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("paper_")])
def test_paper_presets_sweep_the_papers_grid_without_duplicate_benchmark_runs(experiment):
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    lines = params.line.split(",")
    assert sorted(lines) == LINES and len(set(lines)) == len(lines) == 9
    sizes = [int(b) for b in str(params.batch_size).split(",")]
    if experiment == "paper_reduced_cpu":
        assert len(sizes) >= 3 and all(b & (b - 1) == 0 for b in sizes)
    else:
        assert sizes == [2**k for k in range(5, 13)] and cfg.epochs == 100


@pytest.mark.parametrize("line", LINES)
def test_each_line_sets_its_regime_and_momentum(line):
    sgd = settings_from_config(_compose([f"line={line}", "batch_size=128"])).sgd
    if line == "benchmark":
        assert (sgd.regime, sgd.momentum, sgd.halve_every_epochs) == ("benchmark", 0.9, 5)
    else:
        regime, momentum = line.rsplit("_m", 1)
        assert (sgd.regime, sgd.momentum) == (regime, float(momentum))


def test_sweep_and_job_names_are_stable_and_readable():
    assert sweep_name(["momentum=0,0.9", "batch_size=32,64"]) == sweep_name(["batch_size=32,64", "momentum=0,0.9"])
    assert sweep_name(["experiment=paper_mnist_m1"]) == "paper_mnist_m1"
    assert sweep_name(["experiment=paper_mnist_m1", "trainer.threads=1"]) == "paper_mnist_m1"
    assert sweep_name([]) == "default" and job_dir("") == "default"
    long = sweep_name([f"eval.adversarial.eps=[{','.join(['0.1'] * 60)}]"])  # data.root is unnamed now
    assert len(long) <= 120 and long != sweep_name([f"eval.adversarial.eps=[{','.join(['0.2'] * 60)}]"])


FAST = ["eval=none", "epochs=1", "data.val_size=50", "trainer.progress_bar=false"]


HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning")
# `python -m robusthp.run`, then print which heavy packages the launcher process loaded
_PROBE = ("import json, sys; from robusthp.run import main; main(); "
          f"print('LOADED', json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")


def _sweep(args, root, cwd, probe=False):
    env = dict(os.environ, ROBUSTHP_DATA_DIR=str(root))
    cmd = [sys.executable, *(["-c", _PROBE] if probe else ["-m", "robusthp.run"]), "-m", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _results(cwd):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(cwd).rglob("results.json")}


def test_tiny_sweep_resumes_and_reports(synthetic_root, tmp_path):
    args = [*FAST, "batch_size=32,64", "line=lr_m0,lr_bs_m0.5"]
    _sweep(args, synthetic_root, tmp_path)
    first = _results(tmp_path)
    prefix = "data.val_size=50,epochs=1,eval=none,"  # each cell's dir names its own overrides
    cells = sorted(f"batch_size={b},{prefix}line={line}" for b in (32, 64) for line in ("lr_m0", "lr_bs_m0.5"))
    assert sorted(first) == cells
    assert {r["status"] for r in first.values()} == {"ok"}
    sweep_dir = next(tmp_path.glob("outputs/sweeps/*"))

    victim_name = f"batch_size=64,{prefix}line=lr_m0"
    victim = sweep_dir / victim_name / "results.json"
    victim.unlink()
    _sweep(args, synthetic_root, tmp_path)  # the same command again
    second = _results(tmp_path)
    assert sorted(second) == sorted(first)
    for name, record in second.items():
        same = record["wall_time_s"] == first[name]["wall_time_s"]
        assert same == (name != victim_name), name  # only the deleted run trained again

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "robusthp.report", str(sweep_dir), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    assert (out / "mnist_m1.png").stat().st_size > 0 and (out / "mnist_m1_lr_momentum.png").exists()


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=parallel"],  # the README's one-word switch: one worker per core
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],  # Hydra's standard spelling
], ids=["parallel", "joblib-n_jobs=2"])
def test_parallel_launcher_gives_the_sequential_numbers(launcher, synthetic_root, tmp_path):
    """A joblib multirun (one-thread workers on 2 cores) vs the default in-process launcher
    at the same thread count: same seed, same numbers, bit for bit. (A different intra-op
    thread count may split float reductions differently, so only equal counts compare.)
    The launcher process never loads torch: not to start, nor to unpickle what a job returns
    (it would cost seconds of CPU that the workers need)."""
    from joblib import cpu_count

    n_jobs = int(launcher[1].split("=")[1]) if len(launcher) > 1 else cpu_count()
    threads = max(cpu_count() // n_jobs, 1)  # what joblib's workers are given, before torch loads
    args = [*FAST, "model=m1", "batch_size=32", "momentum=0,0.9", "seed=4", "epochs=2"]
    proc = _sweep([*args, *launcher, f"hydra.sweep.dir={tmp_path}/par"], synthetic_root, tmp_path, probe=True)
    assert proc.stdout.splitlines()[-1] == "LOADED []", proc.stdout[-500:]
    _sweep([*args, f"trainer.threads={threads}", f"hydra.sweep.dir={tmp_path}/seq"], synthetic_root, tmp_path)
    par, seq = _results(tmp_path / "par"), _results(tmp_path / "seq")
    assert sorted(par) == sorted(seq) and len(par) == 2
    for name in par:
        assert par[name]["env"]["threads"] == threads
        for key in ("train_loss", "train_acc", "test_acc"):
            assert par[name]["metrics"][key] == seq[name]["metrics"][key], (name, key)


@pytest.mark.parametrize("launcher,target", [
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_configs_compose(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher" if launcher == "slurm" else "hydra_plugins.hydra_joblib_launcher")
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "experiment=paper_cifar10_resnet18"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == -1
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("args", [
    ["line=glob(lr_m*)"], ["line=glob(*,exclude=benchmark)"], ["regime=choice(lr,lr_bs)"],
    ["model=m1,stdcnn", "dataset=mnist"], ["batch_size=range(32,129,32)"], ["~line"],
])
def test_group_check_passes_hydra_sweep_functions(args):
    from robusthp.run import check_group_choices

    check_group_choices(args)  # would exit with "unknown line 'glob(lr_m*)'" before


@pytest.mark.parametrize("arg,message", [
    ("line=glob(nothing*)", "line=glob(nothing*) matches no line; choose among: benchmark"),
    ("regime=choice(lr,adagrad)", "unknown regime 'adagrad'; choose one of: adam, benchmark, engm, lr, lr_bs, "
                                     "rmsprop, sgd_ma2023"),
])
def test_group_check_names_the_bad_choice_inside_a_sweep(arg, message, capsys):
    from robusthp.run import check_group_choices

    with pytest.raises(SystemExit) as exit_info:
        check_group_choices([arg])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"robusthp: error: {message}")


def test_data_root_stays_out_of_run_dir_names():
    assert sweep_name(["data.root=/somewhere/data", "batch_size=32"]) == sweep_name(["batch_size=32"])


def test_cell_names_longer_than_a_file_name_are_bounded_and_distinct():
    from robusthp.config_store import MAX_FILE_NAME, bounded_name

    long_a = "eval.adversarial.eps=[" + ",".join(f"0.{i:03d}" for i in range(1, 80)) + "]"
    long_b = long_a.replace("0.001", "0.002")
    assert len(long_a.encode()) > 255
    names = {job_dir(long_a), job_dir(long_b)}
    assert len(names) == 2 and all(len(n.encode()) <= MAX_FILE_NAME for n in names)
    assert job_dir(long_a) == job_dir(long_a)  # the same cell finds its directory again
    assert job_dir("batch_size=32,line=lr_m0") == "batch_size=32,line=lr_m0"  # short: unchanged
    assert len(bounded_name("é" * 200, 255).encode()) <= 255  # bytes, not characters


def test_a_sweep_cell_with_a_very_long_name_trains(synthetic_root, tmp_path):
    """Through the real entry point: a cell whose overrides exceed 255 bytes."""
    import os
    import subprocess
    import sys

    eps = "[" + ",".join(f"0.{i:03d}" for i in range(1, 60)) + "]"
    cmd = [sys.executable, "-m", "robusthp.run", "-m", "eval=none", "epochs=1", "data.val_size=50",
           "trainer.progress_bar=false", "batch_size=32,64", f"eval.adversarial.eps={eps}",
           f"hydra.sweep.dir={tmp_path}/sweep"]
    env = dict(os.environ, ROBUSTHP_DATA_DIR=str(synthetic_root))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted((tmp_path / "sweep").rglob("results.json"))
    assert len(results) == 2 and all(len(p.parent.name.encode()) <= 255 for p in results)
