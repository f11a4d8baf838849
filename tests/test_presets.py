"""Every preset and every line composes into settings AND takes one real SGD step.

Composing alone would not catch a preset whose settings fail only when the run is built
(a model option its builder refuses, a dataset the model cannot take, a regime key the
optimizer factory does not know). Each case here runs ``run_experiment`` in-process on the
synthetic files (tests/synthetic_data.py) with exactly one training batch.
"""

from dataclasses import replace
from importlib import resources

import pytest
from hydra import compose, initialize_config_module

from robusthp.config import settings_from_config
from robusthp.experiment import run_experiment

CONF = resources.files("robusthp.conf")
EXPERIMENTS = sorted(p.name[:-5] for p in CONF.joinpath("experiment").iterdir() if p.name.endswith(".yaml"))
LINES = sorted(p.name[:-5] for p in CONF.joinpath("line").iterdir() if p.name.endswith(".yaml"))
ONE_STEP = ["epochs=1", "eval=none", "data.val_size=50", "data.test_subset=16",
            "data.download=false", "trainer.progress_bar=false", "trainer.check_every=1"]


def _one_step_settings(overrides, root):
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *ONE_STEP, f"data.root={root}"])
    settings = settings_from_config(cfg)
    # one batch of the preset's own (global) batch size: exactly one SGD step
    data = replace(settings.data, train_subset=settings.data.batch_size)
    return replace(settings, data=data, train=replace(settings.train, checkpoint=False))


# ResNet18's after-training measures (Lipschitz bound, L2 PGD, band noise) on the CPU: ~90 s
_SLOW = {"optimizers_cifar10_resnet18"}


@pytest.mark.parametrize("overrides", [pytest.param([f"experiment={e}"], marks=pytest.mark.slow)
                                       if e in _SLOW else [f"experiment={e}"] for e in EXPERIMENTS]
                         + [[f"line={line}"] for line in LINES]
                         + [[f"regime={r}"] for r in ("sgd_ma2023", "adam", "rmsprop")]
                         + [["experiment=invariance_mnist_cpu", f"model={m}", "data.rotation=90",
                             "trainer.channels_last=auto"] for m in ("p4cnn", "z2cnn")],
                         ids=lambda o: " ".join(o[:2]))
def test_preset_takes_one_sgd_step(overrides, synthetic_root, tmp_path):
    settings = _one_step_settings(overrides, synthetic_root)
    record = run_experiment(settings, tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["steps"] == 1
    assert record["metrics"]["train_loss"] is not None and record["metrics"]["train_loss"] > 0
    assert record["sgd"]["regime"] == settings.sgd.regime
