"""DeepFool and SVD-Universal against exact answers on linear models, the SVD against a
dense eigendecomposition, fooling rates against direct counts, and the invariant
direction (a reconstruction) on images whose rotation tangents are known."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from robusthp.attacks.deepfool import STEP_SLACK, deepfool, deepfool_perturbation
from robusthp.attacks.linf import AttackWarning
from robusthp.attacks.universal import (
    ATTACK_DIRECTIONS,
    abs_cosine,
    attack_directions,
    fooling_rates,
    invariant_direction,
    svd_universal,
    top_singular_direction,
)
from robusthp.rotation import rotation_tangents

SHAPE = (1, 4, 5)  # one input: C, H, W
D = 20


def linear_model(num_classes: int, seed: int = 0) -> nn.Sequential:
    """logits = W x + b in float64, W and b drawn from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, num_classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(num_classes, D, generator=gen, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(num_classes, generator=gen, dtype=torch.float64))
    return model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def weights(model: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    return model[1].weight.detach(), model[1].bias.detach()


# ---------------------------------------------------------------- DeepFool


def test_deepfool_binary_linear_is_the_analytic_minimal_perturbation():
    model, x = linear_model(2), images(12)
    W, b = weights(model)
    overshoot = 0.02
    r = deepfool_perturbation(model, x, overshoot=overshoot)

    flat = x.flatten(1)
    z = flat @ W.T + b  # (N, 2)
    label = z.argmax(1)
    sign = torch.where(label == 0, 1.0, -1.0).double()[:, None]
    w = sign * (W[1] - W[0])  # grad of (z_other - z_label), per point
    f = sign[:, 0] * (z[:, 1] - z[:, 0])  # z_other - z_label < 0
    wn2 = (w * w).sum(1)
    # r = -(f / ||w||^2) w (1 + overshoot), plus the reference code's 1e-4 slack per step
    expected = (-(f / wn2)[:, None] * w + (STEP_SLACK / wn2.sqrt())[:, None] * w) * (1 + overshoot)
    torch.testing.assert_close(r.flatten(1), expected, rtol=1e-10, atol=1e-12)
    analytic = -(f / wn2)[:, None] * w * (1 + overshoot)  # without the slack: 1e-4 away
    torch.testing.assert_close(r.flatten(1), analytic, rtol=0, atol=2e-4)
    assert r.shape == x.shape and r.dtype == x.dtype
    flipped = model(x + r).argmax(1)
    assert bool((flipped != label).all())


def test_deepfool_three_classes_finds_the_nearest_boundary():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 3)).double()
    e = torch.eye(D, dtype=torch.float64)
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(D, dtype=torch.float64), 10 * e[0], e[1]]))
        model[1].bias.copy_(torch.tensor([6.0, 0.0, 5.0], dtype=torch.float64))
    # x = 0.5 everywhere: z = (6, 5, 5.5), label 0. Class 1's logit gap is larger than class 2's
    # (1 vs 0.5) but steeper (||w|| = 10 vs 1): distances 0.1 and 0.5, so class 1 is nearest.
    # Point 2 has pixel 0 at 0: z = (6, 0, 5.5), distances 0.6 and 0.5: class 2 is nearest.
    x = torch.full((2, *SHAPE), 0.5, dtype=torch.float64)
    x[1, 0, 0, 0] = 0.0
    z = model(x)
    assert z.argmax(1).tolist() == [0, 0]
    r = deepfool_perturbation(model, x, overshoot=0.0)
    W, _ = weights(model)
    for i, nearest in ((0, 1), (1, 2)):
        w = W[nearest] - W[0]
        dist = float((z[i, 0] - z[i, nearest]).detach().abs() / w.norm())
        expected = (dist + STEP_SLACK) * w / w.norm()
        torch.testing.assert_close(r[i].flatten(), expected, rtol=1e-10, atol=1e-12)
        assert int(model(x[i : i + 1] + r[i : i + 1]).argmax(1)) == nearest
    assert [round(float(d), 6) for d in r.flatten(1).norm(dim=1)] == [0.1001, 0.5001]


def test_deepfool_top_k_candidates_and_given_labels():
    model = linear_model(5, seed=3)
    x = images(16, seed=4)
    full = deepfool_perturbation(model, x)
    assert bool((model(x + full).argmax(1) != model(x).argmax(1)).all())
    two = deepfool_perturbation(model, x, num_classes=2)  # only the runner-up class
    z = model(x)
    runner_up = z.topk(2, dim=1).indices[:, 1]
    assert bool((model(x + two).argmax(1) != z.argmax(1)).all())
    assert bool((full.flatten(1).norm(dim=1) <= two.flatten(1).norm(dim=1) + 1e-9).all())
    # with 2 candidates on a linear model, one step lands past the runner-up boundary
    W, b = weights(model)
    for i in range(4):
        label, other = int(z[i].argmax()), int(runner_up[i])
        w = W[other] - W[label]
        expected = ((z[i, label] - z[i, other]) / w.norm() ** 2 + STEP_SLACK / w.norm()) * w * 1.02
        torch.testing.assert_close(two[i].flatten(), expected, rtol=1e-10, atol=1e-12)
    # a point the model already gets wrong is adversarial as it is: r = 0
    y = z.argmax(1).clone()
    y[0] = (y[0] + 1) % 5
    given = deepfool_perturbation(model, x, y)
    assert torch.equal(given[0], torch.zeros_like(given[0]))
    torch.testing.assert_close(given[1:], full[1:])


def test_deepfool_images_clamped_and_side_effects():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    modes = [m.training for m in model.modules()]
    model[1].weight.grad = torch.ones_like(model[1].weight)
    rng = torch.get_rng_state()
    x = images(6).float()
    with torch.inference_mode():
        adv = deepfool(model, x)
        r = deepfool_perturbation(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].weight.grad, torch.ones_like(model[1].weight))
    assert model[5].weight.grad is None
    assert adv.dtype == x.dtype and adv.shape == x.shape and not adv.is_inference()
    torch.testing.assert_close(adv, (x + r).clamp(0, 1))
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [({"overshoot": -0.1}, "overshoot must be"), ({"max_iter": 0}, "max_iter must be"),
     ({"num_classes": 1}, "num_classes must be")],
)
def test_deepfool_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deepfool(linear_model(2), images(2), **kwargs)
    with pytest.raises(ValueError, match="pixels in \\[0, 1\\]"):
        deepfool(linear_model(2), images(2) + 2)


# ---------------------------------------------------------------- the SVD


def test_top_singular_direction_against_a_dense_eigendecomposition():
    a = torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v1, ratio = top_singular_direction(a)
    evals, evecs = torch.linalg.eigh(a.T @ a)  # ascending
    ref = evecs[:, -1]
    ref = ref if float((a @ ref).sum()) >= 0 else -ref  # the sign rule, independently
    torch.testing.assert_close(v1, ref, rtol=0, atol=1e-10)
    assert ratio == pytest.approx(float(evals[-1] / evals.sum()), rel=1e-12)
    assert float((a @ v1).sum()) >= 0
    assert float(v1.norm()) == pytest.approx(1.0, abs=1e-12)


def test_top_singular_direction_takes_the_largest_not_the_first():
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 3, generator=gen, dtype=torch.float64))
    s = torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64)  # the top one is v[:, 1]
    a = u @ torch.diag(s) @ v.T
    v1, ratio = top_singular_direction(a)
    assert abs_cosine(v1, v[:, 1]) == pytest.approx(1.0, abs=1e-12)
    assert abs_cosine(v1, v[:, 0]) == pytest.approx(0.0, abs=1e-10)
    assert ratio == pytest.approx(25 / 30, rel=1e-12)
    # the sign: flipping every row flips v1
    v1_neg, _ = top_singular_direction(-a)
    torch.testing.assert_close(v1_neg, -v1)
    assert float((a @ v1).sum()) >= 0


@pytest.mark.parametrize("seed", range(12))
def test_top_singular_direction_sign_rule(seed):
    """The SVD's own sign is arbitrary: v1 and -v1 come out about equally often over
    matrices; the rule makes v1 point where the rows point on average, for a and -a."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 7, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(7, generator=gen)
    for m in (a, -a, a[[1, 0, 3, 2, 4]]):
        v1, _ = top_singular_direction(m)
        assert float((m @ v1).sum()) >= 0
    torch.testing.assert_close(top_singular_direction(-a)[0], -top_singular_direction(a)[0])


def test_top_singular_direction_refuses_no_direction():
    with pytest.raises(ValueError, match="all zeros"):
        top_singular_direction(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        top_singular_direction(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match="non-empty float"):
        top_singular_direction(torch.zeros(0, 4))


# ---------------------------------------------------------------- SVD-Universal on linear models


def binary_setup():
    model, x = linear_model(2), images(11)
    W, _ = weights(model)
    u = (W[1] - W[0]) / (W[1] - W[0]).norm()
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])  # unbalanced: the sign rule decides
    return model, x, y, u


def test_gradient_universal_direction_on_a_linear_model():
    model, x, y, u = binary_setup()
    # CE gradient = (p1 - [y = 1]) (w1 - w0): +u for label 0, -u for label 1
    s = torch.where(y == 0, 1.0, -1.0).double()
    rows = attack_directions(model, x, y, "gradient")
    torch.testing.assert_close(rows, s[:, None] * u[None], rtol=0, atol=1e-12)
    ud = svd_universal(model, x, y, attack="gradient")
    expected = float(s.sum()) / abs(float(s.sum())) * u  # 7 label-0 vs 4: +u
    torch.testing.assert_close(ud.direction, expected.view(SHAPE), rtol=0, atol=1e-10)
    assert ud.sv_ratio == pytest.approx(1.0, abs=1e-6)
    assert (ud.attack, ud.n, ud.direction.shape) == ("gradient", 11, SHAPE)
    flipped = svd_universal(model, x, 1 - y, attack="gradient")  # the other majority: -u
    torch.testing.assert_close(flipped.direction, -expected.view(SHAPE), rtol=0, atol=1e-10)


def test_fgsm_universal_direction_on_a_linear_model():
    model, x, y, u = binary_setup()
    ud = svd_universal(model, x, y, attack="fgsm", n=9)  # the first 9: 7 label-0, 2 label-1
    expected = torch.sign(u) / math.sqrt(D)
    torch.testing.assert_close(ud.direction.flatten(), expected, rtol=0, atol=1e-10)
    assert ud.sv_ratio == pytest.approx(1.0, abs=1e-6) and ud.n == 9


def test_deepfool_universal_direction_on_a_linear_model():
    model, x, _, u = binary_setup()
    pred = model(x).argmax(1)
    s = torch.where(pred == 0, 1.0, -1.0).double()  # toward the other class
    assert float(s.sum()) != 0
    ud = svd_universal(model, x, torch.zeros(11, dtype=torch.long), attack="deepfool")
    expected = math.copysign(1.0, float(s.sum())) * u
    torch.testing.assert_close(ud.direction.flatten(), expected, rtol=0, atol=1e-10)
    assert ud.sv_ratio == pytest.approx(1.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:.*exactly zero input gradient:robusthp.attacks.linf.AttackWarning")
def test_zero_directions_stay_zero():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()  # logits = b: every input gradient is exactly zero
    x, y = images(4), torch.tensor([0, 1, 0, 1])
    for attack in ATTACK_DIRECTIONS:
        with pytest.warns(AttackWarning):
            rows = attack_directions(model, x, y, attack)
        assert torch.equal(rows, torch.zeros(4, D, dtype=torch.float64))
        with pytest.warns(AttackWarning, match="every direction is zero"):
            ud = svd_universal(model, x, y, attack)
        assert math.isnan(ud.sv_ratio) and not bool(ud.direction.any())


def test_svd_universal_side_effects_and_inference_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(8, 3)).train()
    model[2].eval()
    modes = [m.training for m in model.modules()]
    model[5].weight.grad = torch.full_like(model[5].weight, 2.0)
    x, y = images(10).float(), torch.arange(10) % 3
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with torch.inference_mode():
        uds = {a: svd_universal(model, x, y, a, n=6, batch_size=4) for a in ATTACK_DIRECTIONS}
        inv = invariant_direction(x)
        rates = fooling_rates(model, x[6:], y[6:], uds["fgsm"].direction, [0, 1])
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[5].weight.grad, torch.full_like(model[5].weight, 2.0))
    assert model[1].weight.grad is None
    for ud in [*uds.values(), inv]:
        assert ud.direction.dtype == torch.float32 and ud.direction.shape == SHAPE
        assert float(ud.direction.norm()) == pytest.approx(1.0, abs=1e-5)
        assert 1 / ud.n - 1e-6 <= ud.sv_ratio <= 1 + 1e-6
    assert rates["flip"][0.0] == 0.0
    # batching does not change the directions
    whole = svd_universal(model, x, y, "gradient", n=6)
    torch.testing.assert_close(whole.direction, uds["gradient"].direction, rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_the_value():
    model, x, y, _ = binary_setup()
    valid = "valid: gradient, fgsm, deepfool"
    with pytest.raises(ValueError, match=f"unknown attack direction 'pgd'; {valid}"):
        attack_directions(model, x, y, "pgd")
    with pytest.raises(ValueError, match="n must be None .* \\[1, 11\\]"):
        svd_universal(model, x, y, n=12)
    with pytest.raises(ValueError, match="norms must be finite numbers >= 0"):
        fooling_rates(model, x, y, torch.zeros(SHAPE, dtype=torch.float64), [1, -2])
    with pytest.raises(ValueError, match="one input's shape"):
        fooling_rates(model, x, y, torch.zeros(D, dtype=torch.float64), [1])


# ---------------------------------------------------------------- fooling rates


def test_fooling_rates_at_norm_zero_and_against_direct_counts():
    model = linear_model(3, seed=5)
    x = images(25, seed=6)
    y = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(7))
    d = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    d = d / d.norm()
    norms = [0, 0.5, 2, 5]
    rates = fooling_rates(model, x, y, d, norms, batch_size=7)
    clean = model(x).argmax(1)
    assert rates["flip"][0.0] == 0.0
    assert rates["error"][0.0] == pytest.approx(1 - float((clean == y).double().mean()))
    for clamp in (True, False):
        got = fooling_rates(model, x, y, d, norms, clamp=clamp, batch_size=None)
        for s in norms:
            moved = x + s * d
            pred = model(moved.clamp(0, 1) if clamp else moved).argmax(1)
            assert got["flip"][float(s)] == float((pred != clean).double().mean())
            assert got["error"][float(s)] == float((pred != y).double().mean())
    assert fooling_rates(model, x, y, d, norms, batch_size=None) == rates  # batching changes nothing


def test_clamped_and_unclamped_differ_where_pixels_saturate():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]]))
        model[1].bias.copy_(torch.tensor([4.5, 0.0]))  # class 1 wins when the pixels sum above 4.5
    x = torch.ones(3, 1, 2, 2, dtype=torch.float64)  # all pixels at 1: sum 4 -> class 0
    y = torch.zeros(3, dtype=torch.long)
    d = torch.full((1, 2, 2), 0.5, dtype=torch.float64)  # unit norm, every pixel up
    clamped = fooling_rates(model, x, y, d, [1.0], clamp=True)
    unclamped = fooling_rates(model, x, y, d, [1.0], clamp=False)
    assert clamped == {"flip": {1.0: 0.0}, "error": {1.0: 0.0}}  # saturated: x + u is x
    assert unclamped == {"flip": {1.0: 1.0}, "error": {1.0: 1.0}}  # sum 6 > 4.5


# ---------------------------------------------------------------- the invariant direction


def disc_and_blob(size: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth centred disc (rotationally symmetric) and the same disc off centre."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2  # the centre pixel at 0
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def disc(cy: float, cx: float) -> torch.Tensor:
        r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        return torch.sigmoid((5.0 - r) / 1.0)[None, None]  # radius 5, soft 1-pixel edge

    return disc(0, 0), disc(-4, 5)


def test_rotation_tangent_of_a_centred_disc_is_about_zero():
    centred, off = disc_and_blob()
    t_centred = rotation_tangents(centred).norm() / centred.norm()
    t_off = rotation_tangents(off).norm() / off.norm()
    assert float(t_off) > 0.5  # an off-centre blob moves ~ its distance from the centre per radian
    assert float(t_centred) < 0.02 * float(t_off)


def test_invariant_direction_is_the_normalized_tangent():
    _, off = disc_and_blob()
    same = off.repeat(3, 1, 1, 1)
    inv = invariant_direction(same, delta_degrees=2.0)
    t = rotation_tangents(off)[0]
    torch.testing.assert_close(inv.direction, t / t.norm(), rtol=0, atol=1e-10)  # sign: +t
    assert inv.sv_ratio == pytest.approx(1.0, abs=1e-9)
    assert (inv.attack, inv.n, inv.direction.shape) == ("invariant", 3, (1, 21, 21))
    blobs = torch.cat([off, torch.flip(off, dims=(-1,)), torch.rot90(off, 1, dims=(-2, -1))])
    mixed = invariant_direction(blobs)
    assert float(mixed.direction.norm()) == pytest.approx(1.0, abs=1e-12)
    assert 1 / 3 - 1e-9 <= mixed.sv_ratio <= 1 + 1e-9
    with pytest.raises(ValueError, match="\\(N, C, H, W\\)"):
        invariant_direction(off.flatten(1))


def test_abs_cosine():
    a = torch.tensor([1.0, 0.0])
    assert abs_cosine(a, torch.tensor([-2.0, 0.0])) == 1.0
    assert abs_cosine(a, torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(abs_cosine(a, torch.zeros(2)))
