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
_SLOW = {"optimizers_cifar10_resnet18", "optimizers_cifar10_preact_resnet18"}


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


# ---- the optimizer study's presets at the authors' settings (Ma et al. 2023) ------------


def _settings(overrides):
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        return settings_from_config(compose("config", overrides=overrides))


FULL = ["optimizers_mnist_stdcnn", "optimizers_fashion_mnist_stdcnn", "optimizers_cifar10_resnet18",
        "optimizers_cifar10_preact_resnet18"]
CPU = ["optimizers_mnist_stdcnn_cpu", "optimizers_fashion_mnist_stdcnn_cpu"]


def test_every_optimizer_preset_is_listed():
    assert sorted(FULL + CPU) == [e for e in EXPERIMENTS if e.startswith("optimizers_")]


@pytest.mark.parametrize("experiment", FULL)
def test_full_presets_evaluate_as_the_authors(experiment):
    pert = _settings([f"experiment={experiment}"]).perturbation
    # noise on the whole test set (opt-robust/src/evaluation.py:46-117), AutoAttack on the
    # first 1,000 (evaluation.py:133)
    assert pert.enabled and pert.num_samples is None and pert.attack_num_samples == 1000
    assert pert.autoattack is True


@pytest.mark.parametrize("experiment", CPU)
def test_cpu_presets_keep_their_subset_and_skip_autoattack(experiment):
    pert = _settings([f"experiment={experiment}"]).perturbation
    assert (pert.num_samples, pert.attack_num_samples, pert.autoattack) == (500, None, False)


def test_fashion_mnist_presets_take_the_authors_fashion_budgets():
    # freq-robust/main.py:98-101: L-inf eps 0.01, 0.03, 0.05 (MNIST's are 0.05, 0.07, 0.1)
    for experiment in ("optimizers_fashion_mnist_stdcnn", "optimizers_fashion_mnist_stdcnn_cpu"):
        settings = _settings([f"experiment={experiment}"])
        assert settings.adversarial.eps == pytest.approx((0.01, 0.03, 0.05))
        assert settings.data.dataset == "fashion_mnist"


@pytest.mark.parametrize("regime, lr, drops", [("sgd_ma2023", 0.2, (100, 150)), ("adam", 2e-4, ()),
                                               ("rmsprop", 5e-4, ())])
def test_cifar10_preact_preset_is_the_authors_setting(regime, lr, drops):
    s = _settings(["experiment=optimizers_cifar10_preact_resnet18", f"regime={regime}"])
    assert s.model == "preact_resnet18" and s.data.dataset == "cifar10"
    assert s.model_kwargs == {"batchnorm": False, "input_normalization": False}
    assert (s.data.batch_size, s.train.epochs, s.data.val_size, s.train.validate) == (128, 200, 0, False)
    assert s.sgd.lr == pytest.approx(lr) and s.sgd.momentum == 0.0 and s.sgd.weight_decay == 0.0
    assert tuple(s.sgd.lr_drop_epochs) == drops and s.sgd.lr_drop_factor == pytest.approx(0.1)


# ---- the attack protocol of the presets -------------------------------------------------


@pytest.mark.parametrize("preset", [e for e in EXPERIMENTS if e.startswith("paper_") and e != "paper_reduced_cpu"])
def test_paper_presets_keep_fgsm_and_pgd40_primary_and_add_autoattack(preset):
    adv = _settings([f"experiment={preset}"]).adversarial
    assert adv.attacks[:2] == ("fgsm", "pgd") and adv.pgd_steps == 40 and adv.pgd_restarts == 1
    assert "autoattack" in adv.attacks and adv.autoattack_num_samples == 500


@pytest.mark.parametrize("preset, autoattack", [("adv_training_mnist", True), ("adv_training_mnist_cpu", False)])
def test_adversarial_training_presets_evaluate_with_restarts(preset, autoattack):
    adv = _settings([f"experiment={preset}"]).adversarial
    assert adv.pgd_restarts == 5
    assert ("autoattack" in adv.attacks) is autoattack


@pytest.mark.parametrize("preset", ["quick", "paper_reduced_cpu", "optimizers_mnist_stdcnn_cpu",
                                    "invariance_mnist_cpu"])
def test_cpu_presets_leave_autoattack_out(preset):
    assert "autoattack" not in _settings([f"experiment={preset}"]).adversarial.attacks
