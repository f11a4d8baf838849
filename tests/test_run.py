"""The Hydra entry point end to end, as a user runs it (subprocesses, synthetic data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["eval=none", "epochs=1", "data.val_size=50", "batch_size=32", "trainer.progress_bar=false"]


def run(args, root, tmp_path, check=True):
    env = dict(os.environ, ROBUSTHP_DATA_DIR=str(root), HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, "-m", "robusthp.run", *args, f"hydra.run.dir={tmp_path}/run",
           f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_one_epoch_run_writes_complete_results(synthetic_root, tmp_path):
    run([*FAST, "eval.validate=true", "model=stdcnn", "regime=lr_bs", "momentum=0.5", "seed=3"],
        synthetic_root, tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "ok" and res["error"] is None
    assert res["cell"] == {
        "dataset": "mnist", "model": "stdcnn", "regime": "lr_bs", "batch_size": 32,
        "momentum": 0.5, "lr": pytest.approx(0.005), "seed": 3, "epochs": 1, "rotation": 0.0,
        "adv_train": "none",
    }
    for key in ("test_acc", "val_acc", "train_loss"):
        assert isinstance(res["metrics"][key], float)
    assert 0 <= res["metrics"]["test_acc"] <= 1
    assert res["steps"] == -(-250 // 32)  # 300 synthetic training images - 50 val
    assert res["wall_time_s"] > 0 and res["env"]["torch"] and res["env"]["device"] == "cpu"
    assert res["config"]["batch_size"] == 32 and res["config"]["dataset"]["name"] == "mnist"


def test_same_seed_same_numbers(synthetic_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run([*FAST, "seed=1"], synthetic_root, a)
    run([*FAST, "seed=1"], synthetic_root, b)
    ra, rb = (json.loads((d / "run" / "results.json").read_text())["metrics"] for d in (a, b))
    assert ra["train_loss"] == rb["train_loss"] and ra["test_acc"] == rb["test_acc"]
    assert ra["val_acc"] is None  # eval=none: clean test accuracy only, no per-epoch validation


def test_two_job_multirun(synthetic_root, tmp_path):
    run(["-m", *FAST, "batch_size=32,64"], synthetic_root, tmp_path)
    results = sorted((tmp_path / "sweep").rglob("results.json"))
    cells = sorted(json.loads(p.read_text())["cell"]["batch_size"] for p in results)
    assert cells == [32, 64]


def test_divergence_is_recorded_and_the_sweep_goes_on(synthetic_root, tmp_path):
    run(["-m", *FAST, "regime=lr_bs", "regime.lr_bs_ratio=1000", "trainer.check_every=2", "batch_size=32,64"],
        synthetic_root, tmp_path)
    statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").rglob("results.json")]
    assert statuses == ["diverged", "diverged"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("dataset=imagenet", "unknown dataset 'imagenet'; choose one of: cifar10, fashion_mnist, mnist"),
        ("model=vgg", "unknown model 'vgg'; choose one of: c1, m1, p4cnn, preact_resnet18, resnet18, stdcnn, z2cnn"),
        ("regime=adagrad", "unknown regime 'adagrad'; choose one of: adam, benchmark, engm, lr, lr_bs, rmsprop, "
                           "sgd_ma2023"),
        ("regime=adam momentum=0.9", "regime 'adam' has no SGD momentum (its regime.beta1, regime.beta2 "
                                     "are not momentum); got momentum=0.9: drop the override"),
        ("batch_size=0", "batch_size must be >= 1, got 0"),
        ("batch_size=12.5", "batch_size must be an integer, got 12.5"),
        ("momentum=1.2", "momentum must be in [0, 1), got 1.2"),
        ("epochs=0", "epochs must be >= 1, got 0"),
        ("data.rotation=200", "data.rotation must be an angle in degrees from 0 to 180; got 200"),
        ("eval.universal.enabled=true eval.universal.attacks=[pgd]",
         "eval.universal.attacks: unknown 'pgd' in ['pgd']; choose from gradient, fgsm, deepfool"),
        ("eval.invariance.enabled=true eval.invariance.thetas=[0,200]",
         "eval.invariance.thetas must be angles in degrees from 0 to 180; got 200 in [0, 200]"),
        ("eval.adversarial.enabled=true eval.adversarial.attacks=[fgsm,foo]",
         "eval.adversarial.attacks: unknown 'foo' in ['fgsm', 'foo']; choose from fgsm, pgd, autoattack"),
        ("eval.adversarial.enabled=true eval.adversarial.pgd_restarts=0",
         "eval.adversarial.pgd_restarts must be >= 1, got 0"),
        ("logger=[csv,foo]", "unknown logger 'foo'; choose one of: csv, mlflow, tensorboard, wandb"),
        ("eval.adversarial.enabled=true eval.adversarial.eps=[0,0.1]",
         "eval.adversarial.eps must be numbers > 0 (eps 0 is the clean accuracy, already measured), "
         "got [0, 0.1]"),
        ("resume=maybe", "resume must be true or false, got 'maybe'"),
        ("eval.perturbation.enabled=true eval.perturbation.bands=785",
         "eval.perturbation.bands must be at most 784 (the DCT coefficients of a 28x28 mnist image), got 785"),
        ("adv_train=pgd adv_train.last_epochs=3", "adv_train.last_epochs must be at most epochs=1, got 3"),
        ("adv_train=pgd adv_train.eps=0",
         "adv_train.eps must be numbers > 0 (eps 0 is the clean accuracy, already measured), got 0"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(synthetic_root, tmp_path, override, message):
    proc = run([*FAST, *override.split()], synthetic_root, tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"robusthp: error: {message}"


def test_benchmark_rejects_a_momentum_override(synthetic_root, tmp_path):
    proc = run([*FAST, "regime=benchmark", "momentum=0.5"], synthetic_root, tmp_path, check=False)
    assert proc.returncode == 2 and "fixes momentum at 0.9" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_root_is_one_clear_line(tmp_path):
    proc = run([*FAST, "data.download=false"], tmp_path / "no_data_here", tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "no_data_here" in line and "MNIST/raw" in line


def test_evaluation_lands_in_results_json(synthetic_root, tmp_path):
    small_eval = ["eval=default", "eval.adversarial.num_samples=40", "eval.adversarial.pgd_steps=3",
                  "eval.hessian.num_samples=64", "eval.hessian.backend=lanczos"]
    run([*FAST, *small_eval, "model=stdcnn"], synthetic_root, tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    m, t = res["metrics"], res["timings_s"]
    assert res["status"] == "ok"
    assert 0 <= m["pgd_acc"] <= m["fgsm_acc"] <= 1 and 0 <= m["clean_acc"] <= 1
    assert m["adversarial_num_samples"] == 40 and m["hessian_num_samples"] == 64
    assert isinstance(m["hessian_top_eig"], float) and m["hessian_backend"] == "lanczos"
    assert t["adversarial"] > 0 and t["hessian"] > 0 and t["train"] > 0


@pytest.mark.parametrize("off,absent,present", [
    ("eval.adversarial.enabled=false", "fgsm_acc", "hessian_top_eig"),
    ("eval.hessian.enabled=false", "hessian_top_eig", "fgsm_acc"),
])
def test_each_evaluation_can_be_switched_off(synthetic_root, tmp_path, off, absent, present):
    small_eval = ["eval=default", "eval.adversarial.num_samples=20", "eval.adversarial.pgd_steps=2",
                  "eval.hessian.num_samples=32", "eval.hessian.backend=lanczos"]
    run([*FAST, *small_eval, off], synthetic_root, tmp_path)
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert absent not in metrics and present in metrics


def test_ddp_on_two_cpu_processes_keeps_the_global_batch(synthetic_root, tmp_path):
    """trainer.devices=2 (Lightning DDP, gloo): each process takes half of every global batch
    of 32, so an epoch is the same ceil(250 / 32) SGD steps as on one device."""
    proc = run([*FAST, "trainer.devices=2", "trainer.accelerator=cpu"], synthetic_root, tmp_path)
    results = list((tmp_path / "run").rglob("results.json"))
    assert len(results) == 1  # written by rank zero only
    res = json.loads(results[0].read_text())
    assert res["status"] == "ok" and res["steps"] == -(-250 // 32) and res["cell"]["batch_size"] == 32
    assert "robusthp: error" not in proc.stderr  # rank 1 succeeded too, and says nothing
    # the train loss and accuracy cover both ranks' halves: the single-device run's numbers
    # (DDP averages the two halves' gradients: the same steps up to float rounding)
    single = tmp_path / "single"
    single.mkdir()
    run([*FAST, "trainer.accelerator=cpu"], synthetic_root, single)
    one = json.loads((single / "run" / "results.json").read_text())["metrics"]
    assert res["metrics"]["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert res["metrics"]["train_acc"] == pytest.approx(one["train_acc"], abs=2 / 250)


def test_batch_size_must_divide_across_devices(synthetic_root, tmp_path):
    proc = run([*FAST, "batch_size=33", "trainer.devices=2"], synthetic_root, tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("robusthp: error: batch_size 33 does not divide across trainer.devices=2; "
                                   "the global batch size must be a multiple of the number of devices")


@pytest.mark.parametrize("model", ["p4cnn", "z2cnn"])
def test_the_rotation_study_runs_end_to_end(synthetic_root, tmp_path, model):
    # the CPU preset's evaluations, small, on the models without an nn.Linear head (P4CNN's
    # filters are 5-D: channels_last applies to the 4-D ones only)
    small_eval = ["experiment=invariance_mnist_cpu", f"model={model}", "data.rotation=90",
                  "data.train_subset=64", "data.test_subset=100", "eval.adversarial.num_samples=20",
                  "eval.adversarial.pgd_steps=2", "eval.adversarial.min_eps=false",
                  "eval.invariance.thetas=[0,90]", "eval.invariance.angles=[90]",
                  "eval.universal.n=8", "eval.universal.num_samples=40", "eval.universal.norms=[0,4]",
                  "trainer.channels_last=true"]
    run([*small_eval, "epochs=1", "data.val_size=50", "batch_size=32", "trainer.progress_bar=false"],
        synthetic_root, tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    m = res["metrics"]
    assert res["status"] == "ok" and res["cell"]["rotation"] == 90.0 and res["channels_last"] is True
    assert {"rot_acc@90", "rot_fixed_acc@90", "pgd_acc", "universal_flip@deepfool@4",
            "universal_invariant_cos@gradient"} <= set(m)
    assert m["rot_acc@0"] == pytest.approx(m["test_acc"], abs=1e-6) and m["universal_flip@gradient@0"] == 0


@pytest.mark.parametrize("loggers, folders", [("[csv]", {"logs"}), ("[csv,tensorboard]", {"logs", "tensorboard"})])
def test_several_loggers_from_the_command_line(synthetic_root, tmp_path, loggers, folders):
    """A list of the logger group, as the README shows it, through the real entry point."""
    run([*FAST, f"logger={loggers}"], synthetic_root, tmp_path)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "ok"
    for folder in folders:
        assert any((tmp_path / "run" / folder).rglob("*")), folder
