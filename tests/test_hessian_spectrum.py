"""The Hessian beyond its top eigenvalue (trace, SLQ density, per-layer blocks) against the dense
Hessian of tiny float64 models and against PyHessian's own ``trace()`` and ``density()``."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_hessian import SmallCNN, WithUnused, dense_hessian, image_batches, mlp, two_batches
from torch import nn

from robusthp.config_store import UNNAMED_KEYS
from robusthp.hessian import (
    ROOT_BLOCK,
    _rademacher,
    hessian_density,
    hessian_trace,
    layer_top_eigenvalues,
    parameter_blocks,
    smoothed_density,
)
from robusthp.results import fingerprint
from robusthp.settings import HESSIAN_SPECTRUM_KEYS, HessianSettings

DIM = 195  # mlp()'s parameters, all with curvature


@pytest.fixture(scope="module")
def dense():
    """The dense Hessian of mlp() on two_batches() and its eigenvalues (ascending)."""
    h = dense_hessian(mlp(), two_batches())
    return h, torch.linalg.eigvalsh(h)


def draws(seed: int, count: int, dim: int = DIM) -> list[torch.Tensor]:
    """The Rademacher vectors the estimators draw first, in order."""
    gen = torch.Generator().manual_seed(seed)
    return [_rademacher(dim, gen) for _ in range(count)]


# ---------------------------------------------------------------------------- trace


def test_trace_samples_are_the_dense_quadratic_forms(dense):
    h, _ = dense
    res = hessian_trace(mlp(), two_batches(), tol=1e-9, max_iter=12, min_iter=2, seed=3)
    want = torch.tensor([float(v @ h @ v) for v in draws(3, 12)], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(res.samples, dtype=torch.float64), want,
                               rtol=1e-9, atol=1e-12)
    assert res.num_hvp == 12 and not res.converged
    assert res.trace == pytest.approx(want.mean().item(), rel=1e-9)
    assert res.se == pytest.approx(want.std().item() / math.sqrt(12), rel=1e-9)
    assert res.seconds > 0


def test_rademacher_entries_are_signs_of_both_kinds():
    v = draws(0, 1, 10_000)[0]
    assert set(v.unique().tolist()) == {-1.0, 1.0} and abs(v.mean().item()) < 0.05


def test_trace_matches_dense_within_its_standard_error(dense):
    h, _ = dense
    res = hessian_trace(mlp(), two_batches(), tol=1e-9, max_iter=800)
    exact = torch.trace(h).item()
    assert res.se < 0.15 * exact  # a test that can see an error of a sixth
    assert abs(res.trace - exact) < 3 * res.se


def test_trace_bounded_memory_is_the_kept_graph():
    kept = hessian_trace(mlp(), two_batches(), max_iter=15, min_iter=15, reuse_graph=True)
    bounded = hessian_trace(mlp(), two_batches(), max_iter=15, min_iter=15, reuse_graph=False)
    np.testing.assert_allclose(bounded.samples, kept.samples, rtol=1e-10)


def test_trace_stops_at_the_first_vector_meeting_tol_after_min_iter():
    res = hessian_trace(mlp(), two_batches(), tol=0.3, max_iter=500, min_iter=10)
    assert res.converged and 10 <= res.num_hvp < 500
    x = torch.tensor(res.samples, dtype=torch.float64)
    rel_se = [(x[:k].std() / math.sqrt(k) / x[:k].mean().abs()).item() for k in range(2, len(x) + 1)]
    first = next(k for k, r in enumerate(rel_se, 2) if k >= 10 and r <= 0.3)
    assert res.num_hvp == first


class Quadratic(nn.Module):
    """Outputs w per sample; with loss 1.5 |w|^2, H = 3 I: every v^T H v is 3 * 7."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(7, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(len(x), 7)


def test_trace_of_a_constant_curvature_stops_at_min_iter():
    batches = [(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long))]
    res = hessian_trace(Quadratic(), batches, loss_fn=lambda out, y: 1.5 * (out[0] ** 2).sum(),
                        min_iter=4)
    assert res.num_hvp == 4 and res.converged and res.se == 0
    assert res.trace == pytest.approx(21.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"tol": 0}, "tol"), ({"tol": math.inf}, "tol"), ({"tol": math.nan}, "tol"),
    ({"min_iter": 1}, "min_iter"), ({"max_iter": 5, "min_iter": 10}, "max_iter"),
])
def test_trace_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_trace(mlp(), two_batches(), **kwargs)


# ---------------------------------------------------------------------------- density


def test_density_with_dim_steps_has_the_dense_eigenvalues_as_nodes(dense):
    h, eig = dense
    res = hessian_density(mlp(), two_batches(), n_v=1, iter=DIM + 50, seed=4)
    nodes, weights = torch.tensor(res.nodes[0], dtype=torch.float64), res.weights[0]
    assert res.dim == DIM and len(nodes) == DIM and res.num_hvp == DIM  # iter capped at dim
    torch.testing.assert_close(nodes, eig, rtol=0, atol=1e-7 * eig.abs().max().item())
    assert sum(weights) == pytest.approx(1.0, abs=1e-12) and min(weights) >= 0
    v = draws(4, 1)[0]
    for power in (1, 2, 3):  # sum w node^j = v^T H^j v / |v|^2, the quadrature being exact
        quad = sum(w * n**power for w, n in zip(weights, res.nodes[0], strict=True))
        exact = float(v @ torch.linalg.matrix_power(h, power) @ v) / DIM
        assert quad == pytest.approx(exact, rel=1e-8, abs=1e-12 * eig.abs().max().item()**power)


@pytest.mark.parametrize("reuse_graph", [True, False])
def test_density_of_k_steps_has_the_first_2k_moments_exact(dense, reuse_graph):
    h, eig = dense
    k = 5
    res = hessian_density(mlp(), two_batches(), n_v=2, iter=k, seed=7, reuse_graph=reuse_graph)
    assert res.num_hvp == 2 * k and [len(n) for n in res.nodes] == [k, k]
    scale = eig.abs().max().item()
    for v, nodes, weights in zip(draws(7, 2), res.nodes, res.weights, strict=True):
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        hv = v / v.norm()
        for power in range(2 * k):  # Gauss quadrature with k nodes: exact to degree 2k - 1
            quad = sum(w * n**power for w, n in zip(weights, nodes, strict=True))
            exact = float(hv @ torch.linalg.matrix_power(h, power) @ hv)
            assert quad == pytest.approx(exact, rel=1e-7, abs=1e-10 * scale**power), power


def test_density_first_moment_averages_to_trace_over_dim(dense):
    h, _ = dense
    res = hessian_density(mlp(), two_batches(), n_v=200, iter=2, seed=1)
    per_vector = torch.tensor([sum(w * n for w, n in zip(ws, ns, strict=True))
                               for ns, ws in zip(res.nodes, res.weights, strict=True)])
    exact = torch.trace(h).item() / DIM
    se = per_vector.std().item() / math.sqrt(len(per_vector))
    assert se < 0.2 * exact and abs(per_vector.mean().item() - exact) < 3 * se


def test_density_truncated_is_a_run_of_fewer_steps():
    long = hessian_density(mlp(), two_batches(), n_v=2, iter=12, seed=5)
    short = hessian_density(mlp(), two_batches(), n_v=2, iter=6, seed=5)
    nodes, weights = long.truncated(6)
    np.testing.assert_allclose(np.array(nodes), np.array(short.nodes), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.array(weights), np.array(short.weights), rtol=1e-8, atol=1e-12)
    assert set(long.as_dict()) == {"nodes", "weights", "dim"}


def test_smoothed_density_has_unit_area_and_the_quadrature_mean():
    nodes, weights = [[0.0, 1.0, 5.0], [0.5, 4.0]], [[0.5, 0.3, 0.2], [0.9, 0.1]]
    grid, density = smoothed_density(nodes, weights, num_bins=20001, overhead=1.0)
    dx = grid[1] - grid[0]
    assert density.sum() * dx == pytest.approx(1.0) and grid[0] == pytest.approx(0.25 - 1.0)
    mean = np.mean([np.dot(n, w) for n, w in zip(nodes, weights, strict=True)])
    assert (grid * density).sum() * dx == pytest.approx(mean, rel=1e-3)
    wide_grid, wide = smoothed_density(nodes, weights, grid=np.linspace(-5, 10, 3001), width=1.0)
    assert wide.max() < density.max()  # a wider kernel: a lower, smoother curve
    with pytest.raises(ValueError, match="same length"):
        smoothed_density(nodes, weights[:1])


# ---------------------------------------------------------------------------- per layer


@pytest.mark.parametrize("reuse_graph", [True, False])
def test_layer_top_eigenvalues_match_dense_diagonal_blocks(dense, reuse_graph):
    h, _ = dense
    res = layer_top_eigenvalues(mlp(), two_batches(), tol=1e-9, max_iter=400,
                                reuse_graph=reuse_graph)
    assert list(res.top_eig) == ["0", "2"] and res.num_params == {"0": 8 * 16 + 16, "2": 16 * 3 + 3}
    start = 0
    for name, size in res.num_params.items():
        block = h[start : start + size, start : start + size]
        assert res.top_eig[name] == pytest.approx(torch.linalg.eigvalsh(block)[-1].item(), rel=1e-6)
        assert res.converged[name]
        start += size
    assert res.num_hvp > 2 and res.seconds > 0


def test_layer_blocks_name_modules_and_skip_those_without_curvature():
    model = WithUnused(mlp())
    blocks = parameter_blocks(model)
    assert ROOT_BLOCK in blocks or list(blocks) == [n for n, m in model.named_modules()
                                                   if list(m.parameters(recurse=False))]
    res = layer_top_eigenvalues(model, two_batches(), tol=1e-6)
    assert set(res.top_eig) < set(blocks)  # the unused module has no curvature: left out
    cnn = SmallCNN()
    assert list(parameter_blocks(cnn)) == ["conv", "bn", "fc"]
    cnn_res = layer_top_eigenvalues(cnn.double(), [(x.double(), y) for x, y in image_batches()])
    assert list(cnn_res.top_eig) == ["conv", "bn", "fc"]


def test_root_owned_parameters_are_one_block():
    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8, dtype=torch.float64))
            self.head = nn.Linear(8, 3).double()

        def forward(self, x):
            return self.head(torch.tanh(x * self.scale))

    assert list(parameter_blocks(Root())) == [ROOT_BLOCK, "head"]


# ---------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("which", ["trace", "density", "per_layer"])
def test_side_effects_left_as_found(which):
    model = SmallCNN()
    model.train()
    modes = [m.training for m in model.modules()]
    sentinels = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinels, strict=True):
        p.grad = s
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    run = {"trace": lambda: hessian_trace(model, image_batches(), max_iter=12),
           "density": lambda: hessian_density(model, image_batches(), iter=4),
           "per_layer": lambda: layer_top_eigenvalues(model, image_batches(), max_iter=5)}[which]
    with torch.inference_mode():
        first = run()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is s for p, s in zip(model.parameters(), sentinels, strict=True))
    again = run()  # seeded privately: the same numbers
    assert first.seconds > 0 and vars(again).keys() == vars(first).keys()
    for key in vars(first):
        if key != "seconds":
            assert getattr(again, key) == getattr(first, key), key


# ---------------------------------------------------------------------------- PyHessian

PYHESSIAN_SEEDS = range(6)


@contextlib.contextmanager
def pyhessian_run(model: nn.Module, batches, seed: int):
    """PyHessian 0.1 on a copy of the model and the batches as one, its global-RNG draws
    seeded (and the caller's RNG restored)."""
    from pyhessian import hessian as PyHessian

    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(seed)
        yield PyHessian(copy.deepcopy(model), F.cross_entropy, data=(x, y), cuda=False)


def _eig_shim(t: torch.Tensor, eigenvectors: bool = False):
    """``torch.eig`` as PyHessian 0.1's density() calls it (removed from torch in 1.9):
    (eigenvalues as (real, imag) columns, eigenvectors as columns); T is symmetric."""
    values, vectors = torch.linalg.eigh(t)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def within_spread(ours: float, theirs: list[float], floor: float = 0.0) -> bool:
    """Ours is within 3 standard deviations of the runs' mean (the spread of one run about
    the mean of len(theirs) runs), or ``floor`` where that spread is below it."""
    centre, sd = float(np.mean(theirs)), float(np.std(theirs, ddof=1))
    return abs(ours - centre) <= max(3 * sd * math.sqrt(1 + 1 / len(theirs)), floor)


def test_trace_agrees_with_pyhessian_within_its_spread():
    model, batches, vectors = mlp(), two_batches(), 40
    theirs = []
    for seed in PYHESSIAN_SEEDS:
        with pyhessian_run(model, batches, seed) as h:
            # tol -inf: no early stop (0.1's rule, without abs, also stops on a negative mean)
            samples = h.trace(maxIter=vectors, tol=-math.inf)
        assert len(samples) == vectors
        theirs.append(float(np.mean(samples)))
    assert np.std(theirs) > 0  # a spread to be within
    for seed in range(3):
        ours = hessian_trace(model, batches, tol=1e-15, max_iter=vectors, seed=100 + seed)
        assert ours.num_hvp == vectors
        assert within_spread(ours.trace, theirs), (ours.trace, theirs)


def test_density_agrees_with_pyhessian_within_its_spread(monkeypatch):
    monkeypatch.setattr(torch, "eig", _eig_shim, raising=False)
    model, batches, steps = mlp(), two_batches(), 20
    runs = []
    for seed in PYHESSIAN_SEEDS:
        with pyhessian_run(model, batches, seed) as h:
            nodes, weights = h.density(iter=steps, n_v=1)
        runs.append((np.array(nodes[0], float), np.array(weights[0], float)))
    ours = hessian_density(model, batches, n_v=1, iter=steps, seed=0)
    mine = (np.array(ours.nodes[0]), np.array(ours.weights[0]))
    assert len(runs[0][0]) == len(mine[0]) == steps
    # moments of each run's quadrature; PyHessian's T is float32, hence the floors
    for power in (0, 1, 2):
        theirs = [float(w @ n**power) for n, w in runs]
        scale = max(abs(t) for t in theirs)
        assert within_spread(float(mine[1] @ mine[0]**power), theirs, floor=1e-5 * scale), power
    top = [n.max() for n, _ in runs]
    assert within_spread(mine[0].max(), top, floor=1e-5 * max(top))
    # the smoothed densities: ours no farther from PyHessian's mean than its own runs are
    grid = np.linspace(min(n.min() for n, _ in runs) - 0.05, max(top) + 0.05, 4001)
    width = 0.02 * (grid[-1] - grid[0])
    curves = [smoothed_density([n], [w], grid=grid, width=width)[1] for n, w in runs]
    centre = np.mean(curves, axis=0)
    dx = grid[1] - grid[0]
    spread = [np.abs(c - centre).sum() * dx for c in curves]
    mine_curve = smoothed_density([mine[0]], [mine[1]], grid=grid, width=width)[1]
    assert np.abs(mine_curve - centre).sum() * dx <= max(spread) * math.sqrt(1 + 1 / len(runs))


# ---------------------------------------------------------------------------- settings


def test_settings_switches_are_off_and_tolerances_finite():
    s = HessianSettings()
    assert (s.trace, s.density, s.per_layer) == (False, False, False)
    for key in ("trace_tol", "tol"):
        for bad in (0, -1.0, math.inf, math.nan, True):
            with pytest.raises(ValueError, match=f"eval.hessian.{key} must be a finite number > 0"):
                HessianSettings(**{key: bad})
    for key, bad in (("trace_max_iter", 1), ("density_vectors", 0), ("density_iter", 0),
                     ("trace", "yes")):
        with pytest.raises(ValueError, match=f"eval.hessian.{key}"):
            HessianSettings(**{key: bad})


def test_spectrum_keys_at_their_defaults_leave_recorded_runs_alone():
    recorded = {"batch_size": 32, "eval": {"hessian": {"enabled": True, "tol": 0.001}}}
    today = copy.deepcopy(recorded)
    today["eval"]["hessian"].update({k: getattr(HessianSettings, k) for k in HESSIAN_SPECTRUM_KEYS})
    assert fingerprint(today, UNNAMED_KEYS) == fingerprint(recorded, UNNAMED_KEYS)
    today["eval"]["hessian"]["trace"] = True
    assert fingerprint(today, UNNAMED_KEYS) != fingerprint(recorded, UNNAMED_KEYS)
