"""The strong attack protocol: PGD restarts, AutoAttack at the reference's settings (also on
a per-channel box), the per-point worst case over attacks, and the minimal-eps curve never
reading above an attack that ran."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.attacks import (
    accuracies,
    autoattack,
    bind,
    bounded_by_attacks,
    correct_masks,
    minimal_eps,
    pgd,
    robust_accuracy,
    robustness_curve,
    worst_case,
)
from robusthp.callbacks.adversarial import AdversarialRobustness

NUM_CLASSES = 4


def problem(n: int = 96, seed: int = 0):
    """Four noisy prototypes on 8x8 images and a small MLP trained on them (~1 s): a model
    that is right on most points and fooled by small L-inf boxes on some."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(NUM_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))

    def draw(m):
        y = torch.randint(0, NUM_CLASSES, (m,), generator=gen)
        x = (protos[y] * 0.6 + 0.2 + 0.25 * torch.randn(m, 1, 8, 8, generator=gen)).clamp(0, 1)
        return x, y

    x_train, y_train = draw(2000)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for _ in range(150):
        idx = torch.randint(0, 2000, (64,), generator=gen)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    x, y = draw(n)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def trained():
    return problem()


def acc(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


# ---------------------------------------------------------------- PGD restarts


def test_one_restart_is_the_plain_attack(trained):
    model, x, y = trained
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for random_start in (False, True):
        plain = pgd(model, x, y, eps=0.1, steps=5, random_start=random_start, generator=gen_a)
        once = pgd(model, x, y, eps=0.1, steps=5, random_start=random_start, generator=gen_b, restarts=1)
        assert torch.equal(plain, once)


def test_restarts_equal_a_loop_of_random_start_runs(trained):
    """Independent reference: the first run, then random-start runs on what is left, each
    from the same generator stream; a point keeps its first misclassified result."""
    model, x, y = trained
    eps, steps, restarts = 0.15, 3, 4
    ours = pgd(model, x, y, eps=eps, steps=steps, restarts=restarts,
               generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    ref = pgd(model, x, y, eps=eps, steps=steps, generator=gen)
    left = acc(model, ref, y)
    runs_fooled_something = False
    for _ in range(restarts - 1):
        index = left.nonzero().flatten()
        again = pgd(model, x[index], y[index], eps=eps, steps=steps, random_start=True, generator=gen)
        fooled = ~acc(model, again, y[index])
        runs_fooled_something |= bool(fooled.any())
        ref[index[fooled]] = again[fooled]
        left[index[fooled]] = False
    assert torch.equal(ours, ref)
    assert runs_fooled_something  # the restarts did something on this model
    once = pgd(model, x, y, eps=eps, steps=steps)
    assert bool((acc(model, ours, y) <= acc(model, once, y)).all())  # never weaker, per point
    assert (ours - x).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_restarts_leave_the_global_rng_and_check_their_argument(trained):
    model, x, y = trained
    rng = torch.get_rng_state()
    pgd(model, x[:8], y[:8], eps=0.05, steps=2, restarts=3)
    assert torch.equal(torch.get_rng_state(), rng)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
            pgd(model, x, y, eps=0.05, restarts=bad)
    with pytest.raises(ValueError, match="restarts > 1 needs eval mode"):
        pgd(model, x, y, eps=0.05, restarts=2, keep_mode=True)


def test_restarts_with_a_per_sample_box(trained):
    model, x, y = trained
    box = torch.linspace(0.02, 0.12, len(y)).view(-1, 1, 1, 1)
    adv = pgd(model, x, y, eps=box, steps=3, restarts=3)
    assert bool(((adv - x).abs() <= box + 1e-6).all())


# ---------------------------------------------------------------- the worst case over attacks


def test_worst_case_is_the_per_point_minimum():
    masks = {"clean": torch.tensor([True, True, True, False]),
             "fgsm@0.1": torch.tensor([True, False, True, False]),
             "pgd@0.1": torch.tensor([True, True, False, False]),
             "pgd@0.3": torch.tensor([False, True, False, False])}
    worst = worst_case(masks)
    assert set(worst) == {"worst@0.1", "worst@0.3"}
    assert worst["worst@0.1"].tolist() == [True, False, False, False]
    assert worst["worst@0.3"].tolist() == [False, True, False, False]
    accs = accuracies({**masks, **worst})
    assert accs["worst_acc@0.1"] == 0.25 and accs["num_samples"] == 4.0


def test_worst_acc_at_most_each_attack_on_a_model(trained):
    model, x, y = trained
    batches = [(x[:48], y[:48]), (x[48:], y[48:])]
    fns = {f"{name}@{eps:g}": bind(name, eps=eps) for eps in (0.05, 0.1) for name in ("fgsm", "pgd")}
    accs = robust_accuracy(model, batches, fns, worst=True)
    for eps in ("0.05", "0.1"):
        each = [accs[f"fgsm_acc@{eps}"], accs[f"pgd_acc@{eps}"]]
        assert accs[f"worst_acc@{eps}"] <= min(each)
    masks = correct_masks(model, batches, fns)
    by_hand = (masks["fgsm@0.05"] & masks["pgd@0.05"]).double().mean().item()
    assert accs["worst_acc@0.05"] == pytest.approx(by_hand, abs=0)
    assert "worst_acc@0.1" not in robust_accuracy(model, batches, fns)  # only when asked


# ---------------------------------------------------------------- AutoAttack


def test_autoattack_first_stage_is_apgd_ce_at_100_steps(trained):
    """A large eps: APGD-CE fools every point, so the result is its output (torchattacks'
    APGD at the reference's 100 iterations, not its own AutoAttack's 10)."""
    model, x, y = trained
    x, y = x[acc(model, x, y)][:16], y[acc(model, x, y)][:16]
    ours = autoattack(model, x, y, eps=0.5)
    theirs = torchattacks.APGD(model, eps=0.5, steps=100, seed=0, loss="ce", n_restarts=1)(x, y)
    assert not acc(model, ours, y).any()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_autoattack_no_weaker_than_pgd_with_restarts(trained):
    """The field's cross-check: AutoAttack <= PGD-100 with 5 random restarts + 0.01."""
    model, x, y = trained
    x, y = x[:48], y[:48]
    eps = 0.1
    aa = acc(model, autoattack(model, x, y, eps=eps), y).double().mean().item()
    restarts = pgd(model, x, y, eps=eps, steps=100, random_start=True, restarts=5,
                   generator=torch.Generator().manual_seed(0))
    pgd_acc = acc(model, restarts, y).double().mean().item()
    assert 0 < pgd_acc < acc(model, x, y).double().mean().item()  # eps bites but not fully
    assert aa <= pgd_acc + 0.01


def test_autoattack_on_a_per_channel_box():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = torch.rand(24, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x[:, :, 0, 0] = 1.0  # pixels on the range's edges: the box meets [0, 1]
    x[:, :, 0, 1] = 0.0
    y = acc(model, x, x.new_zeros(24, dtype=torch.long)).long() * 0 + model(x).argmax(1)
    box = torch.tensor([0.02, 0.05, 0.035]).view(3, 1, 1)
    adv = autoattack(model, x, y, eps=box)
    assert bool(((adv - x).abs() <= box + 1e-6).all()) and adv.min() >= 0 and adv.max() <= 1
    fooled = ~acc(model, adv, y)
    assert fooled.any()
    # a uniform box at the largest channel's radius contains this one: it fools at least as many
    # points as PGD-100 with restarts in the smaller box
    small = pgd(model, x, y, eps=box, steps=100, random_start=True, restarts=5)
    assert fooled.double().mean() >= (~acc(model, small, y)).double().mean() - 1 / 24
    uniform = torch.full((3, 1, 1), 0.03)  # equal channels: the plain path, bit for bit
    torch.testing.assert_close(autoattack(model, x, y, eps=uniform), autoattack(model, x, y, eps=0.03),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="one radius per channel"):
        autoattack(model, x, y, eps=torch.full((2, 1, 1), 0.1))
    with pytest.raises(ValueError, match="L-inf box"):
        autoattack(model, x, y, eps=box, norm="L2")


# ---------------------------------------------------------------- the minimal-eps curve's bound


def test_bounded_eps_star_never_reads_above_an_attack():
    eps_star = torch.tensor([0.0, 0.05, 0.2, float("inf"), 0.12])
    fooled = torch.tensor([True, False, True, True, False])
    out = bounded_by_attacks(eps_star, [(0.1, fooled)])
    assert out.tolist() == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.12])
    attack_acc = 1 - fooled.double().mean().item()
    assert robustness_curve(out, [0.1]).item() <= attack_acc
    assert torch.equal(eps_star, torch.tensor([0.0, 0.05, 0.2, float("inf"), 0.12]))  # not in place
    with pytest.raises(ValueError, match="shape"):
        bounded_by_attacks(eps_star, [(0.1, fooled[:3])])


def test_curve_at_most_every_attack_exactly_on_a_model(trained):
    """A search with few probe steps (to make misses likely): after the bound, the curve at
    each attacked eps is <= that attack's accuracy, exactly."""
    model, x, y = trained
    eps_star = minimal_eps(model, x, y, eps_max=0.2, steps=5, bisections=3, probe_steps=2)
    attacked = []
    for eps in (0.03, 0.06, 0.1):
        for name in ("fgsm", "pgd"):
            attacked.append((eps, ~acc(model, bind(name, eps=eps)(model, x, y), y)))
    bounded = bounded_by_attacks(eps_star, attacked)
    for eps, fooled in attacked:
        assert robustness_curve(bounded, [eps]).item() <= 1 - fooled.double().mean().item()
    assert bool((bounded <= eps_star).all())


def test_callback_worst_autoattack_and_bounded_curve(trained):
    model, x, y = trained
    loader = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=24)
    cb = AdversarialRobustness(eps=[0.05, 0.1], attacks=("fgsm", "pgd", "autoattack"), pgd_steps=5,
                               pgd_restarts=2, random_start=True, min_eps=True, progress=False,
                               batch_size=None)
    results = cb.evaluate(model, loader)
    for key in ("0.05", "0.1"):
        each = [results[f"{name}_acc@{key}"] for name in ("fgsm", "pgd", "autoattack")]
        assert results[f"worst_acc@{key}"] <= min(each)
        eps = float(key)
        curve = robustness_curve(torch.tensor([e if e is not None else float("inf")
                                               for e in results["min_eps_star"]]), [eps]).item()
        assert curve <= results[f"worst_acc@{key}"]
    assert results["worst_acc"] == results["worst_acc@0.05"]
    assert results["autoattack_acc"] == results["autoattack_acc@0.05"]
    assert results["min_eps_bounded"] >= 0
    with pytest.raises(ValueError, match="pgd_restarts"):
        AdversarialRobustness(eps=0.1, pgd_restarts=0)


def test_callback_autoattack_on_a_subset(trained):
    """AutoAttack on the first 12 of 48 points: its accuracy and the worst case count those
    12; FGSM and clean count all 48; the curve's cap uses AutoAttack only where it ran."""
    model, x, y = trained
    loader = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=20)
    cb = AdversarialRobustness(eps=0.1, attacks=("fgsm", "autoattack"), autoattack_num_samples=12,
                               min_eps=True, progress=False, batch_size=None)
    results = cb.evaluate(model, loader)
    assert results["adversarial_num_samples"] == 48 and results["autoattack_num_samples"] == 12
    fgsm_first = acc(model, bind("fgsm", eps=0.1)(model, x[:12], y[:12]), y[:12])
    aa_first = acc(model, autoattack(model, x[:12], y[:12], eps=0.1), y[:12])
    assert results["autoattack_acc"] == pytest.approx(aa_first.double().mean().item(), abs=0)
    assert results["worst_acc"] == pytest.approx((fgsm_first & aa_first).double().mean().item(), abs=0)
    assert results["fgsm_acc"] == pytest.approx(
        acc(model, bind("fgsm", eps=0.1)(model, x[:48], y[:48]), y[:48]).double().mean().item(), abs=0)
