"""robusthp.attacks' L2 PGD, noises and AutoAttack: independent references, budgets, side effects.

References: torchattacks' PGDL2 and AutoAttack, scipy's DCT, DCT basis images written
from the cosine formula, and the noise's own statistics.
"""

from __future__ import annotations

import math
import random
import sys
import warnings

import numpy as np
import pytest
import scipy.fft
import torch
import torchattacks
from torch import nn

from robusthp.attacks import (
    ATTACKS,
    AttackWarning,
    autoattack,
    band_noise,
    bind,
    dct_matrix,
    gaussian_noise,
    get_attack,
    pgd_l2,
    radial_bands,
    robust_accuracy,
)

NUM_CLASSES = 4


def tiny_net(seed: int = 0, channels: int = 1) -> nn.Module:
    """Conv + BatchNorm + Dropout: train/eval mode changes its output."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 8 * 8, NUM_CLASSES),
    )


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on noisy prototypes (high clean accuracy), and test points."""
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(NUM_CLASSES, 1, 8, 8, generator=gen)

    def sample(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        return (protos[y] * 0.6 + 0.2 + 0.15 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1), y

    x, y = sample(256)
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        idx = torch.randint(0, 256, (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return (model, *sample(64))


@pytest.fixture
def untrained():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    return tiny_net(seed=1).eval(), x, torch.randint(0, NUM_CLASSES, (16,), generator=gen)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def l2_dist(a, b) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


# ---------------------------------------------------------------- PGD-L2


@pytest.mark.parametrize("eps, alpha", [(0.3, None), (1.0, 0.2), (2.0, None)])
def test_pgd_l2_matches_torchattacks(trained, eps, alpha):
    model, x, y = trained
    steps = 7
    ours = pgd_l2(model, x, y, eps=eps, alpha=alpha, steps=steps)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_pgd_l2_random_start_matches_torchattacks_given_the_same_seed(trained):
    model, x, y = trained
    ours = pgd_l2(model, x, y, eps=0.5, alpha=0.1, steps=3, random_start=True,
                  generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)  # torchattacks draws its start from the global RNG
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=3, random_start=True)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("eps", [0.1, 0.5, 3.0])
def test_pgd_l2_stays_in_the_ball_and_the_box(untrained, eps, random_start):
    model, x, y = untrained
    adv = pgd_l2(model, x, y, eps=eps, steps=5, random_start=random_start)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert l2_dist(adv, x).max().item() <= eps + 1e-5
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_pgd_l2_lowers_accuracy_and_reaches_the_ball(trained):
    model, x, y = trained
    adv = pgd_l2(model, x, y, eps=1.5, steps=10)
    assert accuracy(model, adv, y) < accuracy(model, x, y) - 0.2
    assert l2_dist(adv, x).max().item() > 1.4  # it uses its budget


def test_pgd_l2_default_alpha_and_zero_eps(trained):
    model, x, y = trained
    torch.testing.assert_close(pgd_l2(model, x, y, eps=0.8, steps=4),
                               pgd_l2(model, x, y, eps=0.8, alpha=0.5, steps=4), atol=0, rtol=0)
    assert torch.equal(pgd_l2(model, x, y, eps=0.0), x)


def test_pgd_l2_stop_when_fooled_is_never_weaker(trained):
    model, x, y = trained
    last = pgd_l2(model, x, y, eps=1.0, steps=6)
    first = pgd_l2(model, x, y, eps=1.0, steps=6, stop_when_fooled=True)
    assert l2_dist(first, x).max().item() <= 1.0 + 1e-5
    with torch.no_grad():
        fooled_last = model(last).argmax(1) != y
        fooled_first = model(first).argmax(1) != y
    assert bool((fooled_first | ~fooled_last).all())  # every point fooled at the end is fooled


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("inf")}, "eps must be"),
        ({"eps": torch.tensor(0.1)}, "one number"),
        ({"eps": 0.1, "steps": 0}, "steps must be"),
        ({"eps": 0.1, "alpha": 0.0}, "alpha"),
    ],
)
def test_pgd_l2_bad_settings_raise(untrained, kwargs, match):
    model, x, y = untrained
    with pytest.raises(ValueError, match=match):
        pgd_l2(model, x, y, **kwargs)


# ---------------------------------------------------------------- DCT and bands


@pytest.mark.parametrize("n", [1, 8, 28])
def test_dct_matrix_is_scipys_orthonormal_dct(n):
    c = dct_matrix(n, dtype=torch.float64)
    torch.testing.assert_close(c.T @ c, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    img = torch.rand(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = torch.from_numpy(scipy.fft.dctn(img.numpy(), norm="ortho"))
    torch.testing.assert_close(c.T @ img @ c, expected, atol=1e-12, rtol=0)
    signal = img[0]
    torch.testing.assert_close(c.T @ signal, torch.from_numpy(scipy.fft.dct(signal.numpy(), norm="ortho")),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(c @ expected @ c.T, img, atol=1e-12, rtol=0)  # the inverse


@pytest.mark.parametrize("u, v", [(0, 0), (0, 3), (5, 1), (7, 7)])
def test_a_dct_basis_image_has_one_coefficient(u, v):
    """The basis image written from the cosine formula, not from dct_matrix."""
    n = 8

    def basis(k):
        scale = math.sqrt((1.0 if k == 0 else 2.0) / n)
        return torch.tensor([scale * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n)],
                            dtype=torch.float64)

    img = torch.outer(basis(u), basis(v))  # img[i, k] = b_u(i) b_v(k)
    c = dct_matrix(n, dtype=torch.float64)
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[u, v] = 1.0
    torch.testing.assert_close(c.T @ img @ c, expected, atol=1e-12, rtol=0)


def test_dct_matrix_dtype_and_device():
    c = dct_matrix(4)
    assert c.dtype == torch.float32 and c.device.type == "cpu" and c.shape == (4, 4)
    assert c[0, 0].item() == pytest.approx(0.5) and c[0, 1].item() == pytest.approx(
        math.sqrt(0.5) * math.cos(math.pi / 8))


@pytest.mark.parametrize("n, bands, sizes", [(32, 10, {102, 103}), (28, 10, {78, 79}), (8, 4, {16})])
def test_radial_bands_are_equal_count_and_cover_every_coefficient_once(n, bands, sizes):
    labels = radial_bands(n, bands)
    assert labels.shape == (n, n) and labels.dtype == torch.int64
    counts = torch.bincount(labels.flatten(), minlength=bands)
    assert len(counts) == bands and int(counts.sum()) == n * n  # one band per coefficient
    assert set(counts.tolist()) == sizes
    assert labels[0, 0].item() == 0 and labels[n - 1, n - 1].item() == bands - 1
    u, v = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    radius2 = (u * u + v * v).flatten()
    for b in range(bands - 1):  # ordered by radius: band b ends where band b + 1 starts
        assert radius2[labels.flatten() == b].max() <= radius2[labels.flatten() == b + 1].min()


def test_radial_bands_deterministic_and_checked():
    assert torch.equal(radial_bands(32, 10), radial_bands(32, 10))
    assert torch.equal(radial_bands(3, 9), torch.tensor([[0, 1, 4], [2, 3, 6], [5, 7, 8]]))
    with pytest.raises(ValueError, match="bands must be an integer in \\[1, 64\\]"):
        radial_bands(8, 65)
    with pytest.raises(ValueError, match="bands must be"):
        radial_bands(8, 0)


# ---------------------------------------------------------------- noises


@pytest.mark.parametrize("band", [0, 4, 9])
def test_band_noise_lies_only_in_its_band(band):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    out = band_noise(None, x, y, band=band, bands=10, var=0.01, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    c = torch.from_numpy(scipy.fft.dctn((out - x).numpy(), axes=(-2, -1), norm="ortho"))  # independent DCT
    inside = torch.from_numpy(np.asarray(radial_bands(32, 10) == band))
    assert c[..., ~inside].abs().max().item() < 1e-12
    assert (c[..., inside] != 0).all()
    # the kept coefficients are N(0, 0.01): 6 x 3 x ~102 of them
    assert c[..., inside].pow(2).mean().item() == pytest.approx(0.01, rel=0.15)


def test_band_noise_is_unclamped_and_batched_in_float32():
    x = torch.ones(4, 1, 28, 28)
    out = band_noise(None, x, torch.zeros(4, dtype=torch.long), band=0, bands=10, var=0.01)
    assert out.max().item() > 1.0 and out.min().item() < 1.0  # added, not clipped to [0, 1]
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = band_noise(None, x, torch.zeros(4, dtype=torch.long), band=0, bands=10, var=0.01)
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, out, atol=0, rtol=0)  # fp32 even inside autocast; seeded 0


def test_band_noise_bad_arguments():
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="band must be an integer in \\[0, 4\\); got 4"):
        band_noise(None, x, y, band=4, bands=4)
    with pytest.raises(ValueError, match="square"):
        band_noise(None, torch.rand(2, 1, 8, 6), y, band=0, bands=4)
    with pytest.raises(ValueError, match="var"):
        band_noise(None, x, y, band=0, bands=4, var=-1.0)


def test_gaussian_noise_clamps_has_the_variance_and_is_seeded():
    x = torch.full((64, 1, 16, 16), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    out = gaussian_noise(None, x, y, var=0.01, generator=torch.Generator().manual_seed(5))
    assert (out - x).std().item() == pytest.approx(0.1, rel=0.05)
    wide = gaussian_noise(None, x, y, var=1.0)
    assert wide.min().item() == 0.0 and wide.max().item() == 1.0  # clamped to [0, 1]
    again = gaussian_noise(None, x, y, var=0.01, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = gaussian_noise(None, x, y, var=0.01, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    assert torch.equal(gaussian_noise(None, x, y, var=0.01),  # default: a private generator seeded 0
                       gaussian_noise(None, x, y, var=0.01, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(gaussian_noise(None, x, y, var=0.0), x)
    with pytest.raises(ValueError, match="var"):
        gaussian_noise(None, x, y, var=float("nan"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gaussian_noise(None, x + 1, y, var=0.01)


# ---------------------------------------------------------------- registry, loop, side effects

SETTINGS = {
    "pgd_l2": {"eps": 0.5, "steps": 3, "random_start": True},
    "gaussian": {"var": 0.05},
    "band": {"band": 2, "bands": 4},
}


def test_registry_holds_the_new_names():
    assert {"pgd_l2", "gaussian", "band", "autoattack"} <= set(ATTACKS)
    assert get_attack("pgd_l2") is pgd_l2 and get_attack("gaussian") is gaussian_noise
    assert get_attack("band") is band_noise and get_attack("autoattack") is autoattack


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_side_effects_mode_rng_grad(untrained, name):
    model, x, y = untrained
    model.train()
    model[1].eval()  # a submodule with its own flag keeps it
    bn_stats = model[1].running_mean.clone()
    model[5].weight.grad = torch.ones_like(model[5].weight)
    rng = torch.get_rng_state()
    get_attack(name)(model, x, y, **SETTINGS[name])
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model] == [True, False, True, True, True, True]
    assert torch.equal(model[1].running_mean, bn_stats)
    assert torch.equal(model[5].weight.grad, torch.ones_like(model[5].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "5.weight")


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(untrained, name, context):
    model, x, y = untrained
    expected = get_attack(name)(model, x, y, **SETTINGS[name])
    ctx = torch.inference_mode if context == "inference_mode" else torch.no_grad
    with ctx():
        xi, yi = x.clone(), y.clone()
        out = get_attack(name)(model, xi, yi, **SETTINGS[name])
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_pgd_l2_runs_in_fp32_inside_autocast(untrained):
    model, x, y = untrained
    expected = pgd_l2(model, x, y, 0.5, steps=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = pgd_l2(model, x, y, 0.5, steps=3)
    torch.testing.assert_close(adv, expected, atol=0, rtol=0)


def test_robust_accuracy_runs_them_and_no_pgd_warning_for_l2(trained):
    model, x, y = trained
    fns = {
        "fgsm@0.1": bind("fgsm", eps=0.1),
        "pgd_l2@0.1": lambda m, x, y: x,  # an "L2 PGD" weaker than FGSM: no FGSM partner
        "gaussian@0.01": bind("gaussian", var=0.01),
        "band@0": bind("band", band=0, bands=4, var=0.01),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttackWarning)
        accs = robust_accuracy(model, [(x[:32], y[:32]), (x[32:], y[32:])], fns)
    assert set(accs) == {"clean_acc", "fgsm_acc@0.1", "pgd_l2_acc@0.1", "gaussian_acc@0.01",
                         "band_acc@0", "num_samples"}
    assert accs["pgd_l2_acc@0.1"] == accs["clean_acc"]


# ---------------------------------------------------------------- AutoAttack


def two_layer_net() -> nn.Module:
    torch.manual_seed(2)  # its 8 points below span 3 classes
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)).eval()


def aa_points(model, n: int = 8):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return x, model(x).argmax(1)  # all clean-correct: every one is attacked


@pytest.mark.parametrize("norm, eps", [("Linf", 0.3), ("L2", 3.0)])
def test_autoattack_matches_torchattacks_and_restores_the_rngs(norm, eps):
    """A large eps: APGD-CE fools every point, so the run is short and its output is
    torchattacks' APGD at the reference implementation's 100 iterations."""
    model = two_layer_net()
    x, y = aa_points(model)
    random.seed(1)
    np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    ours = autoattack(model, x, y, eps=eps, norm=norm, seed=0)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2][1])
    theirs = torchattacks.APGD(model, norm=norm, eps=eps, steps=100, seed=0, loss="ce")(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert accuracy(model, ours, y) == 0.0
    dist = (ours - x).abs().flatten(1).amax(1) if norm == "Linf" else l2_dist(ours, x)
    assert dist.max().item() <= eps + 1e-5 and 0.0 <= ours.min() and ours.max() <= 1.0


def test_autoattack_side_effects_when_every_sub_attack_runs():
    """A tiny eps: nothing is fooled, so APGD, APGD-T, FAB (which calls .backward()) and
    Square all run, each reseeding the global RNG."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, NUM_CLASSES))
    model.train()
    model[2].eval()
    x, y = aa_points(model.eval(), n=4)
    model.train()
    model[2].eval()
    model[4].weight.grad = torch.ones_like(model[4].weight)
    rng = torch.get_rng_state()
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = None if tracker is None or torch.cuda.is_initialized() else dict(vars(tracker))
    with torch.inference_mode():
        adv = autoattack(model, x.clone(), y.clone(), eps=1e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    if queued is not None:  # torch.cuda.manual_seed's seed queued for CUDA's initialisation: undone
        assert dict(vars(tracker)) == queued
    assert [m.training for m in model] == [True, True, False, True, True]
    assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "4.weight")
    assert (adv - x).abs().max().item() <= 1e-3 + 1e-6
    assert accuracy(model.eval(), adv, y) == 1.0  # nothing fooled: all four sub-attacks ran


def test_autoattack_bad_arguments_and_missing_package(monkeypatch):
    model = two_layer_net()
    x, y = aa_points(model, n=2)
    with pytest.raises(ValueError, match="norm must be one of Linf, L2; got 'L1'"):
        autoattack(model, x, y, eps=0.1, norm="L1")
    with pytest.raises(ValueError, match="eps must be"):
        autoattack(model, x, y, eps=-1.0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        autoattack(three, x, torch.zeros(2, dtype=torch.long), eps=0.1)
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match="pip install torchattacks"):
        autoattack(model, x, y, eps=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_stay_on_cuda_and_the_cuda_rng_is_restored():
    model = two_layer_net()
    x, y = aa_points(model)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    outs = [
        pgd_l2(model, x, y, eps=0.5, steps=3, random_start=True),
        pgd_l2(model, x, y, eps=0.5, steps=3, random_start=True, generator=cuda_gen),
        gaussian_noise(model, x, y, var=0.01),
        gaussian_noise(model, x, y, var=0.01, generator=torch.Generator().manual_seed(0)),  # a CPU one
        band_noise(model, x, y, band=1, bands=4),
    ]
    assert all(out.device == x.device and out.shape == x.shape for out in outs)
    assert l2_dist(outs[0], x).max().item() <= 0.5 + 1e-5
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    adv = autoattack(model, x, y, eps=0.3)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert adv.device == x.device and (adv - x).abs().max().item() <= 0.3 + 1e-6
