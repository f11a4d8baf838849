"""UniversalPerturbation in real Trainers; the user's classes are test_callback_adversarial's."""

from __future__ import annotations

import logging
import math
import random
from types import SimpleNamespace

import numpy as np
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

from robusthp.callbacks.universal import UniversalPerturbation

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]

ATTACKS = ("gradient", "fgsm", "deepfool")
NORMS = (0, 1, 2.5)
N, NUM_SAMPLES = 8, 40


@pytest.fixture(autouse=True)
def _seeded():
    """Model init and shuffling draw from the global RNG: fix it per test."""
    torch.manual_seed(0)


def small_callback(**kwargs) -> UniversalPerturbation:
    settings = {"n": N, "norms": NORMS, "num_samples": NUM_SAMPLES, "batch_size": 16, "progress": False}
    return UniversalPerturbation(**{**settings, **kwargs})


def expected_keys(attacks=ATTACKS, norms=("0", "1", "2.5"), invariant=True) -> set[str]:
    keys = {"universal_n", "universal_num_samples", "universal_time_s"}
    for a in attacks:
        keys.add(f"universal_sv_ratio@{a}")
        for kind in ("flip", "error", "flip_unclamped", "error_unclamped"):
            keys |= {f"universal_{kind}@{a}@{s}" for s in norms}
        if invariant:
            keys.add(f"universal_invariant_cos@{a}")
    if invariant:
        keys.add("universal_invariant_sv_ratio")
    return keys


def loader(n: int = 40, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(*synthetic(n, seed=2)), batch_size=batch_size)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fit_end_results_directions_and_logged_metrics(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, [cb])
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)

    r = cb.results
    assert set(r) == expected_keys()
    assert r["universal_n"] == N and isinstance(r["universal_n"], int)
    assert r["universal_num_samples"] == NUM_SAMPLES - N and isinstance(r["universal_num_samples"], int)
    assert r["universal_time_s"] > 0
    # the held-out points: test samples N .. NUM_SAMPLES of the datamodule, in order
    x, y = data.test_set.tensors
    x, y = x[N:NUM_SAMPLES], y[N:NUM_SAMPLES]
    with torch.no_grad():
        module.eval()
        clean = module(x).argmax(1)
    clean_error = float((clean != y).double().mean())
    for a in ATTACKS:
        assert 1 / N - 1e-6 <= r[f"universal_sv_ratio@{a}"] <= 1 + 1e-6
        assert 0 <= r[f"universal_invariant_cos@{a}"] <= 1 + 1e-6
        for suffix in ("", "_unclamped"):
            assert r[f"universal_flip{suffix}@{a}@0"] == 0.0
            assert r[f"universal_error{suffix}@{a}@0"] == pytest.approx(clean_error)
        d = cb.directions[a]
        assert d.shape == (1, 8, 8) and d.device.type == "cpu"
        assert float(d.norm()) == pytest.approx(1.0, abs=1e-5)
        # the stored direction gives the reported rate (an independent count)
        with torch.no_grad():
            moved = module((x + 2.5 * d).clamp(0, 1)).argmax(1)
        assert r[f"universal_flip@{a}@2.5"] == pytest.approx(float((moved != clean).double().mean()))
        assert r[f"universal_invariant_cos@{a}"] == pytest.approx(
            abs(float((d * cb.directions["invariant"]).sum())), abs=1e-5)
    assert set(cb.directions) == {*ATTACKS, "invariant"}
    assert 1 / N - 1e-6 <= r["universal_invariant_sv_ratio"] <= 1 + 1e-6

    logged = logged_metrics(trainer)
    for key in expected_keys() - {"universal_n", "universal_num_samples", "universal_time_s"}:
        assert logged[f"uap/{key}"] == pytest.approx(r[key])
    assert not {"uap/universal_time_s", "uap/universal_n", "uap/universal_num_samples"} & set(logged)


def test_test_end_under_inference_mode(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(on="test_end", attacks="deepfool", invariant=False, norms=[1])
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    assert cb.results == {}
    trainer.test(module, datamodule=data)  # the directions need autograd under inference mode
    assert set(cb.results) == expected_keys(("deepfool",), ("1",), invariant=False)
    assert set(cb.directions) == {"deepfool"}


def test_side_effects_and_reproducible(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback()
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module = Net()
    trainer.fit(module, datamodule=Data())
    first, first_dirs = dict(cb.results), dict(cb.directions)

    module.train()
    module.net[1].eval()
    modes = [m.training for m in module.modules()]
    module.net[5].weight.grad = torch.ones_like(module.net[5].weight)
    module.net[0].weight.grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    cb.on_train_end(trainer, module)  # the hook again, by hand
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert [m.training for m in module.modules()] == modes
    for p, before in zip(module.parameters(), grads, strict=True):
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    for key in set(first) - {"universal_time_s"}:  # deterministic: the same numbers again
        assert cb.results[key] == first[key] or (math.isnan(first[key]) and math.isnan(cb.results[key]))
    for name, d in first_dirs.items():
        assert torch.equal(cb.directions[name], d)


def test_evaluate_without_a_trainer_and_too_few_samples(caplog):
    _, Net, _ = user_classes("lightning.pytorch")
    model = Net().net
    cb = small_callback(attacks=["gradient"], num_samples=None, batch_size=None)
    results = cb.evaluate(model, loader(20))
    assert results["universal_num_samples"] == 12
    assert set(results) == expected_keys(("gradient",))
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.universal"):
        skipped = cb.evaluate(model, loader(N))
    assert skipped == {"universal_skipped": f"too few samples: {N} <= n={N}"}
    assert "too few samples" in caplog.text


@pytest.mark.filterwarnings("ignore:.*exactly zero input gradient")
def test_clamped_and_unclamped_keys_where_pixels_saturate():
    """All-white images, and a model that says class 1 once the pixels sum above 64.5:
    every attack's direction pushes all pixels up (+1/8 each), which the clamp undoes."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(64), torch.ones(64)]))
        model[1].bias.copy_(torch.tensor([64.5, 0.0]))
    data = DataLoader(TensorDataset(torch.ones(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)),
                      batch_size=8)
    cb = small_callback(norms=[0, 1])
    r = cb.evaluate(model, data)
    for a in ATTACKS:
        torch.testing.assert_close(cb.directions[a], torch.full((1, 8, 8), 1 / 8))
        assert r[f"universal_sv_ratio@{a}"] == pytest.approx(1.0, abs=1e-6)
        assert r[f"universal_flip@{a}@1"] == r[f"universal_error@{a}@1"] == 0.0  # x + u = x
        assert r[f"universal_flip_unclamped@{a}@1"] == r[f"universal_error_unclamped@{a}@1"] == 1.0
        assert r[f"universal_flip_unclamped@{a}@0"] == 0.0


def test_a_diverged_model_is_skipped():
    _, Net, _ = user_classes("lightning.pytorch")
    cb, module = small_callback(), Net()
    module.diverged = True
    cb.on_train_end(SimpleNamespace(interrupted=False, is_global_zero=True), module)
    assert cb.results == {"universal_skipped": "diverged"}


def test_defaults():
    cb = UniversalPerturbation()
    assert cb.attacks == ATTACKS and cb.n == 64 and cb.num_samples == 1000
    assert cb.norms == (0, 1, 2, 3, 4, 6, 8, 10) and cb.invariant and cb.delta_degrees == 2.0
    assert cb.on == ("fit_end",) and cb.batch_size == 1000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attacks": ("pgd",)},
         "attacks: unknown 'pgd' in \\('pgd',\\); choose from gradient, fgsm, deepfool"),
        ({"attacks": ("fgsm", "fgsm")}, "attacks: a repeated name"),
        ({"attacks": ()}, "attacks must name at least one entry"),
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"num_samples": 8}, "num_samples must exceed n .* num_samples=8, n=8"),
        ({"num_samples": 0}, "num_samples"),
        ({"norms": [1, -1]}, "norms must be a number >= 0 .* got -1"),
        ({"norms": [1, 1.0]}, "distinct"),
        ({"invariant": "yes"}, "invariant must be true or false, got 'yes'"),
        ({"delta_degrees": 0}, "delta_degrees must be a positive number, got 0"),
        ({"on": "validation_end"}, "valid: fit_end, test_end"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        small_callback(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("UniversalPerturbation: ")
