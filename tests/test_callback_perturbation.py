"""PerturbationRobustness in real Trainers; the user's classes are test_callback_adversarial's."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from test_callback_adversarial import (
    NAMESPACES,
    logged_metrics,
    make_trainer,
    synthetic,
    user_classes,
)
from torch.utils.data import DataLoader, TensorDataset

from robusthp.callbacks import PerturbationRobustness
from robusthp.catalog import MA2023_BUDGETS

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


@pytest.fixture(autouse=True)
def _seeded():
    """Model init and shuffling draw from the global RNG: fix it per test."""
    torch.manual_seed(0)


def small_callback(**kwargs) -> PerturbationRobustness:
    settings = {"noise_var": [0.01, 0.1], "bands": 3, "band_var": 0.01, "l2_eps": [0.5], "l2_steps": 3,
                "num_samples": 48, "batch_size": 16, "progress": False}
    return PerturbationRobustness(**{**settings, **kwargs})


SMALL_KEYS = {
    "perturbation_clean_acc", "gaussian_acc@0.01", "gaussian_acc@0.1",
    "band_acc@0", "band_acc@1", "band_acc@2", "band_drop@0", "band_drop@1", "band_drop@2",
    "pgd_l2_acc@0.5", "perturbation_num_samples", "perturbation_bands", "perturbation_time_s",
    "perturbation_attack_num_samples", "perturbation_attack_clean_acc",
}


def loader(n: int = 40, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(*synthetic(n, seed=2)), batch_size=batch_size)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fit_end_results_and_logged_metrics(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.fit(Net(), datamodule=Data())

    assert set(cb.results) == SMALL_KEYS
    assert cb.results["perturbation_num_samples"] == 48
    assert cb.results["perturbation_bands"] == 3 and isinstance(cb.results["perturbation_bands"], int)
    assert cb.results["perturbation_time_s"] > 0
    clean = cb.results["perturbation_clean_acc"]
    for i in range(3):
        assert cb.results[f"band_drop@{i}"] == pytest.approx(clean - cb.results[f"band_acc@{i}"])
    for key in SMALL_KEYS:
        if "_acc" in key:
            assert 0.0 <= cb.results[key] <= 1.0
    assert cb.results["pgd_l2_acc@0.5"] <= clean
    logged = logged_metrics(trainer)
    for key in SMALL_KEYS:
        if "_acc" in key or key.startswith("band_drop@"):
            assert logged[f"pert/{key}"] == pytest.approx(cb.results[key])
    assert "pert/perturbation_time_s" not in logged


def test_test_end_under_inference_mode(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(on="test_end", bands=0, noise_var=[0.05])
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    assert cb.results == {}
    trainer.test(module, datamodule=data)  # PGD-L2 needs autograd under inference mode
    assert {"perturbation_clean_acc", "gaussian_acc@0.05", "pgd_l2_acc@0.5"} <= set(cb.results)
    assert not any(k.startswith("band_") for k in cb.results)
    assert cb.results["perturbation_bands"] == 0


def test_side_effects_and_reproducible(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback()
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module = Net()
    trainer.fit(module, datamodule=Data())
    first = dict(cb.results)

    module.train()
    module.net[1].eval()
    modes = [m.training for m in module.modules()]
    module.net[5].weight.grad = torch.ones_like(module.net[5].weight)
    module.net[0].weight.grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    rng = torch.get_rng_state()
    cb.on_train_end(trainer, module)  # the hook again, by hand
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in module.modules()] == modes
    for p, before in zip(module.parameters(), grads, strict=True):
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    for key in SMALL_KEYS - {"perturbation_time_s"}:  # seeded: the same numbers again
        assert cb.results[key] == first[key]


def test_each_noise_has_its_own_generator():
    """Adding band noise, or another variance, does not change a variance's draws."""
    _, Net, _ = user_classes("lightning.pytorch")
    model = Net().net
    alone = small_callback(noise_var=[0.3], bands=0, l2_eps=[], num_samples=None, batch_size=None)
    more = small_callback(noise_var=[0.2, 0.3], bands=2, l2_eps=[], num_samples=None, batch_size=None)
    a, b = alone.evaluate(model, loader()), more.evaluate(model, loader())
    assert a["gaussian_acc@0.3"] == b["gaussian_acc@0.3"]
    assert set(a) == {"perturbation_clean_acc", "gaussian_acc@0.3", "perturbation_num_samples",
                      "perturbation_bands", "perturbation_time_s"}
    assert a["perturbation_num_samples"] == 40


def test_budgets_from_the_dataset(caplog):
    mnist = PerturbationRobustness(dataset="mnist")
    assert mnist.noise_var == MA2023_BUDGETS["mnist"].noise_var == (0.01, 0.05, 0.1)
    assert mnist.l2_eps == (0.5, 0.7, 1.0) and mnist.linf_eps == ()  # AutoAttack off
    cifar = PerturbationRobustness(dataset="cifar10", autoattack=True, l2_eps=[0.25])
    assert cifar.noise_var == (0.001, 0.005, 0.007) and cifar.l2_eps == (0.25,)
    assert cifar.linf_eps == pytest.approx((1 / 255, 2 / 255, 4 / 255))
    assert mnist.bands == 10 and mnist.num_samples == 1000 and mnist.attack_num_samples is None
    # band variances from the authors' freq-robust/eval_AA_cluster.py:61, :77, :96
    assert (mnist.band_var, cifar.band_var) == (0.1, 0.01)
    assert PerturbationRobustness(dataset="fashion_mnist").band_var == 0.1
    assert PerturbationRobustness(dataset="cifar10", band_var=0.2).band_var == 0.2
    keys = set(cifar.perturbation_fns(torch.device("cpu")))
    assert {"gaussian@0.001", "band@9", "pgd_l2@0.25", "autoattack_linf@0.00392157",
            "autoattack_l2@0.25"} <= keys
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.perturbation"):
        other = PerturbationRobustness(dataset="svhn", l2_eps=[0.1])
    assert other.noise_var == (0.01, 0.05, 0.1) and "no budgets for dataset 'svhn'" in caplog.text
    assert PerturbationRobustness(noise_var=[], l2_eps=[], bands=0).noise_var == ()  # no dataset needed


def test_autoattack_keys():
    _, Net, _ = user_classes("lightning.pytorch")
    cb = small_callback(noise_var=[], bands=0, l2_eps=[3.0], autoattack=True, linf_eps=[0.5],
                        num_samples=8, batch_size=None)
    results = cb.evaluate(Net().net, loader(8))
    assert {"autoattack_linf_acc@0.5", "autoattack_l2_acc@3", "pgd_l2_acc@3"} <= set(results)
    assert results["autoattack_linf_acc@0.5"] <= results["perturbation_clean_acc"]


def test_attacks_run_on_the_first_attack_num_samples_and_noise_on_all():
    _, Net, _ = user_classes("lightning.pytorch")
    model = Net().net
    split = small_callback(num_samples=None, attack_num_samples=20).evaluate(model, loader(40))
    first = small_callback(num_samples=20).evaluate(model, loader(40))  # all on the first 20
    whole = small_callback(num_samples=None).evaluate(model, loader(40))  # all on all 40
    assert split["perturbation_num_samples"] == 40 and split["perturbation_attack_num_samples"] == 20
    assert whole["perturbation_attack_num_samples"] == 40
    assert split["pgd_l2_acc@0.5"] == first["pgd_l2_acc@0.5"]
    assert split["perturbation_attack_clean_acc"] == first["perturbation_clean_acc"]
    for key in ("perturbation_clean_acc", "gaussian_acc@0.1", "band_acc@2"):
        assert split[key] == whole[key]


def test_a_diverged_model_is_skipped():
    _, Net, _ = user_classes("lightning.pytorch")
    cb, module = small_callback(), Net()
    module.diverged = True
    cb.on_train_end(SimpleNamespace(interrupted=False, is_global_zero=True), module)
    assert cb.results == {"perturbation_skipped": "diverged"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_var": None}, "noise_var=None .* dataset is None"),
        ({"l2_eps": None}, "l2_eps=None .* dataset is None"),
        ({"autoattack": True}, "linf_eps=None .* dataset is None"),
        ({"noise_var": [0.01, -0.1]}, "noise_var must be a number >= 0 .* got -0.1"),
        ({"noise_var": [0.01, 0.01]}, "distinct"),
        ({"l2_eps": "big"}, "l2_eps must be"),
        ({"bands": -1}, "bands must be >= 0, got -1"),
        ({"band_var": 0.0}, "band_var must be a positive number, got 0.0"),
        ({"band_var": None}, "band_var=None .* dataset is None"),
        ({"attack_num_samples": 0}, "attack_num_samples must be >= 1, got 0"),
        ({"l2_steps": 0}, "l2_steps must be >= 1, got 0"),
        ({"autoattack": "yes"}, "autoattack must be true or false, got 'yes'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"num_samples": 0}, "num_samples"),
        ({"on": "validation_end"}, "valid: fit_end, test_end"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        small_callback(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("PerturbationRobustness: ")


def test_bad_band_count_for_the_images():
    _, Net, _ = user_classes("lightning.pytorch")
    cb = small_callback(bands=65, noise_var=[], l2_eps=[])  # 8x8 images: 64 coefficients
    with pytest.raises(ValueError, match="bands must be an integer in \\[1, 64\\]"):
        cb.evaluate(Net().net, loader())
