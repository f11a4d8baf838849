"""ENGM (robusthp.engm, a reconstruction of Dabouei et al. 2022) against loops that take
each example's gradient by its own backward pass, in float64."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robusthp.catalog import REGIMES
from robusthp.engm import ExampleWeights, engm_weights, input_grad_norms, reweighted_loss
from robusthp.optim import build_optimizer, example_weights, resolve_sgd
from robusthp.per_example import per_example_grad_norms

TOL = {"atol": 1e-6, "rtol": 1e-6}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def conv() -> nn.Module:  # no BatchNorm: its train-mode gradient is each example's own
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4, 4)).double()


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4, 4)).double()


def batch(seed: int, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64) * 2, \
        torch.randint(0, 4, (n,), generator=g)


def batch_for(model: nn.Module, seed: int, n: int = 10):
    x, y = batch(seed, n)
    if isinstance(model[0], nn.Conv2d):
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    return x, y


def loop_grads(model: nn.Module, x, y) -> list[list[torch.Tensor]]:
    """Each example's parameter gradient, by its own backward pass."""
    params = list(model.parameters())
    return [list(torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params))
            for i in range(len(x))]


def flat_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((g ** 2).sum() for g in grads))


def engm_by_hand(model, batches, lr, momentum, gamma, weight_decay=0.0):
    """ENGM as extensions.md writes it: ĝ = mean g_i / max(‖g_i‖, γ); v <- μv + ĝ + λθ
    (weight decay outside the normalization); θ <- θ - ηv."""
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        per_example = loop_grads(model, x, y)
        g_hat = [torch.zeros_like(p) for p in params]
        for grads in per_example:
            scale = 1.0 / max(float(flat_norm(grads)), gamma)
            g_hat = [acc + scale * g / len(x) for acc, g in zip(g_hat, grads, strict=True)]
        with torch.no_grad():
            for p, v, g in zip(params, velocity, g_hat, strict=True):
                v.mul_(momentum).add_(g + weight_decay * p)
                p.sub_(lr * v)
    return params


def engm_ours(model, batches, sgd):
    opt, _ = build_optimizer(model.parameters(), sgd)
    weights = example_weights(sgd)
    for x, y in batches:
        w = weights(model, x, y)
        loss = reweighted_loss(model(x), y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return list(model.parameters())


# ---------------------------------------------------------------- the ENGM step


@pytest.mark.parametrize("make", [mlp, conv], ids=["mlp", "conv"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_exact_engm_steps_equal_a_loop_over_examples(make, steps, weight_decay):
    torch.manual_seed(0)
    model = make()
    batches = [batch_for(model, seed) for seed in range(steps)]
    norms = torch.stack([flat_norm(g) for g in loop_grads(model, *batches[0])])
    gamma = float(norms.median())  # some examples are normalized, some capped by γ
    assert (norms < gamma).any() and (norms > gamma).any()
    sgd = resolve_sgd("engm", 10, momentum=0.9, lr=0.3, gamma=gamma, weight_decay=weight_decay)
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    ours = engm_ours(model, batches, sgd)
    expected = engm_by_hand(reference, batches, lr=0.3, momentum=0.9, gamma=gamma,
                            weight_decay=weight_decay)
    assert all(not torch.equal(p, q) for p, q in zip(expected, start.parameters(), strict=True))
    for p, q in zip(ours, expected, strict=True):
        torch.testing.assert_close(p, q, **TOL)


def test_gamma_above_every_norm_is_sgd_with_lr_over_gamma():
    torch.manual_seed(1)
    model = mlp()
    batches = [batch(seed) for seed in range(3)]
    gamma, lr = 50.0, 4.0
    for x, y in batches:  # γ caps every example over the three steps (weights move little)
        assert float(per_example_grad_norms(model, x, y).max()) < gamma / 2
    reference = copy.deepcopy(model)
    ours = engm_ours(model, batches, resolve_sgd("engm", 10, momentum=0.9, lr=lr, gamma=gamma))
    sgd = torch.optim.SGD(reference.parameters(), lr=lr / gamma, momentum=0.9)
    for x, y in batches:
        sgd.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        sgd.step()
    for p, q in zip(ours, reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, **TOL)


def test_reweighted_loss_is_the_weighted_mean_and_detaches_weights():
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1, 0])
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    loss = reweighted_loss(logits, y, w)
    expected = sum(w[i] * F.cross_entropy(logits[i:i + 1], y[i:i + 1]) for i in range(5)) / 5
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert w.grad is None
    with pytest.raises(ValueError, match=r"weights \(N,\); got \(5, 3\), \(5,\), \(4,\)"):
        reweighted_loss(logits, y, w[:4])


def test_engm_weights_cap_at_one_over_gamma_and_survive_gamma_zero():
    norms = torch.tensor([0.0, 0.5, 2.0])
    torch.testing.assert_close(engm_weights(norms, 1.0), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.isfinite(engm_weights(norms, 0.0)).all()
    assert engm_weights(norms, 0.0)[2] == 0.5
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got -0.1"):
        engm_weights(norms, -0.1)


# ---------------------------------------------------------------- the norms


def _state(model):
    return ([m.training for m in model.modules()], copy.deepcopy(model.state_dict()))


def _assert_untouched(model, before):
    flags, state = before
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make", [mlp, conv, bn_net], ids=["mlp", "conv", "batchnorm"])
def test_per_example_norms_equal_a_loop_and_leave_the_model_alone(make):
    torch.manual_seed(2)
    model = make()
    x, y = batch_for(model, 3, n=9)
    if isinstance(model[1], nn.BatchNorm2d):  # running stats away from their init
        with torch.no_grad():
            model(x * 3 + 1)
    model.train()
    model[-1].eval()  # a mixed flag must survive too
    before = _state(model)
    reference = copy.deepcopy(model).eval()
    expected = torch.stack([flat_norm(g) for g in loop_grads(reference, x, y)])
    torch.testing.assert_close(per_example_grad_norms(model, x, y, chunk_size=4), expected, **TOL)
    _assert_untouched(model, before)
    torch.testing.assert_close(ExampleWeights(0.0)(model, x, y), 1 / expected, **TOL)
    _assert_untouched(model, before)


@pytest.mark.parametrize("make", [mlp, bn_net], ids=["mlp", "batchnorm"])
def test_input_grad_norms_equal_a_loop_and_leave_the_model_alone(make):
    torch.manual_seed(3)
    model = make()
    x, y = batch_for(model, 4, n=6)
    model.train()
    before = _state(model)
    reference = copy.deepcopy(model).eval()
    expected = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(reference(xi), y[i:i + 1]), xi)
        expected.append(g.norm())
    with torch.no_grad():  # works under no_grad too
        got = input_grad_norms(model, x, y)
    torch.testing.assert_close(got, torch.stack(expected), **TOL)
    _assert_untouched(model, before)


# ---------------------------------------------------------------- cheap mode


def test_cheap_mode_is_exact_where_the_norms_are_linear():
    # a linear model with orthonormal weight rows and inputs of one norm r: ‖∇ₓℓ‖ = ‖p - e_y‖
    # and ‖∇θℓ‖ = ‖p - e_y‖·sqrt(r² + 1), a line through 0 that the fit must find
    torch.manual_seed(4)
    model = nn.Linear(6, 3).double()
    q, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))
    with torch.no_grad():
        model.weight.copy_(q.T * 1.0)
    x = torch.randn(12, 6, dtype=torch.float64)
    r = 2.5
    x = r * x / x.norm(dim=1, keepdim=True)
    y = torch.randint(0, 3, (12,))
    cheap = ExampleWeights(0.0, mode="cheap")
    torch.testing.assert_close(cheap(model, x, y), ExampleWeights(0.0)(model, x, y), **TOL)
    assert cheap.slope == pytest.approx(np.sqrt(r ** 2 + 1), rel=1e-9)
    assert cheap.intercept == pytest.approx(0.0, abs=1e-9)


def test_cheap_fit_is_least_squares_and_refits_on_its_schedule():
    torch.manual_seed(5)
    model = mlp()
    cheap = ExampleWeights(0.05, mode="cheap", refit_every=3)
    refits = []
    original = cheap.refit
    cheap.refit = lambda s, n: (refits.append(cheap.calls), original(s, n))
    fits = {}
    for call in range(7):
        x, y = batch(10 + call)
        s, n = input_grad_norms(model, x, y), per_example_grad_norms(model, x, y)
        w = cheap(model, x, y)
        if call % 3 == 0:
            fits[call] = (np.polyfit(s.numpy(), n.numpy(), 1), float(n.min()))
        (a, b), floor = fits[call - call % 3]
        assert (cheap.slope, cheap.intercept) == pytest.approx((a, b), rel=1e-9, abs=1e-12)
        predicted = np.maximum(a * s.numpy() + b, floor)
        np.testing.assert_allclose(w.numpy(), 1 / np.maximum(predicted, 0.05), rtol=1e-9)
    assert refits == [0, 3, 6]


def test_cheap_mode_takes_the_callers_input_norms():
    torch.manual_seed(6)
    model = mlp()
    x, y = batch(7)
    s = input_grad_norms(model, x, y)
    a, b = ExampleWeights(0.01, mode="cheap"), ExampleWeights(0.01, mode="cheap")
    assert torch.equal(a(model, x, y), b(model, x, y, input_norms=s))
    c = ExampleWeights(0.01, mode="cheap")
    torch.testing.assert_close(c(model, x, y, input_norms=2 * s), a(model, x, y))  # a refit's line
    with pytest.raises(ValueError, match=r"input_norms must have shape \(10,\), got \(9,\)"):
        a(model, x, y, input_norms=s[:9])


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(7)
    model = mlp()
    batches = [batch(20 + i) for i in range(8)]
    first = ExampleWeights(0.01, mode="cheap", refit_every=3)
    for x, y in batches[:4]:
        first(model, x, y)
    state = json.loads(json.dumps(first.state_dict()))  # plain numbers: a checkpoint keeps it
    resumed = ExampleWeights(0.01, mode="cheap", refit_every=3)
    resumed.load_state_dict(state)
    fresh = ExampleWeights(0.01, mode="cheap", refit_every=3)  # no state: refits at once
    w_fresh = fresh(model, *batches[4])
    for i, (x, y) in enumerate(batches[4:]):
        w_first, w_resumed = first(model, x, y), resumed(model, x, y)
        assert torch.equal(w_first, w_resumed)
        if i == 0:  # the state mattered: batch 4 is weighted by batch 3's fit
            assert not torch.allclose(w_first, w_fresh)
    with pytest.raises(ValueError, match="ENGM state lacks floor, slope"):
        resumed.load_state_dict({"calls": 1, "intercept": 0.0})


@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": -1.0}, "ENGM gamma must be a finite number >= 0, got -1.0"),
    ({"gamma": float("nan")}, "ENGM gamma must be a finite number >= 0, got nan"),
    ({"gamma": 0.1, "mode": "fast"}, "ENGM mode must be one of exact, cheap, got 'fast'"),
    ({"gamma": 0.1, "refit_every": 0}, "ENGM refit_every must be an integer >= 1, got 0"),
    ({"gamma": 0.1, "chunk_size": 2.5}, "ENGM chunk_size must be an integer >= 1, got 2.5"),
])
def test_example_weights_refuse_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExampleWeights(**kwargs)


# ---------------------------------------------------------------- the regime


def test_engm_regime_resolves_to_sgd_with_its_keys():
    sgd = resolve_sgd("engm", 64, momentum=0.9)
    spec = REGIMES["engm"]
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.weight_decay) == ("engm", spec.keys["lr"], 0.9, 0.0)
    assert (sgd.engm_gamma, sgd.engm_mode, sgd.engm_refit_every) == (
        spec.keys["gamma"], "exact", spec.keys["refit_every"])
    assert spec.sweeps_momentum and not spec.adaptive and REGIMES["adam"].adaptive
    assert resolve_sgd("engm", 64).momentum == 0.0
    cheap = resolve_sgd("engm", 64, momentum=0.5, mode="cheap", gamma=0.3, refit_every=7.0, lr=0.1)
    assert (cheap.engm_mode, cheap.engm_gamma, cheap.engm_refit_every, cheap.lr) == ("cheap", 0.3, 7, 0.1)
    opt, sched = build_optimizer([nn.Parameter(torch.zeros(1))], cheap)
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and sched is None
    assert (group["lr"], group["momentum"], group["dampening"], group["nesterov"]) == (0.1, 0.5, 0, False)
    weights = example_weights(cheap)
    assert (weights.gamma, weights.mode, weights.refit_every) == (0.3, "cheap", 7)
    plain = resolve_sgd("lr", 64, 0.9)
    assert example_weights(plain) is None
    assert (plain.engm_gamma, plain.engm_mode, plain.engm_refit_every) == (None, None, None)


@pytest.mark.parametrize("keys,match", [
    ({"gamma": -1}, "regime.gamma must be a number >= 0, got -1"),
    ({"mode": "fast"}, "regime.mode must be one of exact, cheap, got 'fast'"),
    ({"refit_every": 0}, "regime.refit_every must be >= 1, got 0"),
    ({"lr": 0.0}, "regime.lr must be a positive number, got 0.0"),
    ({"beta1": 0.9}, "regime 'engm' does not use beta1"),
])
def test_engm_regime_bad_keys_name_the_value(keys, match):
    with pytest.raises(ValueError, match=match):
        resolve_sgd("engm", 64, momentum=0.9, **keys)


def test_engm_regime_composes_from_the_command_line():
    from hydra import compose, initialize_config_module

    from robusthp.config import ConfigError, settings_from_config

    with initialize_config_module("robusthp.conf", version_base="1.3"):
        cfg = compose("config", overrides=["regime=engm", "batch_size=64", "momentum=0.9"])
        bad = compose("config", overrides=["regime=engm", "regime.gamma=-1"])
    sgd = settings_from_config(cfg).sgd
    assert (sgd.regime, sgd.optimizer, sgd.momentum, sgd.batch_size, sgd.engm_mode) == (
        "engm", "engm", 0.9, 64, "exact")
    with pytest.raises(ConfigError, match="^regime.gamma must be a number >= 0, got -1$"):
        settings_from_config(bad)
