"""robusthp.attacks.minimal_eps and its curve: exact on linear models, no weaker than PGD-40."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robusthp.attacks import (
    MIN_EPS_BISECTIONS,
    min_eps_summary,
    minimal_adversarial,
    minimal_eps,
    pgd,
    robustness_curve,
)

# ---------------------------------------------------------------- a binary linear model: eps* is analytic


def linear_problem(channels: int = 1, n: int = 64, seed: int = 0):
    """2-class linear model on (n, channels, 4, 4) interior points (pixels in [0.3, 0.7]),
    labels = its own predictions, so every point is classified correctly."""
    gen = torch.Generator().manual_seed(seed)
    dim = channels * 16
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, dim, generator=gen))
        model[1].bias.copy_(torch.randn(2, generator=gen))
    x = 0.3 + 0.4 * torch.rand(n, channels, 4, 4, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def exact_min_eps(model: nn.Module, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|w.x + b| / sum_c scale_c ||w_c||_1 for logits difference w.x + b (box not binding)."""
    w = model[1].weight[1] - model[1].weight[0]  # (D,)
    b = model[1].bias[1] - model[1].bias[0]
    margin = (x.flatten(1) @ w + b).abs()  # (N,)
    per_pixel = torch.ones_like(x[0]) if scale is None else torch.ones_like(x[0]) * scale
    return (margin / (w.abs() @ per_pixel.flatten())).detach()


def test_linear_model_eps_star_is_the_exact_minimum():
    model, x, y = linear_problem()
    exact = exact_min_eps(model, x)
    keep = exact < 0.25  # x +- eps* stays inside [0, 1]: the analytic answer holds
    x, y, exact = x[keep], y[keep], exact[keep]
    eps_max = 0.5
    found = minimal_eps(model, x, y, eps_max=eps_max)
    tolerance = eps_max / 2**MIN_EPS_BISECTIONS  # the bracket's width after the bisections
    assert len(y) >= 20 and bool(torch.isfinite(found).all())
    assert torch.all(found >= exact - 1e-6)  # no adversarial example beats the minimum
    assert torch.all(found <= exact + tolerance)
    sweep_only = minimal_eps(model, x, y, eps_max=eps_max, bisections=0)
    assert (sweep_only - exact).max() > 2 * tolerance  # the bisection is what gets it this close


def test_per_channel_scale_gives_eps_star_in_normalized_units():
    model, x, y = linear_problem(channels=3, seed=1)
    std = torch.tensor([0.25, 0.5, 1.0]).view(3, 1, 1)
    exact = exact_min_eps(model, x, std)
    keep = exact < 0.25  # the widest box (scale 1) stays inside [0, 1]
    x, y, exact = x[keep], y[keep], exact[keep]
    found, adv = minimal_adversarial(model, x, y, eps_max=0.5, scale=std)
    assert len(y) >= 10
    assert torch.all(found >= exact - 1e-6) and torch.all(found <= exact + 0.5 / 2**MIN_EPS_BISECTIONS)
    assert torch.all(((adv - x) / std).abs().amax(dim=(1, 2, 3)) <= found + 1e-6)
    torch.testing.assert_close(minimal_eps(model, x, y, eps_max=0.5, scale=[0.25, 0.5, 1.0]), found)


def test_clean_misclassified_is_zero_and_out_of_range_is_inf():
    model, x, y = linear_problem()
    exact = exact_min_eps(model, x)
    wrong = 1 - y  # every point misclassified clean
    assert torch.equal(minimal_eps(model, x, wrong, eps_max=0.5), torch.zeros(len(y)))
    y_mixed = torch.where(torch.arange(len(y)) % 2 == 0, wrong, y)
    eps_max = float(exact.min()) / 2  # below every true eps*: nothing can be fooled
    found = minimal_eps(model, x, y_mixed, eps_max=eps_max)
    assert torch.equal(found[::2], torch.zeros(len(y[::2])))
    assert torch.all(torch.isinf(found[1::2]))


# ---------------------------------------------------------------- curve and summary (exact values)


def test_robustness_curve_is_the_step_function():
    eps_star = torch.tensor([0.0, 0.1, 0.2, math.inf])
    acc = robustness_curve(eps_star, [0.0, 0.05, 0.1, 0.15, 0.3])
    torch.testing.assert_close(acc, torch.tensor([0.75, 0.75, 0.5, 0.5, 0.25], dtype=torch.float64))


def test_summary_median_auc_and_above_max():
    eps_star = torch.tensor([0.0, 0.1, 0.2, math.inf])
    summary = min_eps_summary(eps_star, 0.4)
    assert summary["median_min_eps"] == pytest.approx(0.1)  # lower median: an attained eps*
    assert summary["min_eps_auc"] == pytest.approx((0.0 + 0.1 + 0.2 + 0.4) / 4 / 0.4)
    assert summary["min_eps_above_max"] == 0.25 and summary["min_eps_max"] == 0.4
    curve = summary["min_eps_curve"]
    assert len(curve["eps"]) == len(curve["acc"]) == 101
    assert curve["eps"][0] == 0.0 and curve["eps"][-1] == pytest.approx(0.4)
    assert curve["acc"][0] == 0.75  # the clean accuracy
    assert summary["min_eps_star"][:3] == pytest.approx([0.0, 0.1, 0.2]) and summary["min_eps_star"][3] is None
    # the AUC is the curve's exact integral: a fine trapezoid on the step function converges to it
    grid = torch.linspace(0, 0.4, 40001, dtype=torch.float64)
    numeric = torch.trapezoid(robustness_curve(eps_star, grid), grid) / 0.4
    assert summary["min_eps_auc"] == pytest.approx(float(numeric), abs=1e-4)


def test_summary_when_more_than_half_are_not_fooled():
    summary = min_eps_summary(torch.tensor([0.1, math.inf, math.inf]), 0.3)
    assert summary["median_min_eps"] == 0.3 and summary["min_eps_above_max"] == pytest.approx(2 / 3)
    half = min_eps_summary(torch.tensor([0.1, 0.2, math.inf, math.inf]), 0.3)
    assert half["median_min_eps"] == pytest.approx(0.2)  # exactly half: still an attained eps*


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps_max": 0.0}, "eps_max must be"),
        ({"eps_max": float("nan")}, "eps_max must be"),
        ({"eps_max": 0.3, "bisections": -1}, "bisections must be"),
        ({"eps_max": 0.3, "probe_steps": 0}, "steps must be"),
        ({"eps_max": 0.3, "scale": [0.5, -1.0]}, "scale"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    model, x, y = linear_problem(channels=2, n=4)
    with pytest.raises(ValueError, match=match):
        minimal_eps(model, x, y, **kwargs)


def test_bad_eps_star_raises():
    with pytest.raises(ValueError, match="eps_star must be >= 0"):
        robustness_curve(torch.tensor([0.1, float("nan")]), [0.0])
    with pytest.raises(ValueError, match="1-D"):
        min_eps_summary(torch.zeros(2, 2), 0.3)


# ---------------------------------------------------------------- contract: side effects, progress


def test_side_effects_and_progress():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(4 * 6 * 6, 3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    expected = minimal_eps(model.eval(), x, y, eps_max=0.5, bisections=3)
    model.train()
    rng, calls = torch.get_rng_state(), []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        xi, yi = x.clone(), y.clone()  # inference tensors
        found = minimal_eps(model, xi, yi, eps_max=0.5, bisections=3,
                            progress=lambda done, total: calls.append((done, total)))
    torch.testing.assert_close(found, expected, atol=0, rtol=0)  # eval mode, fp32
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- strength on real MNIST

LISTED_EPS = (0.03, 0.06, 0.1, 0.15)
EPS_MAX = 0.3


class CountingModel(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += int(x.shape[0])
        return self.model(x)


@pytest.fixture(scope="module")
def mnist_search():
    """A small convnet trained ~2 s on real MNIST (~95% clean), 500 test points, and its
    minimal_eps search on them."""
    from conftest import real_data_root
    from torchvision.datasets import MNIST

    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found (set ROBUSTHP_DATA_DIR or put ../shared/datasets beside the repo)")

    def tensors(train: bool, n: int):
        ds = MNIST(str(root), train=train, download=False)
        return ds.data[:n].unsqueeze(1).float().div(255), ds.targets[:n]  # (n, 1, 28, 28), (n,)

    x_train, y_train = tensors(True, 20000)
    x, y = tensors(False, 500)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(y_train), (64,), generator=gen)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    counting = CountingModel(model)
    eps_star, adv = minimal_adversarial(counting, x, y, eps_max=EPS_MAX)
    return model, x, y, eps_star, adv, counting.rows


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_curve_is_no_weaker_than_pgd40_on_mnist(mnist_search):
    model, x, y, eps_star, _, _ = mnist_search
    curve = robustness_curve(eps_star, (0.0,) + LISTED_EPS).tolist()
    assert curve[0] == pytest.approx(accuracy(model, x, y)) and curve[0] > 0.9
    for eps, acc_curve in zip(LISTED_EPS, curve[1:], strict=True):
        acc_pgd = accuracy(model, pgd(model, x, y, eps=eps), y)  # PGD-40, last iterate
        assert acc_curve <= acc_pgd + 0.005, f"eps {eps}: curve {acc_curve:.4f} > PGD-40 {acc_pgd:.4f}"
    assert 0.01 < float(eps_star.median()) < EPS_MAX / 2  # a natural model: fooled well inside eps_max


def test_every_eps_star_is_backed_by_an_adversarial_example(mnist_search):
    model, x, y, eps_star, adv, rows = mnist_search
    finite = torch.isfinite(eps_star)
    assert bool(finite.all())  # nothing survives 0.3 on a naturally trained MNIST net
    with torch.no_grad():
        assert torch.all(model(adv).argmax(1) != y)
    assert torch.all((adv - x).abs().amax(dim=(1, 2, 3)) <= eps_star + 1e-6)
    assert adv.min() >= 0 and adv.max() <= 1
    assert rows <= 3 * 40 * len(y)  # at most three PGD-40 passes' forward passes (issue 13)


def test_median_matches_a_dense_pgd40_grid(mnist_search):
    """Independent reference: per point, the smallest eps of a 0.01-spaced grid at which
    PGD-40 (last iterate) fools it, on the first 100 points."""
    model, x, y, eps_star, _, _ = mnist_search
    x, y, ours = x[:100], y[:100], eps_star[:100]
    step = 0.01
    grid_eps = torch.full((len(y),), math.inf)
    with torch.no_grad():
        grid_eps[model(x).argmax(1) != y] = 0.0
    for k in range(1, round(EPS_MAX / step) + 1):
        left = torch.isinf(grid_eps).nonzero().squeeze(1)
        if left.numel() == 0:
            break
        adv = pgd(model, x[left], y[left], eps=k * step)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y[left]
        grid_eps[left[fooled]] = k * step
    ours_median, grid_median = float(ours.median()), float(grid_eps.median())
    assert abs(ours_median - grid_median) <= step, (ours_median, grid_median)
    assert float((ours <= grid_eps + 1e-6).double().mean()) >= 0.95  # per point, as strong nearly always
