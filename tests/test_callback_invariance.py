"""InvarianceProfile: exact checks on hand-made models, and in real Trainers (the user's
classes are test_callback_adversarial's)."""

from __future__ import annotations

import logging
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
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.callbacks.invariance import DEFAULT_ANGLES, DEFAULT_THETAS, InvarianceProfile

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


@pytest.fixture(autouse=True)
def _seeded():
    """Model init and shuffling draw from the global RNG: fix it per test."""
    torch.manual_seed(0)


def small_callback(**kwargs) -> InvarianceProfile:
    settings = {"thetas": [0, 45, 180], "angles": [0, 90], "num_samples": 48, "batch_size": 16,
                "progress": False}
    return InvarianceProfile(**{**settings, **kwargs})


SMALL_KEYS = {"rot_acc@0", "rot_acc@45", "rot_acc@180", "rot_fixed_acc@0", "rot_fixed_acc@90",
              "invariance_num_samples", "invariance_time_s"}
ACC_KEYS = {k for k in SMALL_KEYS if "_acc@" in k}


def loader(n: int = 40, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(*synthetic(n, seed=2)), batch_size=batch_size)


# ---------------------------------------------------------------- hand-made models

SIZE = 16


def quadrant_data(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c: a bright 4x4 block in quadrant c (0 top-left, 1 top-right, 2 bottom-right,
    3 bottom-left, clockwise), on dim noise. A quarter turn moves the block to another
    quadrant, so orientation decides the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.2 * torch.rand(n, 1, SIZE, SIZE, generator=g)
    corners = [(2, 2), (2, 10), (10, 10), (10, 2)]
    for i, c in enumerate(y.tolist()):
        r, col = corners[c]
        x[i, 0, r : r + 4, col : col + 4] = 0.9 + 0.1 * torch.rand(4, 4, generator=g)
    return x, y


class QuadrantModel(nn.Module):
    """Logit c: the mean brightness of quadrant c: accurate, and orientation-dependent."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = SIZE // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, h:], x[..., h:, :h]]
        return self.scale * torch.stack([p.mean((1, 2, 3)) for p in q], dim=1)


class SortedPixels(nn.Module):
    """A linear layer on the sorted pixel values: exactly invariant to any permutation of
    the pixels, so to quarter turns of square images (which nearest rotation is)."""

    def __init__(self, pixels: int, classes: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1).sort(dim=1).values)


def quadrant_loader(n: int = 400, seed: int = 0, batch_size: int = 100) -> DataLoader:
    return DataLoader(TensorDataset(*quadrant_data(n, seed)), batch_size=batch_size)


def clean_accuracy(model: nn.Module, data: DataLoader) -> float:
    with torch.no_grad():
        model.eval()
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data)
    return correct / len(data.dataset)


def test_an_exactly_invariant_model_scores_the_same_at_every_quarter_turn():
    model = SortedPixels(SIZE * SIZE)
    data = quadrant_loader()
    cb = InvarianceProfile(thetas=[], angles=[0, 90, 180, 270, -90], progress=False)
    results = cb.evaluate(model, data)
    accs = {results[f"rot_fixed_acc@{a}"] for a in ("0", "90", "180", "270", "-90")}
    assert accs == {clean_accuracy(model, data)}
    assert set(results) == {"rot_fixed_acc@0", "rot_fixed_acc@90", "rot_fixed_acc@180",
                            "rot_fixed_acc@270", "rot_fixed_acc@-90",
                            "invariance_num_samples", "invariance_time_s"}
    assert results["invariance_num_samples"] == 400


def test_an_orientation_dependent_model_has_a_falling_profile():
    model, data = QuadrantModel(), quadrant_loader()
    assert clean_accuracy(model, data) == 1.0
    cb = InvarianceProfile(thetas=[0, 10, 45, 90, 180], angles=[0, 5, 90, 180, 270], progress=False)
    r = cb.evaluate(model, data)
    assert r["rot_acc@0"] == r["rot_fixed_acc@0"] == 1.0
    assert r["rot_fixed_acc@5"] == 1.0  # a small turn keeps the block in its quadrant
    for angle in (90, 180, 270):  # a quarter turn moves every block to another quadrant
        assert r[f"rot_fixed_acc@{angle}"] == 0.0
    profile = [r[f"rot_acc@{t}"] for t in (0, 10, 45, 90, 180)]
    assert profile[1] > 0.95 and profile[-1] < 0.4
    assert all(a >= b - 0.05 for a, b in zip(profile, profile[1:], strict=False))  # falls
    assert profile[0] > profile[2] > profile[3] > profile[4]


def test_theta_zero_and_angle_zero_are_the_clean_accuracy():
    _, Net, _ = user_classes("lightning.pytorch")
    model = Net().net
    data = loader(40)
    results = small_callback(num_samples=None, batch_size=None).evaluate(model, data)
    clean = clean_accuracy(model, data)
    assert results["rot_acc@0"] == results["rot_fixed_acc@0"] == clean
    assert results["invariance_num_samples"] == 40


def test_seeded_and_each_theta_has_its_own_generator():
    model, data = QuadrantModel(), quadrant_loader()
    a = InvarianceProfile(thetas=[30, 90, 180], angles=[], seed=3, progress=False).evaluate(model, data)
    b = InvarianceProfile(thetas=[30, 90, 180], angles=[], seed=3, progress=False).evaluate(model, data)
    c = InvarianceProfile(thetas=[30, 90, 180], angles=[], seed=4, progress=False).evaluate(model, data)
    for key in ("rot_acc@30", "rot_acc@90", "rot_acc@180"):
        assert a[key] == b[key]
    assert any(a[k] != c[k] for k in ("rot_acc@30", "rot_acc@90", "rot_acc@180"))
    # the draws themselves: the same seed, the same angles; another seed, others
    x = quadrant_data(8)[0]
    fns = [InvarianceProfile(thetas=[90], angles=[], seed=s).rotation_fns(torch.device("cpu"))
           for s in (3, 3, 4)]
    outs = [f["rot@90"](model, x, None) for f in fns]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    # adding thetas or angles never changes another theta's draws
    alone = InvarianceProfile(thetas=[90], angles=[], seed=3, progress=False).evaluate(model, data)
    more = InvarianceProfile(thetas=[10, 90], angles=[0, 45], seed=3, progress=False).evaluate(model, data)
    assert alone["rot_acc@90"] == more["rot_acc@90"] == a["rot_acc@90"]


def test_evaluation_leaves_flags_and_global_rngs_as_found():
    _, Net, _ = user_classes("lightning.pytorch")
    model = Net().net
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    data = DataLoader(TensorDataset(*synthetic(40, seed=2)), batch_size=16, shuffle=True)
    small_callback().evaluate(model, data)
    assert seen and not any(seen)  # eval mode during the measurement
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_the_study_grid_is_the_default():
    cb = InvarianceProfile()
    assert cb.thetas == DEFAULT_THETAS == tuple(float(t) for t in range(0, 181, 15))
    assert cb.angles == DEFAULT_ANGLES == DEFAULT_THETAS
    assert cb.num_samples == 1000 and cb.batch_size == 1000 and cb.seed == 0 and cb.on == ("fit_end",)
    keys = set(cb.rotation_fns(torch.device("cpu")))
    assert {"rot@0", "rot@15", "rot@180", "rot_fixed@0", "rot_fixed@165"} <= keys and len(keys) == 26
    assert InvarianceProfile(thetas=None, angles=None).thetas == DEFAULT_THETAS
    assert InvarianceProfile(thetas=22.5, angles=[]).thetas == (22.5,)
    assert InvarianceProfile(thetas=[], angles=[-30, 0.5, 400]).angles == (-30.0, 0.5, 400.0)


# ---------------------------------------------------------------- in Trainers


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fit_end_results_and_logged_metrics(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.fit(Net(), datamodule=Data())

    assert set(cb.results) == SMALL_KEYS
    assert cb.results["invariance_num_samples"] == 48
    assert cb.results["invariance_time_s"] > 0
    assert cb.results["rot_acc@0"] == cb.results["rot_fixed_acc@0"]
    for key in ACC_KEYS:
        assert 0.0 <= cb.results[key] <= 1.0
    logged = logged_metrics(trainer)
    for key in ACC_KEYS:
        assert logged[f"inv/{key}"] == pytest.approx(cb.results[key])
    assert "inv/invariance_time_s" not in logged and "inv/invariance_num_samples" not in logged


def test_test_end_under_inference_mode(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(on="test_end", angles=[])
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    assert cb.results == {}
    trainer.test(module, datamodule=data)
    assert set(cb.results) == {"rot_acc@0", "rot_acc@45", "rot_acc@180",
                               "invariance_num_samples", "invariance_time_s"}


def test_no_data_at_fit_end_moves_to_test(tmp_path, caplog):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback()
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module, data = Net(), Data()
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.invariance"):
        trainer.fit(module, DataLoader(data.train_set, batch_size=32))
    assert cb.results == {} and "will evaluate at trainer.test instead" in caplog.text
    trainer.test(module, DataLoader(data.test_set, batch_size=32))
    assert set(cb.results) == SMALL_KEYS


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
    for key in SMALL_KEYS - {"invariance_time_s"}:  # seeded: the same numbers again
        assert cb.results[key] == first[key]


def test_a_diverged_model_is_skipped():
    _, Net, _ = user_classes("lightning.pytorch")
    cb, module = small_callback(), Net()
    module.diverged = True
    cb.on_train_end(SimpleNamespace(interrupted=False, is_global_zero=True), module)
    assert cb.results == {"invariance_skipped": "diverged"}
    cb, module = small_callback(), Net()
    with torch.no_grad():
        module.net[0].weight[0, 0, 0, 0] = float("nan")
    cb.on_train_end(SimpleNamespace(interrupted=False, is_global_zero=True), module)
    assert cb.results == {"invariance_skipped": "non-finite parameters"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"thetas": [0, 181]}, "thetas must be angles in degrees from 0 to 180; got 181"),
        ({"thetas": [-15]}, "thetas must be angles in degrees from 0 to 180; got -15"),
        ({"thetas": [float("nan")]}, "thetas must be angles in degrees from 0 to 180; got nan"),
        ({"thetas": "wide"}, "thetas must be a number or a list of angles in degrees from 0 to 180"),
        ({"thetas": [True]}, "thetas must be angles .* got True"),
        ({"thetas": [15, 15.0]}, "thetas must be distinct"),
        ({"angles": [float("inf")]}, "angles must be finite angles in degrees; got inf"),
        ({"angles": ["90"]}, "angles must be finite angles in degrees; got '90'"),
        ({"angles": [0, -0.0]}, "angles must be distinct"),
        ({"thetas": [], "angles": []}, "thetas and angles are both empty"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"num_samples": 0}, "num_samples must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"on": "validation_end"}, "valid: fit_end, test_end"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        small_callback(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("InvarianceProfile: ")


def test_empty_lists_turn_a_part_off():
    model, data = QuadrantModel(), quadrant_loader(40)
    only_fixed = InvarianceProfile(thetas=[], angles=[90], progress=False).evaluate(model, data)
    only_random = InvarianceProfile(thetas=[90], angles=[], progress=False).evaluate(model, data)
    assert set(only_fixed) == {"rot_fixed_acc@90", "invariance_num_samples", "invariance_time_s"}
    assert set(only_random) == {"rot_acc@90", "invariance_num_samples", "invariance_time_s"}
