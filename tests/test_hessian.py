"""robusthp.hessian against the dense Hessian of tiny models, and its side effects."""

from __future__ import annotations

import importlib
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robusthp.hessian import _HVP, backends, top_eigenvalues

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
    return torch.linalg.eigvalsh(dense_hessian(model, batches)).flip(0)


def dense_hessian(model: nn.Module, batches) -> torch.Tensor:
    """The dense Hessian of the size-weighted mean loss, float64, over the parameters with
    requires_grad in ``named_parameters`` order (converts ``model`` to float64)."""
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

    return torch.autograd.functional.hessian(loss, flat0)


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


# --------------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("sizes", [(10, 7), (3, 14)])
def test_per_batch_product_matches_dense_hessian_times_v(sizes):
    """Bounded (batch by batch, size-weighted), kept (graph of both batches) and one
    concatenated batch: all three are the dense Hessian of the whole loss times v."""
    batches = two_batches(sizes=sizes)
    hess = dense_hessian(mlp(), batches)
    v = torch.randn(len(hess), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    whole = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    for data, reuse in [(batches, False), (batches, True), (whole, False)]:
        hvp = _HVP(mlp(), data, F.cross_entropy, reuse_graph=reuse)
        assert hvp.kept == (reuse or len(data) == 1)  # a single batch keeps its graph
        assert hvp.dim == len(hess) == 195
        torch.testing.assert_close(hvp(v), hess @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hvp(2 * v), 2 * (hess @ v), rtol=1e-10, atol=1e-12)


def test_per_batch_product_with_unused_parameter_is_the_used_part():
    batches = two_batches(sizes=(5, 12))
    hess = dense_hessian(mlp(), batches)
    hvp = _HVP(WithUnused(mlp()), batches, F.cross_entropy, reuse_graph=False)
    assert not hvp.kept and hvp.dim == len(hess)
    v = torch.randn(hvp.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hess @ v, rtol=1e-10, atol=1e-12)


def concatenated(batches):
    return [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounded_equals_all_at_once(backend):
    """Batch by batch (the default) = the graph kept = one concatenated batch, to rounding:
    a float64 MLP (top 2, converged) and a float32 CNN with BatchNorm and dropout (eval
    mode), the latter at a fixed number of products (no tol stop)."""
    cases = [
        (mlp, two_batches(sizes=(9, 4, 8)), {"top_n": 2, **TIGHT}),
        (trained_cnn, image_batches(sizes=(12, 7, 14)), {"tol": 1e-12, "max_iter": 30}),
    ]
    for make, batches, kwargs in cases:
        bounded = top_eigenvalues(make(), batches, backend=backend, **kwargs)
        kept = top_eigenvalues(make(), batches, backend=backend, reuse_graph=True, **kwargs)
        whole = top_eigenvalues(make(), concatenated(batches), backend=backend, **kwargs)
        for other in (kept, whole):
            assert other.num_hvp == bounded.num_hvp
            torch.testing.assert_close(
                torch.tensor(bounded.eigenvalues), torch.tensor(other.eigenvalues),
                rtol=1e-5, atol=0,
            )


def test_pyhessian_all_at_once_is_plain_pyhessian_on_the_concatenated_batch():
    """reuse_graph=True: exactly PyHessian's single-batch mode on all samples (as before)."""
    from pyhessian import hessian as PyHessian

    batches = image_batches(sizes=(12, 7, 14))
    res = top_eigenvalues(trained_cnn(), batches, backend="pyhessian", top_n=2, seed=3,
                          reuse_graph=True)
    model = trained_cnn()
    torch.manual_seed(3)
    plain, _ = PyHessian(model, F.cross_entropy, data=concatenated(batches)[0],
                         cuda=False).eigenvalues(maxIter=100, tol=1e-3, top_n=2)
    assert res.eigenvalues == sorted(plain, reverse=True)


def live_graph_probe(model: nn.Module, module: nn.Module):
    """Weak references to every output of ``module`` (saved by autograd while its graph is
    alive); ``counts`` records how many earlier ones are alive at each forward of it and,
    via the returned ``on_hvp``, after each product."""
    refs, counts = [], []

    def alive() -> int:
        return sum(r() is not None for r in refs)

    def hook(_module, _inputs, out):
        counts.append(alive())
        refs.append(weakref.ref(out))

    module.register_forward_hook(hook)
    return counts, lambda _n: counts.append(alive())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounded_path_keeps_no_graph_alive(backend):
    """By default no batch's graph outlives its share of a product: at each forward of a
    layer and after each product no earlier output of it (which its graph holds) is
    alive. With reuse_graph=True (the old default) they are."""
    batches = two_batches(sizes=(6, 5, 6))
    for reuse in (False, True):
        model = mlp()
        counts, on_hvp = live_graph_probe(model, model[1])  # Tanh saves its output
        kwargs = {} if not reuse else {"reuse_graph": True}
        res = top_eigenvalues(model, batches, backend=backend, max_iter=4, tol=1e-12,
                              on_hvp=on_hvp, **kwargs)
        assert res.num_hvp == 4
        if reuse:
            assert max(counts) >= 1  # the probe sees a kept graph
        else:
            assert len(counts) > 4 * len(batches) and max(counts) == 0


class DataDependent(nn.Module):
    """Uses ``extra`` only for batches of more than two samples."""

    def __init__(self):
        super().__init__()
        self.net, self.extra = mlp(), nn.Linear(8, 3).double()

    def forward(self, x):
        out = self.net(x)
        return out + torch.tanh(self.extra(x)) if len(x) > 2 else out


def test_bounded_path_refuses_curvature_missing_from_the_probe():
    with pytest.raises(RuntimeError, match="reuse_graph=True"):
        top_eigenvalues(DataDependent(), two_batches(), backend="lanczos")
    res = top_eigenvalues(DataDependent(), two_batches(), backend="lanczos", reuse_graph=True)
    assert res.converged


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


# --------------------------------------------------------------------------- warm start


def many_batches(sizes=(100, 60), dtype=torch.float64):
    """160 samples: enough for the warm start (min(128, N // 8) = 20 >= 16 samples)."""
    return two_batches(dtype=dtype, sizes=sizes)


@pytest.mark.parametrize("reuse_graph", [True, False])
def test_warm_start_top3_match_dense(reuse_graph):
    """The warm-started run finds the full loss's eigenvalues (not the subsample's)."""
    batches = many_batches()
    dense = dense_eigenvalues(mlp(), batches)
    sub = dense_eigenvalues(mlp(), [(batches[0][0][:20], batches[0][1][:20])])
    assert rel(sub[0].item(), dense[0].item()) > 1e-2  # the subsample's Hessian differs
    for warm in (True, False):
        res = top_eigenvalues(mlp(), batches, top_n=3, backend="lanczos", warm_start=warm,
                              reuse_graph=reuse_graph, **TIGHT)
        torch.testing.assert_close(
            torch.tensor(res.eigenvalues, dtype=torch.float64), dense[:3], rtol=1e-6, atol=0
        )
        assert res.converged and (res.warm_hvp > 0) == warm
        assert len(res.history) == len(res.residual_history) == res.num_hvp


def test_warm_start_only_with_enough_samples():
    assert top_eigenvalues(mlp(), two_batches(), backend="lanczos").warm_hvp == 0  # 17 < 128
    assert top_eigenvalues(mlp(), many_batches(), backend="lanczos").warm_hvp > 0
    assert top_eigenvalues(mlp(), many_batches(), backend="pyhessian").warm_hvp == 0


@pytest.mark.parametrize("n", [20, 130])
def test_subsample_product_is_the_head_of_the_data(n):
    """_HVP.subsample(n): the dense Hessian of the first n samples (across batches) times v,
    in the full product's vector space."""
    batches = many_batches()
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    hess = dense_hessian(mlp(), [(x[:n], y[:n])])
    full = _HVP(mlp(), batches, F.cross_entropy, reuse_graph=False)
    sub = full.subsample(n)
    assert sub.active is full.active and sub.dim == full.dim and sub.num_samples == n
    v = torch.randn(full.dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    torch.testing.assert_close(sub(v), hess @ v, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(full(v), hess @ v, rtol=1e-3)  # the whole data's differs


def test_subsample_without_curvature_in_a_parameter():
    """An active parameter whose curvature the subsample lacks contributes zero rows."""
    model = DataDependent()  # ``extra`` is used only for batches of more than two samples
    batches = many_batches()
    full = _HVP(model, batches, F.cross_entropy, reuse_graph=True)
    sub = full.subsample(2)
    assert sub.dim == full.dim
    hess = dense_hessian(model.net, [(batches[0][0][:2], batches[0][1][:2])])
    v = torch.randn(full.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hv = sub(v)
    torch.testing.assert_close(hv[: len(hess)], hess @ v[: len(hess)], rtol=1e-10, atol=1e-12)
    assert torch.all(hv[len(hess):] == 0)


def test_residual_history_replays_the_tol_stop():
    """A run with a larger tol stops at the first residual_history entry below it and
    returns the history entry there (what benchmarks/hessian.py replays)."""
    model, batches = trained_cnn(), image_batches()
    long = top_eigenvalues(model, batches, backend="lanczos", tol=1e-8, max_iter=60)
    for tol in (1e-1, 1e-2, 1e-4):
        short = top_eigenvalues(model, batches, backend="lanczos", tol=tol)
        k = next(i + 1 for i, r in enumerate(long.residual_history) if r < tol)
        assert short.num_hvp == k and short.top == long.history[k - 1]
        assert short.residuals == [short.residual_history[-1]]


def test_warm_start_side_effects_and_counts():
    """With the warm start engaged (160 images): modes, .grad, BatchNorm statistics and the
    global RNG as found; on_hvp sees only the full products."""
    model = trained_cnn()
    model.train()
    bn_stats = model.bn.running_mean.clone()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    calls = []
    res = top_eigenvalues(model, image_batches(sizes=(100, 60)), backend="lanczos",
                          on_hvp=calls.append)
    assert res.warm_hvp > 0 and calls == list(range(1, res.num_hvp + 1))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert torch.equal(model.bn.running_mean, bn_stats)
    assert all(torch.all(p.grad == 3.0) for p in model.parameters())
