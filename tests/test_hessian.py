"""robusthp.hessian against the dense Hessian of tiny models, and its side effects."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robusthp.hessian import backends, top_eigenvalues

BACKENDS = backends()
TIGHT = {"tol": 1e-9, "max_iter": 400}


def mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)  # 195 params


def two_batches(dtype=torch.float64, sizes=(10, 7), dim=8, classes=3):
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[: sizes[0]], y[: sizes[0]]), (x[sizes[0] :], y[sizes[0] :])]


def dense_eigenvalues(model: nn.Module, batches) -> torch.Tensor:
    """Eigenvalues (descending) of the dense Hessian of the size-weighted mean loss, float64."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat0 = torch.cat([p.detach().double().reshape(-1) for _, p in named])
    total = sum(len(y) for _, y in batches)
    model = model.double()

    def loss(flat):
        params, i = {}, 0
        for name, p in named:
            params[name] = flat[i : i + p.numel()].view(p.shape)
            i += p.numel()
        return sum(
            len(y) / total * F.cross_entropy(functional_call(model, params, (x.double(),)), y)
            for x, y in batches
        )

    hess = torch.autograd.functional.hessian(loss, flat0)
    return torch.linalg.eigvalsh(hess).flip(0)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("reuse_graph", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_top_eigenvalue_matches_dense(backend, reuse_graph):
    model, batches = mlp(), two_batches()
    dense = dense_eigenvalues(mlp(), batches)
    assert dense[0] > dense[-1].abs()  # top = largest magnitude, so PyHessian finds it too
    res = top_eigenvalues(model, batches, backend=backend, reuse_graph=reuse_graph, **TIGHT)
    assert rel(res.top, dense[0].item()) < 1e-3
    assert res.backend == backend and res.converged and res.num_hvp >= 2
    assert len(res.eigenvalues) == len(res.residuals) == 1 and res.seconds > 0


def test_lanczos_top3_match_dense_and_converge_fast():
    model, batches = mlp(), two_batches()
    dense = dense_eigenvalues(mlp(), batches)
    res = top_eigenvalues(model, batches, top_n=3, backend="lanczos", **TIGHT)
    torch.testing.assert_close(
        torch.tensor(res.eigenvalues, dtype=torch.float64), dense[:3], rtol=1e-6, atol=0
    )
    assert res.eigenvalues == sorted(res.eigenvalues, reverse=True)
    pyh = top_eigenvalues(model, batches, top_n=3, backend="pyhessian", **TIGHT)
    torch.testing.assert_close(
        torch.tensor(pyh.eigenvalues, dtype=torch.float64), dense[:3], rtol=1e-3, atol=0
    )
    assert res.num_hvp < pyh.num_hvp


def test_float32_model_matches_dense():
    model, batches = mlp(dtype=torch.float32), two_batches(torch.float32)
    dense = dense_eigenvalues(mlp(dtype=torch.float32), batches)
    for backend in BACKENDS:
        res = top_eigenvalues(model, batches, backend=backend, tol=1e-6, max_iter=400)
        assert rel(res.top, dense[0].item()) < 1e-3, backend


class SmallCNN(nn.Module):
    def __init__(self, unused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.unused = nn.Linear(3, 3) if unused else None

    def forward(self, x):  # x: (N, 1, 8, 8) in [0, 1]
        h = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)  # (N, 4, 4, 4)
        return self.fc(self.drop(h.flatten(1)))


def image_batches(sizes=(24, 9)):
    g = torch.Generator().manual_seed(2)
    return [
        (torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)) for n in sizes
    ]


def trained_cnn(unused: bool = False) -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(unused)
    torch.manual_seed(1)  # the same dropout masks with or without the unused layer
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in image_batches() * 5:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_backends_agree_on_small_cnn():
    model, batches = trained_cnn(), image_batches()
    lan = top_eigenvalues(model, batches, top_n=2, backend="lanczos")
    pyh = top_eigenvalues(model, batches, top_n=2, backend="pyhessian", tol=1e-5, max_iter=300)
    assert rel(lan.top, pyh.top) < 1e-2
    assert lan.converged and lan.num_hvp < pyh.num_hvp


@pytest.mark.parametrize("backend", BACKENDS)
def test_side_effects(backend):
    """Modes (per submodule), .grad (sentinels and None), global RNG: all as found."""
    model = trained_cnn(unused=True)
    model.train()
    model.bn.eval()  # a submodule whose own mode differs from its parent's
    modes = [m.training for m in model.modules()]
    sentinel = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = None if name == "fc.bias" else sentinel[name]
    params = [p.detach().clone() for p in model.parameters()]
    bn_stats = model.bn.running_mean.clone()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    res = top_eigenvalues(model, image_batches(), backend=backend, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    for name, p in model.named_parameters():
        if name == "fc.bias":
            assert p.grad is None
        else:
            assert p.grad is sentinel[name]
            assert torch.all(p.grad == 7.0)
        assert p.requires_grad
    for p, before in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, before)
    assert torch.equal(model.bn.running_mean, bn_stats)  # eval mode: running stats untouched
    # the unused Linear is left out; dropout off: same value as the model without it
    ref = top_eigenvalues(trained_cnn(unused=False), image_batches(), backend=backend, seed=5)
    assert rel(res.top, ref.top) < 1e-5


class WithUnused(nn.Module):
    """``net`` and a Linear that ``forward`` never calls: trainable, it gets no gradient."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.unused = net, nn.Linear(2, 2).to(next(net.parameters()).dtype)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("reuse_graph", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_parameters_match_dense(backend, reuse_graph):
    """The Hessian of a model with a grad-less parameter is its used part's."""
    model, batches = WithUnused(mlp()), two_batches()
    dense = dense_eigenvalues(mlp(), batches)
    res = top_eigenvalues(model, batches, backend=backend, reuse_graph=reuse_graph, **TIGHT)
    assert rel(res.top, dense[0].item()) < 1e-3 and res.converged
    for p in model.unused.parameters():
        assert p.requires_grad and p.grad is None


@pytest.mark.parametrize("reuse_graph", [True, False])
def test_unused_parameters_add_no_zero_eigenvalue(reuse_graph):
    """Lanczos returns the algebraically largest eigenvalues: were the zero rows of a
    grad-less parameter in its Hessian, a concave loss's top eigenvalue would read 0."""
    torch.manual_seed(0)
    model = WithUnused(nn.Linear(4, 1).double())
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(20, 5, generator=g, dtype=torch.float64).split([4, 1], dim=1)

    def loss_fn(out, t):  # concave: H = -2/N A^T A, A = [x 1]
        return -((out - t) ** 2).mean()

    res = top_eigenvalues(model, [(x, t)], backend="lanczos", loss_fn=loss_fn,
                          reuse_graph=reuse_graph, **TIGHT)
    a = torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], 1)  # the weights and the bias
    expected = -2 / 20 * torch.linalg.eigvalsh(a.T @ a)[0].item()
    assert expected < 0 and rel(res.top, expected) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_works_under_inference_mode(backend):
    model = trained_cnn()
    expected = top_eigenvalues(model, image_batches(), backend=backend).top
    with torch.inference_mode():
        batches = image_batches()  # inference tensors
        assert batches[0][0].is_inference()
        res = top_eigenvalues(model, batches, backend=backend)
    with torch.no_grad():
        res2 = top_eigenvalues(model, image_batches(), backend=backend)
    assert res.top == pytest.approx(expected, rel=1e-6)
    assert res2.top == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_is_private_and_deterministic(backend):
    model, batches = trained_cnn(), image_batches()
    a = top_eigenvalues(model, batches, backend=backend, seed=3, tol=1e-2)
    torch.manual_seed(999)  # the global RNG plays no part
    b = top_eigenvalues(model, batches, backend=backend, seed=3, tol=1e-2)
    assert a.eigenvalues == b.eigenvalues and a.num_hvp == b.num_hvp


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_hvp_counts_products(backend):
    calls = []
    res = top_eigenvalues(trained_cnn(), image_batches(), backend=backend, on_hvp=calls.append)
    assert calls == list(range(1, res.num_hvp + 1))
    assert len(res.history) == res.num_hvp
    # lanczos returns its last estimate; pyhessian, on its tol break, the one before
    assert res.top == (res.history[-1] if backend == "lanczos" else res.history[-2])


@pytest.mark.parametrize("reuse_graph", [True, False])
def test_pyhessian_module_is_left_alone(reuse_graph):
    """Counting PyHessian's products patches nothing: other users of it see it unchanged."""
    import pyhessian.utils

    module = importlib.import_module("pyhessian.hessian")  # the package re-exports the class
    methods = dict(vars(module.hessian))
    untouched = []

    def check(_count):
        untouched.append(
            module.hessian_vector_product is pyhessian.utils.hessian_vector_product
            and dict(vars(module.hessian)) == methods
        )

    top_eigenvalues(mlp(), two_batches(), backend="pyhessian", reuse_graph=reuse_graph,
                    on_hvp=check)
    assert untouched and all(untouched)


def test_max_iter_caps_work_and_reports_not_converged():
    res = top_eigenvalues(mlp(), two_batches(), top_n=2, max_iter=3, tol=1e-12, backend="lanczos")
    assert res.num_hvp == 3 and not res.converged and len(res.eigenvalues) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_n": 0}, "top_n"),
        ({"top_n": 1.5}, "top_n"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"backend": "power"}, "lanczos, pyhessian"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_eigenvalues(mlp(), two_batches(), **kwargs)


def test_no_batches():
    with pytest.raises(ValueError, match="no data"):
        top_eigenvalues(mlp(), [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_matches_cpu(backend):
    model, batches = trained_cnn(), image_batches()
    cpu = top_eigenvalues(model, batches, backend=backend, tol=1e-6, max_iter=300).top
    model.cuda()
    rng = torch.cuda.get_rng_state()
    res = top_eigenvalues(model, batches, backend=backend, tol=1e-6, max_iter=300)
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    assert next(model.parameters()).is_cuda
    assert rel(res.top, cpu) < 1e-3
