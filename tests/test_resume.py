"""A run killed mid-way resumes from its last epoch checkpoint and ends where an unbroken run does."""

import pytest
import pytorch_lightning as pl

from robusthp import experiment
from robusthp.data import DataSettings
from robusthp.experiment import (
    AdversarialSettings,
    HessianSettings,
    RunSettings,
    TrainSettings,
    run_experiment,
)
from robusthp.optim import resolve_sgd


class _Crash(pl.Callback):
    """Kills the fit when epoch ``at`` starts (as a power cut or a SLURM timeout would)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise RuntimeError("killed")


class _CrashInEvaluation(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        raise RuntimeError("killed during evaluation")


def _settings(root, epochs=3):
    return RunSettings(
        data=DataSettings(dataset="mnist", root=str(root), batch_size=32, val_size=50, download=False),
        model="stdcnn", sgd=resolve_sgd("benchmark", batch_size=32),
        train=TrainSettings(epochs=epochs, seed=5, progress_bar=False),
        adversarial=AdversarialSettings(enabled=True, eps=(0.1,), pgd_steps=2, num_samples=20),
        hessian=HessianSettings(enabled=False),
    )


def _with_extra_callback(monkeypatch, callback):
    plain = experiment.build_callbacks
    monkeypatch.setattr(experiment, "build_callbacks", lambda s: [*plain(s), callback])


@pytest.mark.parametrize("crash", [_Crash(at=2), _CrashInEvaluation()], ids=["mid-training", "in-evaluation"])
def test_killed_run_resumes_to_the_same_result(synthetic_root, tmp_path, monkeypatch, crash):
    unbroken = run_experiment(_settings(synthetic_root), tmp_path / "unbroken")
    with monkeypatch.context() as m:
        _with_extra_callback(m, crash)
        killed = run_experiment(_settings(synthetic_root), tmp_path / "killed")
    assert killed["status"] == "failed" and "killed" in killed["error"]
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").is_file()
    resumed = run_experiment(_settings(synthetic_root), tmp_path / "killed")
    assert resumed["status"] == "ok"
    for key in ("train_loss", "test_acc", "val_acc", "fgsm_acc", "pgd_acc", "clean_acc"):
        assert resumed["metrics"][key] == unbroken["metrics"][key], key
    assert resumed["steps"] == unbroken["steps"]
    assert (tmp_path / "killed" / "model.pt").is_file()
    assert not (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()  # finished: removed


def test_model_pt_is_written_atomically(tmp_path):
    """A save that fails midway (here: an object that cannot be pickled, after the
    file was opened) leaves the earlier model.pt intact and no temporary file."""
    import torch

    from robusthp.experiment import save_atomic

    path = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    import pickle

    with pytest.raises((AttributeError, pickle.PicklingError)):  # a lambda does not pickle
        save_atomic({"w": torch.zeros(3), "bad": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_corrupt_checkpoint_is_named_moved_aside_and_not_resumed(tmp_path, caplog):
    from types import SimpleNamespace

    from robusthp.experiment import _resume_path

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (ckpt / "fingerprint").write_text("abc\n")
    settings = SimpleNamespace(train=SimpleNamespace(checkpoint=True))
    with caplog.at_level("WARNING", logger="robusthp.experiment"):
        assert _resume_path(settings, tmp_path, "abc") is None
    assert not (ckpt / "last.ckpt").exists()
    (aside,) = ckpt.glob("last.ckpt.corrupt-*")
    assert aside.read_bytes() == b"PK\x03\x04 truncated"
    assert any("last.ckpt is unreadable" in r.getMessage() and "training from scratch" in r.getMessage()
               for r in caplog.records)
