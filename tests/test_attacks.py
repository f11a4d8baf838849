"""robusthp.attacks: agreement with torchattacks, the eps-ball, side effects, checks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchattacks
from torch import nn

from robusthp.attacks import (
    ATTACKS,
    AttackWarning,
    bind,
    default_alpha,
    fgsm,
    get_attack,
    pgd,
    register_attack,
    robust_accuracy,
)

NUM_CLASSES = 4


def tiny_net(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm + Dropout: train/eval mode changes its output."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 8 * 8, NUM_CLASSES),
    )


def synthetic(n: int, gen: torch.Generator, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one prototype image per class, pixels in [0, 1]."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    x = (protos[y] * 0.6 + 0.2 + 0.15 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained to ~100% clean accuracy, and held-out test points."""
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(NUM_CLASSES, 1, 8, 8, generator=gen)
    x, y = synthetic(512, gen, protos)
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        idx = torch.randint(0, 512, (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    x_test, y_test = synthetic(256, gen, protos)
    return model, x_test, y_test


@pytest.fixture
def untrained():
    gen = torch.Generator().manual_seed(1)
    model = tiny_net(seed=1).eval()
    return model, torch.rand(32, 1, 8, 8, generator=gen), torch.randint(0, NUM_CLASSES, (32,), generator=gen)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- agreement with torchattacks


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_fgsm_matches_torchattacks(trained, eps):
    model, x, y = trained
    ours = fgsm(model, x, y, eps=eps)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)


@pytest.mark.parametrize("eps, alpha", [(0.1, 0.01), (0.3, None), (0.02, None)])
def test_pgd_matches_torchattacks(trained, eps, alpha):
    model, x, y = trained
    steps = 10
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)


def test_pgd_random_start_matches_torchattacks_given_the_same_seed(trained):
    model, x, y = trained
    ours = pgd(model, x, y, eps=0.1, alpha=0.02, steps=5, random_start=True,
               generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)  # torchattacks draws its start from the global RNG
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5, random_start=True)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_fgsm_is_one_pgd_step_of_size_eps(trained):
    model, x, y = trained
    torch.testing.assert_close(fgsm(model, x, y, 0.1), pgd(model, x, y, 0.1, alpha=0.1, steps=1))


def test_default_alpha_is_madry_rule():
    assert default_alpha(0.3, 40) == pytest.approx(0.01875)
    assert default_alpha(0.02, 40) == pytest.approx(0.00125)


# ---------------------------------------------------------------- what an attack must do


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_stays_in_eps_ball_and_pixel_range(untrained, name, eps):
    model, x, y = untrained
    extra = {"steps": 5, "random_start": True} if name == "pgd" else {}
    adv = get_attack(name)(model, x, y, eps=eps, **extra)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert (adv - x).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_attacks_lower_accuracy_on_a_trained_model(trained):
    model, x, y = trained
    accs = robust_accuracy(model, [(x, y)], {
        "fgsm": bind("fgsm", eps=0.1), "pgd": bind("pgd", eps=0.1, steps=10),
    })
    assert accs["clean_acc"] >= 0.95
    assert accs["pgd_acc"] <= accs["fgsm_acc"] <= accs["clean_acc"]
    assert accs["fgsm_acc"] < accs["clean_acc"] - 0.1  # the attack really attacks
    assert accs["pgd_acc"] < accs["fgsm_acc"]
    assert accs["num_samples"] == len(y)


def test_robust_accuracy_counts_all_points_over_batches(trained):
    model, x, y = trained
    attack = bind("fgsm", eps=0.1)
    batches = list(zip(x.split(100), y.split(100), strict=True))  # 100, 100, 56
    calls = []
    accs = robust_accuracy(model, batches, {"fgsm@0.1": attack},
                           progress=lambda done, total: calls.append((done, total)))
    assert set(accs) == {"clean_acc", "fgsm_acc@0.1", "num_samples"}
    assert accs["clean_acc"] == pytest.approx(accuracy(model, x, y))
    expected = sum(int((model(attack(model, bx, by)).argmax(1) == by).sum()) for bx, by in batches)
    assert accs["fgsm_acc@0.1"] == pytest.approx(expected / len(y))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_random_start_is_reproducible_and_seeded(untrained):
    model, x, y = untrained
    run = lambda gen: pgd(model, x, y, 0.1, steps=2, random_start=True, generator=gen)  # noqa: E731
    torch.testing.assert_close(run(None), run(torch.Generator().manual_seed(0)), atol=0, rtol=0)
    assert not torch.equal(run(torch.Generator().manual_seed(0)), run(torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- side effects


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_side_effects_mode_rng_grad(untrained, name):
    model, x, y = untrained
    model.train()
    model[1].eval()  # a submodule with its own flag must keep it
    bn_stats = model[1].running_mean.clone()
    model[5].weight.grad = torch.ones_like(model[5].weight)  # an existing grad stays as is
    rng = torch.get_rng_state()
    extra = {"steps": 3, "random_start": True} if name == "pgd" else {}
    get_attack(name)(model, x, y, eps=0.1, **extra)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model] == [True, False, True, True, True, True]
    assert torch.equal(model[1].running_mean, bn_stats)
    assert torch.equal(model[5].weight.grad, torch.ones_like(model[5].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("5.weight"))


def test_eval_mode_during_attack_gives_the_eval_result(untrained):
    model, x, y = untrained
    expected = pgd(model.eval(), x, y, 0.1, steps=3)
    torch.testing.assert_close(pgd(model.train(), x, y, 0.1, steps=3), expected, atol=0, rtol=0)


@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(untrained, context):
    model, x, y = untrained
    expected = pgd(model, x, y, 0.1, steps=3)
    ctx = torch.inference_mode if context == "inference_mode" else torch.no_grad
    with ctx():
        xi, yi = x.clone(), y.clone()  # inference tensors under inference_mode
        adv = pgd(model, xi, yi, 0.1, steps=3)
        accs = robust_accuracy(model, [(xi, yi)], {"fgsm": bind("fgsm", eps=0.1)})
    torch.testing.assert_close(adv, expected, atol=0, rtol=0)
    assert 0.0 <= accs["fgsm_acc"] <= 1.0


def test_runs_in_fp32_inside_autocast(untrained):
    model, x, y = untrained
    expected = pgd(model, x, y, 0.1, steps=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = pgd(model, x, y, 0.1, steps=3)
    torch.testing.assert_close(adv, expected, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_taken_from_inputs(untrained):
    model, x, y = untrained
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    adv = pgd(model, x, y, 0.1, steps=3, random_start=True)
    assert adv.device == x.device
    assert (adv - x).abs().max().item() <= 0.1 + 1e-6


# ---------------------------------------------------------------- input checks and warnings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"eps": 0.1, "steps": 0}, "steps must be"),
        ({"eps": 0.1, "steps": 2.5}, "steps must be"),
        ({"eps": 0.1, "alpha": 0.0}, "alpha"),
        ({"eps": 0.1, "alpha": -1.0}, "alpha"),
    ],
)
def test_bad_settings_raise(untrained, kwargs, match):
    model, x, y = untrained
    with pytest.raises(ValueError, match=match):
        pgd(model, x, y, **kwargs)


def test_bad_inputs_raise(untrained):
    model, x, y = untrained
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, x * 2 - 0.5, y, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, (x - 0.5) / 0.25, y, 0.1)  # normalized outside the model
    with pytest.raises(ValueError, match="same number of samples"):
        fgsm(model, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="integer class indices"):
        fgsm(model, x, y.float(), 0.1)
    with pytest.raises(TypeError, match="floating-point"):
        fgsm(model, (x * 255).to(torch.uint8), y, 0.1)


def test_registry():
    assert get_attack("pgd") is pgd and get_attack("fgsm") is fgsm
    with pytest.raises(ValueError, match="unknown attack 'cw'; valid: fgsm, pgd"):
        get_attack("cw")
    with pytest.raises(ValueError, match="already registered"):
        register_attack("pgd", fgsm)


def test_warns_on_probabilities(untrained):
    model, x, y = untrained
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(AttackWarning, match="probabilities"):
        fgsm(probs, x, y, 0.1)


def test_warns_on_zero_gradients(untrained):
    _, x, y = untrained
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES))
    with torch.no_grad():
        flat[1].weight.zero_()
    with pytest.warns(AttackWarning, match="exactly zero input gradient"):
        fgsm(flat, x, y, 0.1)


def test_no_warning_on_a_healthy_model(trained):
    model, x, y = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttackWarning)
        robust_accuracy(model, [(x, y)], {"fgsm": bind("fgsm", eps=0.1),
                                          "pgd": bind("pgd", eps=0.1, steps=5)})


def test_warns_when_pgd_weaker_than_fgsm(trained):
    model, x, y = trained
    fns = {"fgsm@0.1": bind("fgsm", eps=0.1), "pgd@0.1": lambda m, x, y: x}  # "PGD" does nothing
    with pytest.warns(AttackWarning, match="PGD is weaker than FGSM"):
        robust_accuracy(model, [(x, y)], fns)
