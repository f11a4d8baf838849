"""robusthp.attacks: agreement with torchattacks, the eps-ball, side effects, checks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchattacks
from torch import nn

from robusthp.attacks import (
    AttackWarning,
    attack_names,
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


@pytest.mark.parametrize("name", attack_names("linf"))
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


@pytest.mark.parametrize("name", attack_names("linf"))
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
    with pytest.raises(ValueError, match="unknown attack 'cw'; valid: autoattack, band, fgsm, gaussian, pgd, pgd_l2"):
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


# ---------------------------------------------------------------- tensor eps (per channel / per sample)


def rgb_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, NUM_CLASSES)).eval()


def rgb_inputs(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.randint(0, NUM_CLASSES, (n,), generator=gen)


@pytest.mark.parametrize("name", attack_names("linf"))
def test_per_sample_eps_equals_the_float_attack_per_sample(trained, name):
    """Each row of a (N, 1, 1, 1) eps gets exactly what the float attack gives that row."""
    model, x, y = trained
    values = [0.02, 0.1, 0.3]
    which = torch.arange(len(y)) % len(values)
    eps = torch.tensor(values)[which].view(-1, 1, 1, 1)
    extra = {"steps": 10} if name == "pgd" else {}
    ours = get_attack(name)(model, x, y, eps=eps, **extra)  # alpha: 2.5 * eps / steps per row
    for k, value in enumerate(values):
        rows = which == k
        torch.testing.assert_close(ours[rows], get_attack(name)(model, x, y, eps=value, **extra)[rows],
                                   atol=1e-6, rtol=0)
    for i in range(4):  # and literally sample by sample
        alone = get_attack(name)(model, x[i : i + 1], y[i : i + 1], eps=values[i % 3], **extra)
        torch.testing.assert_close(ours[i : i + 1], alone, atol=1e-6, rtol=0)


def test_uniform_tensor_eps_is_the_float_attack():
    model, (x, y) = rgb_net(), rgb_inputs()
    for shape in [(3, 1, 1), (len(y), 1, 1, 1), (len(y), 3, 1, 1), ()]:
        eps = torch.full(shape, 0.05)
        torch.testing.assert_close(pgd(model, x, y, eps=eps, steps=5), pgd(model, x, y, eps=0.05, steps=5),
                                   atol=1e-6, rtol=0)


def test_per_channel_box_is_respected_and_reached():
    model, (x, y) = rgb_net(), rgb_inputs()
    eps = torch.tensor([0.01, 0.05, 0.1]).view(3, 1, 1)
    adv = pgd(model, x, y, eps=eps, steps=10, random_start=True)
    reach = (adv - x).abs().amax(dim=(0, 2, 3))  # (3,) largest move per channel
    assert torch.all(reach <= eps.flatten() + 1e-6)
    torch.testing.assert_close(reach, eps.flatten(), atol=1e-6, rtol=0)  # each box is used to its edge
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_per_sample_and_channel_box_is_respected():
    model, (x, y) = rgb_net(), rgb_inputs()
    gen = torch.Generator().manual_seed(5)
    eps = torch.rand(len(y), 3, 1, 1, generator=gen) * 0.1
    eps[0] = 0.0  # a zero box leaves its sample (or channel) unchanged
    adv = fgsm(model, x, y, eps=eps)
    assert torch.all((adv - x).abs() <= eps + 1e-6)
    assert torch.equal(adv[0], x[0])


def test_default_alpha_of_a_tensor_is_elementwise():
    torch.testing.assert_close(default_alpha(torch.tensor([0.3, 0.02]), 40), torch.tensor([0.01875, 0.00125]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": torch.tensor([0.1, -0.2, 0.1]).view(3, 1, 1)}, r"eps tensor .* got -0.2 at index \(1, 0, 0\)"),
        ({"eps": torch.tensor([0.1, float("nan"), 0.1]).view(3, 1, 1)}, r"eps tensor .* got nan"),
        ({"eps": torch.tensor([float("inf")])}, r"eps tensor .* got inf"),
        ({"eps": torch.full((2, 1, 1), 0.1)}, "does not broadcast to x's shape"),
        ({"eps": torch.full((3, 1, 1), 0.1), "alpha": torch.full((3, 1, 1), -0.01)}, "alpha tensor"),
        ({"eps": torch.tensor([True, False, True]).view(3, 1, 1)}, "real numbers"),
    ],
)
def test_bad_tensor_eps_raise(kwargs, match):
    model, (x, y) = rgb_net(), rgb_inputs()
    with pytest.raises(ValueError, match=match):
        pgd(model, x, y, steps=2, **kwargs)


# ---------------------------------------------------------------- stop_when_fooled


class CountingModel(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(int(x.shape[0]))
        return self.model(x)


def misclassified(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_stop_when_fooled_returns_the_first_fooled_iterate(trained, eps):
    model, x, y = trained
    y = y.clone()
    y[:5] = (y[:5] + 1) % NUM_CLASSES  # five points misclassified clean
    steps, alpha = 8, eps / 4
    iterates = [x] + [pgd(model, x, y, eps, alpha=alpha, steps=k) for k in range(1, steps + 1)]
    fooled = torch.stack([misclassified(model, it, y) for it in iterates])  # (steps + 1, N)
    first = torch.where(fooled.any(0), fooled.float().argmax(0), steps)  # first fooled iterate, or the last
    expected = torch.stack(iterates)[first, torch.arange(len(y))]
    ours = pgd(model, x, y, eps, alpha=alpha, steps=steps, stop_when_fooled=True)
    assert int(fooled[0].sum()) == 5 and bool((first > 0).any()) and not bool(fooled.any(0).all())
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert torch.equal(misclassified(model, ours, y), fooled.any(0))
    assert torch.equal(ours[fooled[0]], x[fooled[0]])  # clean-misclassified points come back as they are


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_stop_when_fooled_is_never_weaker_than_the_last_iterate(trained, eps):
    model, x, y = trained
    last = misclassified(model, pgd(model, x, y, eps, steps=10), y)
    anytime = misclassified(model, pgd(model, x, y, eps, steps=10, stop_when_fooled=True), y)
    assert torch.all(anytime | ~last)  # every point the last iterate fools stays fooled
    assert (pgd(model, x, y, eps, steps=10, stop_when_fooled=True) - x).abs().max() <= eps + 1e-6


def test_stop_when_fooled_shrinks_the_batch(trained):
    """Iterate k is computed for exactly the points not fooled at iterates 0..k-1."""
    model, x, y = trained
    steps, eps = 10, 0.3
    alpha = default_alpha(eps, steps)
    counting = CountingModel(model)
    pgd(counting, x, y, eps, steps=steps)
    assert counting.rows == [len(y)] * steps  # last-iterate mode: the full batch every step
    iterates = [x] + [pgd(model, x, y, eps, alpha=alpha, steps=k) for k in range(1, steps + 1)]
    fooled = torch.stack([misclassified(model, it, y) for it in iterates])  # (steps + 1, N)
    first = torch.where(fooled.any(0), fooled.float().argmax(0), steps + 1)
    expected = [int((first >= k).sum()) for k in range(steps + 1)]  # forward k: the rows still left
    counting.rows.clear()
    pgd(counting, x, y, eps, steps=steps, stop_when_fooled=True)
    assert counting.rows == [n for n in expected if n > 0]
    assert sum(counting.rows) < 0.5 * steps * len(y)  # the work really shrinks


def test_stop_when_fooled_side_effects(untrained):
    model, x, y = untrained
    model.train()
    rng = torch.get_rng_state()
    pgd(model, x, y, 0.1, steps=3, random_start=True, stop_when_fooled=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model)
    assert all(p.grad is None for p in model.parameters())
