"""``python -m robusthp.evaluate``: finished runs evaluated again from model.pt, no training.

One tiny run (synthetic MNIST, StdCNN, one epoch, ``eval=none``) is trained once per module;
each test evaluates its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from robusthp import evaluate
from robusthp.callbacks import AdversarialRobustness
from robusthp.catalog import get_spec
from robusthp.config import settings_from_config
from robusthp.config_store import UNNAMED_KEYS, register_resolvers
from robusthp.data import ImageDataModule
from robusthp.experiment import (
    AdversarialSettings,
    HessianSettings,
    build_callbacks,
    run_experiment,
)
from robusthp.hessian import top_eigenvalues
from robusthp.models import build_model
from robusthp.results import fingerprint

TRAIN = ["eval=none", "model=stdcnn", "epochs=1", "batch_size=32", "data.val_size=50",
         "trainer.progress_bar=false"]
ADV = ["eval.adversarial.num_samples=40", "eval.adversarial.pgd_steps=3"]
HES = ["eval.hessian.num_samples=8", "eval.hessian.backend=lanczos", "eval.hessian.max_iter=3",
       "eval.hessian.tol=0.01"]  # a rough estimate: an exact match with the core is the check


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """A finished run trained with eval=none, its config composed as robusthp.run does."""
    register_resolvers()
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*TRAIN, f"data.root={synthetic_root}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    out = tmp_path_factory.mktemp("trained") / "run"
    record = run_experiment(settings_from_config(cfg), out, config=config,
                            fingerprint=fingerprint(config, UNNAMED_KEYS))
    assert record["status"] == "ok" and "pgd_acc" not in record["metrics"]
    return out


@pytest.fixture
def run_dir(trained, tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("ROBUSTHP_DATA_DIR", raising=False)  # the recorded (synthetic) root
    return Path(shutil.copytree(trained, tmp_path / "sweep" / "batch_size=32"))


def loaded_model(run_dir: Path) -> tuple[torch.nn.Module, ImageDataModule]:
    """The run's model from model.pt and its data, built here (as evaluate should)."""
    record = json.loads((run_dir / "results.json").read_text())
    settings = settings_from_config(OmegaConf.create(record["config"]))
    spec = get_spec("mnist")
    model = build_model("stdcnn", in_channels=1, num_classes=10, image_size=spec.image_size,
                        mean=spec.mean, std=spec.std)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model = model.to(memory_format=torch.channels_last).eval()  # as on CPU in training
    data = ImageDataModule(replace(settings.data, channels_last=True, on_device=False))
    data.setup()
    return model, data


def test_run_trained_without_eval_gets_adversarial_metrics_results_json_untouched(run_dir):
    before = {name: (run_dir / name).read_bytes() for name in ("results.json", "model.pt")}
    lines = []
    rows = evaluate.evaluate_runs(run_dir.parent, ADV, echo=lines.append)
    assert [r["status"] for r in rows] == ["ok"]
    name = "eval.adversarial.num_samples=40__eval.adversarial.pgd_steps=3"
    path = run_dir / "evaluations" / f"{name}.json"
    assert rows[0]["file"] == str(path)
    saved = json.loads(path.read_text())
    assert saved["status"] == "ok" and saved["error"] is None and saved["overrides"] == ADV
    assert saved["evaluations"] == ["adversarial"] and saved["schema"] == 1
    metrics = saved["metrics"]
    assert {"clean_acc", "fgsm_acc", "pgd_acc", "fgsm_acc@0.3", "pgd_acc@0.3"} <= metrics.keys()
    assert not any(k.startswith("hessian") for k in metrics)  # only what was asked for
    assert metrics["adversarial_num_samples"] == 40 and saved["timings_s"]["adversarial"] > 0
    assert saved["env"]["torch"] and saved["fingerprint"] and saved["run_fingerprint"]
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name
    assert lines[0].startswith(f"[1/1] {run_dir} ok ") and lines[-1].startswith("1 run: 1 evaluated")
    # independently: the callback's own evaluation of the loaded model on the run's test data
    model, data = loaded_model(run_dir)
    cb = AdversarialRobustness(eps=0.3, pgd_steps=3, num_samples=40, progress=False)
    direct = cb.evaluate(model, data.test_dataloader())
    for key in ("clean_acc", "fgsm_acc", "pgd_acc"):
        assert metrics[key] == direct[key], key

    again = evaluate.evaluate_runs(run_dir, ADV, echo=lines.append)  # resumable
    assert [(r["status"], r["reason"]) for r in again] == [("skipped", "already evaluated")]
    assert json.loads(path.read_text()) == saved


def test_hessian_override_runs_only_the_hessian(run_dir):
    rows = evaluate.evaluate_runs(run_dir, HES, echo=lambda line: None)
    metrics = rows[0]["metrics"]
    assert rows[0]["status"] == "ok" and not any("_acc" in k for k in metrics)
    assert metrics["hessian_num_samples"] == 8 and metrics["hessian_split"] == "train"
    model, data = loaded_model(run_dir)
    x, y = next(iter(data.eval_train_dataloader()))  # the run's training split, unshuffled
    direct = top_eigenvalues(model, [(x[:8], y[:8])], backend="lanczos", max_iter=3, tol=0.01)
    assert metrics["hessian_top_eig"] == pytest.approx(direct.top, rel=1e-4)


def _build_callbacks_passes_split() -> bool:
    settings = settings_from_config(OmegaConf.create({"model": {"name": "stdcnn"},
                                                      "regime": {"name": "lr"}}))
    settings = replace(settings, adversarial=AdversarialSettings(enabled=False),
                       hessian=HessianSettings(split="test"))
    return build_callbacks(settings)[0].split == "test"


@pytest.mark.skipif(not _build_callbacks_passes_split(),
                    reason="experiment.build_callbacks does not pass split=hes.split yet")
def test_hessian_of_the_test_loss_sits_beside_the_run_keys(run_dir):
    rows = evaluate.evaluate_runs(run_dir, [*HES, "eval.hessian.split=test"], echo=lambda line: None)
    metrics = rows[0]["metrics"]
    assert rows[0]["status"] == "ok" and all(k.endswith("@test") for k in metrics), metrics
    assert metrics["hessian_split@test"] == "test" and metrics["hessian_num_samples@test"] == 8
    model, data = loaded_model(run_dir)
    x, y = next(iter(data.test_dataloader()))
    direct = top_eigenvalues(model, [(x[:8], y[:8])], backend="lanczos", max_iter=3, tol=0.01)
    assert metrics["hessian_top_eig@test"] == pytest.approx(direct.top, rel=1e-4)
    saved = json.loads(Path(rows[0]["file"]).read_text())
    assert "hessian@test" in saved["timings_s"] and saved["evaluations"] == ["hessian"]


def test_a_failed_run_is_recorded_and_the_others_go_on(run_dir, capsys):
    broken = Path(shutil.copytree(run_dir, run_dir.parent / "batch_size=64"))
    (broken / "model.pt").write_bytes(b"not a state dict")
    diverged = Path(shutil.copytree(run_dir, run_dir.parent / "batch_size=128"))
    record = json.loads((diverged / "results.json").read_text())
    (diverged / "results.json").write_text(json.dumps({**record, "status": "diverged"}))
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(run_dir.parent), *ADV])
    assert exit_.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"[1/3] {diverged} skipped (status diverged)"
    assert out[1].startswith(f"[2/3] {run_dir} ok ")  # sorted: batch_size=32 before =64
    assert out[2].startswith(f"[3/3] {broken} failed (")
    assert out[-1].startswith("3 runs: 1 evaluated, 1 failed, 1 skipped in ")
    name = "eval.adversarial.num_samples=40__eval.adversarial.pgd_steps=3"
    failed = json.loads((broken / "evaluations" / f"{name}.json").read_text())
    assert failed["status"] == "failed" and "\n" not in failed["error"]
    assert "Traceback" in (broken / "evaluations" / f"{name}.log").read_text()
    assert not (diverged / "evaluations").exists()


@pytest.mark.slow  # ~50 s here: each worker process imports torch and Lightning
def test_parallel_launcher_spreads_runs_over_processes(run_dir):
    other = Path(shutil.copytree(run_dir, run_dir.parent / "batch_size=64"))
    rows = evaluate.evaluate_runs(run_dir.parent, [*ADV, "hydra/launcher=joblib",
                                                   "hydra.launcher.n_jobs=2"], echo=print)
    assert sorted(r["run_dir"] for r in rows) == sorted([str(run_dir), str(other)])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["metrics"]["pgd_acc"] == rows[1]["metrics"]["pgd_acc"]  # the same model
    threads = [json.loads(Path(r["file"]).read_text())["env"]["threads"] for r in rows]
    assert threads == [max(1, os.cpu_count() // 2)] * 2  # joblib's loky: cores / n_jobs each


# the CLI's refusals, several in one subprocess: one line, exit 2, torch never imported
_REFUSE = """
import contextlib, io, json, sys
from robusthp import evaluate
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            evaluate.main(argv)
        except SystemExit as e:
            out.append([e.code, err.getvalue()])
print(json.dumps({"calls": out, "torch": "torch" in sys.modules}))
"""


def test_bad_overrides_are_one_line_and_exit_2_before_torch_loads(run_dir):
    cases = {
        "epochs=3": "robusthp.evaluate cannot override epochs",
        "eval.adversarial.epss=0.1": "unknown key eval.adversarial.epss; eval.adversarial takes: "
                                     "enabled, eps,",
        "eval.adversarial.eps_space=pixels": "eval.adversarial.eps_space must be one of pixel, "
                                             "normalized or a list of them, got 'pixels'",
        "eval.hessian.split=val": "eval.hessian.split must be one of train, test, got 'val'",
        "eval=full": "unknown eval 'full'; choose one of: default, none",
    }
    argvs = [[str(run_dir), override] for override in cases] + [[str(run_dir / "nowhere")]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _REFUSE, json.dumps(argvs)], capture_output=True,
                          text=True, env=env, timeout=120)
    result = json.loads(proc.stdout)
    assert result["torch"] is False
    for (code, stderr), message in zip(result["calls"], [*cases.values(), "no such file"],
                                       strict=True):
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert stderr.startswith(f"robusthp: error: {message}"), stderr
    assert not (run_dir / "evaluations").exists()


def test_file_names_are_readable_and_safe():
    name = evaluate.parse_overrides
    assert name([]).name == "default"
    assert name(["eval.adversarial.eps_space=normalized"]).name == "eval.adversarial.eps_space=normalized"
    assert name(["eval.adversarial.eps=[0.3,0.1]", "trainer.threads=1",
                 "hydra/launcher=parallel"]).name == "eval.adversarial.eps=0.3,0.1"
    long = name([f"eval.adversarial.eps=[{','.join(str(i / 100) for i in range(60))}]"]).name
    assert len(long) == evaluate.MAX_NAME
    assert name(["eval.hessian.split=test"]).sections == ("hessian",)
    assert name(["eval=default", "eval.hessian.split=test"]).sections == ("adversarial", "hessian")
    assert name(["hydra/launcher=parallel"]).n_jobs == -1
