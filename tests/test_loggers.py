"""``logger=``: Lightning's own loggers, offline, each getting the same metric names."""

import struct
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from robusthp.config import ConfigError, settings_from_config
from robusthp.experiment import run_experiment
from robusthp.settings import LOGGERS, logger_choices

# what a run logs: training, the evaluation callbacks (logged in hooks where module.log is
# refused) and the clean test accuracy
EXPECTED = ("train/loss", "train/acc", "test/acc", "adv/pgd_acc", "adv/fgsm_acc")


def _run(logger, root, tmp_path):
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"logger={logger}", f"data.root={root}", "data.download=false", "data.val_size=50",
            "epochs=1", "batch_size=32", "eval.validate=false", "eval.hessian.enabled=false",
            "eval.adversarial.num_samples=16", "eval.adversarial.pgd_steps=2",
            "trainer.progress_bar=false"])
    settings = settings_from_config(cfg)
    record = run_experiment(settings, tmp_path)
    assert record["status"] == "ok", record["error"]
    return settings


def _tfevent_tags(folder: Path) -> set[str]:
    """Scalar tags of TensorBoard event files (TFRecord framing: length, crc, data, crc)."""
    from tensorboard.compat.proto.event_pb2 import Event

    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            i += 12 + length + 4
    return tags


def test_csv_is_the_default(synthetic_root, tmp_path):
    settings = _run("csv", synthetic_root, tmp_path)
    assert list(settings.train.loggers) == ["csv"]
    header = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert set(EXPECTED) <= set(header.split(","))


def test_tensorboard(synthetic_root, tmp_path):
    _run("tensorboard", synthetic_root, tmp_path)
    assert set(EXPECTED) <= _tfevent_tags(tmp_path / "tensorboard")


def test_wandb_offline(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run("wandb", synthetic_root, tmp_path)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()  # history keys are stored as plain strings
    assert all(key.encode() in data for key in EXPECTED)


def test_mlflow_local_store(synthetic_root, tmp_path):
    _run("mlflow", synthetic_root, tmp_path)
    (run_dir,) = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    assert all((run_dir / "metrics" / key).is_file() for key in EXPECTED)


def test_several_at_once(synthetic_root, tmp_path):
    settings = _run("[csv,tensorboard]", synthetic_root, tmp_path)
    assert list(settings.train.loggers) == ["csv", "tensorboard"]
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()
    assert set(EXPECTED) <= _tfevent_tags(tmp_path / "tensorboard")


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"^logger=wandb needs the wandb package: pip install 'robusthp\[wandb\]'$"):
        logger_choices("wandb", "logger")


def test_unknown_logger_lists_the_valid_ones():
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=["+logger.neptune={}"])
    with pytest.raises(ConfigError, match="unknown logger 'neptune'; choose among: " + ", ".join(LOGGERS)):
        settings_from_config(cfg)
