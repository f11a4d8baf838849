"""robusthp.function_measures and the FunctionMeasures callback, against independent answers.

References: the exact top singular value (``torch.linalg.svdvals``) of each layer's dense
matrix, built by applying the layer to every basis image; dense Jacobians (``torch.func``);
brute-force ratios ||f(a) - f(b)|| / ||a - b||; a direct sum of squares.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_callback_adversarial import logged_metrics, make_trainer, synthetic, user_classes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.callbacks import FunctionMeasures
from robusthp.catalog import DATASETS, MODELS
from robusthp.function_measures import (
    _conv_maps,
    input_gradient_norms,
    lipschitz_ma2023,
    lipschitz_upper_bound,
    operator_norm,
    weight_norm,
)
from robusthp.models import Normalize, build_model
from robusthp.models.resnet import BasicBlock

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]

RESULT_KEYS = {
    "lipschitz_upper", "lipschitz_ma2023", "lipschitz_layers", "input_grad_norm_median",
    "input_grad_norm_p95", "input_grad_norm_mean", "weight_norm", "function_num_samples",
    "function_time_s",
}
EXACT = {"iters": 3000, "tol": 1e-13}  # power iteration run to float64 convergence


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def dense(fn, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map of (1, *in_shape) float64 inputs: one column per basis image."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        cols = torch.stack([fn(e[None]).flatten() for e in basis], dim=1)
    return cols  # (out_numel, n)


def top_sv(matrix: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(matrix.detach())[0])


def random_bn(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    """Eval-mode BN with non-trivial statistics and gammas of both signs."""
    bn = nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.2)
        bn.weight.copy_(torch.randn(channels, generator=gen, dtype=torch.float64) * 1.5)
        bn.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
    return bn.eval()


def jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    """||J_f(x)||_2 of the model at one point x (1, C, H, W), exactly."""
    jac = torch.func.jacrev(lambda z: model(z[None])[0])(x[0])  # (K, C, H, W)
    return top_sv(jac.reshape(jac.shape[0], -1))


def max_pair_ratio(model: nn.Module, shape: tuple[int, ...], n: int, gen: torch.Generator,
                   dtype=torch.float64) -> float:
    """The largest ||f(a) - f(b)|| / ||a - b|| over random pairs, far and near, in [0, 1]."""
    best = 0.0
    with torch.no_grad():
        for i in range(n):
            a = torch.rand((1, *shape), generator=gen, dtype=dtype)
            scale = 1.0 if i % 2 == 0 else 1e-3
            b = (a + scale * (torch.rand(a.shape, generator=gen, dtype=dtype) - 0.5)).clamp(0, 1)
            best = max(best, float((model(a) - model(b)).norm() / (a - b).norm()))
    return best


# ---------------------------------------------------------------- operator_norm


CONVS = [  # (in, out, kernel, stride, padding, dilation, groups, input side)
    (2, 3, 3, 1, 0, 1, 1, 5),
    (2, 3, 3, 1, 1, 1, 1, 5),
    (2, 3, 3, 2, 1, 1, 1, 6),  # even side, stride 2: conv_transpose2d needs output_padding 1
    (2, 3, 3, 2, 0, 1, 1, 6),
    (1, 2, 2, 2, 0, 1, 1, 7),  # odd side: the last row/column is never read
    (2, 2, 3, 3, 1, 1, 1, 7),
    (2, 3, 3, 1, 2, 2, 1, 6),  # dilation
    (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, 6),  # asymmetric kernel and stride
    (4, 2, 3, 2, 1, 1, 2, 6),  # groups
    (2, 3, 5, 1, 2, 1, 1, 4),  # kernel wider than the input
]


def make_conv(c_in, c_out, k, s, p, d, g, seed=0, bias=True) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g, bias=bias).double()


@pytest.mark.parametrize("spec", CONVS, ids=str)
def test_conv_operator_norm_is_the_dense_top_singular_value(spec):
    *args, side = spec
    conv = make_conv(*args)
    shape = (args[0], side, side)
    exact = top_sv(dense(lambda x: F.conv2d(x, conv.weight, None, conv.stride, conv.padding,
                                            conv.dilation, conv.groups), shape))
    assert operator_norm(conv, shape, **EXACT) == pytest.approx(exact, rel=1e-7)
    # few iterations: an estimate from below
    assert operator_norm(conv, shape, iters=2) <= exact * (1 + 1e-12)


@pytest.mark.parametrize("spec", CONVS, ids=str)
def test_conv_adjoint_is_the_transpose(spec):
    *args, side = spec
    conv = make_conv(*args)
    shape = (args[0], side, side)
    forward, adjoint = _conv_maps(conv, shape)
    out_shape = tuple(forward(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    assert adjoint(torch.zeros(1, *out_shape, dtype=torch.float64)).shape[1:] == shape
    torch.testing.assert_close(dense(adjoint, out_shape), dense(forward, shape).T)


def test_same_padding_conv_and_linear():
    conv = nn.Conv2d(2, 3, 3, padding="same").double()
    exact = top_sv(dense(lambda x: F.conv2d(x, conv.weight, None, padding="same"), (2, 5, 5)))
    assert operator_norm(conv, (2, 5, 5), **EXACT) == pytest.approx(exact, rel=1e-7)
    linear = nn.Linear(7, 4).double()
    jac = torch.func.jacrev(linear)(torch.zeros(7, dtype=torch.float64))  # (4, 7)
    assert operator_norm(linear, (7,)) == pytest.approx(top_sv(jac), rel=1e-12)


def test_operator_norm_leaves_the_global_rng_and_checks_shapes():
    conv = make_conv(2, 3, 3, 1, 1, 1, 1)
    state = torch.get_rng_state()
    first = operator_norm(conv, (2, 5, 5), iters=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert operator_norm(conv, (2, 5, 5), iters=5) == first  # seeded: the same again
    gen = torch.Generator().manual_seed(3)
    assert operator_norm(conv, (2, 5, 5), iters=5, generator=gen) != first
    with pytest.raises(ValueError, match="in_channels=2"):
        operator_norm(conv, (3, 5, 5))
    with pytest.raises(ValueError, match="nn.Conv2d and nn.Linear; got ReLU"):
        operator_norm(nn.ReLU(), (3, 5, 5))


# ---------------------------------------------------------------- lipschitz_upper_bound


class Pooled(nn.Module):
    """Conv, an overlapping max-pool, a functional global average pool, FC (explicit forward)."""

    def __init__(self, relu: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.relu = relu
        self.normalize = Normalize((0.4, 0.5), (0.3, 0.6))
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = random_bn(4, gen)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.block = BasicBlock(4, 6, stride=2)
        self.fc = nn.Linear(6, 3)
        self.double()
        self.block.bn1, self.block.bn2 = random_bn(6, gen), random_bn(6, gen)
        self.block.shortcut[1] = random_bn(6, gen)

    def forward(self, x):
        x = self.bn(self.conv(self.normalize(x)))  # (N, 4, 8, 8)
        x = self.pool(F.relu(x)) if self.relu else self.avg(x)  # (N, 4, 4, 4)
        x = self.block(x)  # (N, 6, 2, 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (N, 3)


def test_bound_holds_on_a_tiny_net_with_every_layer_type():
    model = Pooled().eval()
    out = lipschitz_upper_bound(model, (2, 8, 8), **EXACT)
    gen = torch.Generator().manual_seed(5)
    assert out["upper"] >= max_pair_ratio(model, (2, 8, 8), 40, gen)
    for _ in range(5):
        assert out["upper"] >= jacobian_norm(model, torch.rand(1, 2, 8, 8, generator=gen, dtype=torch.float64))
    names = [n for n, _ in out["factors"]]
    assert names == ["normalize", "conv", "bn", "pool", "block", "fc (global average pool before it)", "fc"]
    assert math.prod(f for _, f in out["factors"]) == pytest.approx(out["upper"], rel=1e-12)
    assert dict(out["factors"])["pool"] == 2.0  # 3x3/2: each pixel in up to 2 x 2 windows
    assert dict(out["factors"])["fc (global average pool before it)"] == 0.5  # 1/sqrt(2 * 2)
    assert dict(out["layers"])["normalize"] == pytest.approx(1 / 0.3)
    assert {"block.conv1", "block.conv2", "block.shortcut.0"} <= set(dict(out["layers"]))
    assert out["converged"]


def test_overlapping_max_pool_bound_is_attained():
    """sqrt(m) is exact: one pixel in m = 4 windows, raised from 0, moves 4 outputs."""
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    assert lipschitz_upper_bound(pool, (1, 8, 8))["upper"] == 2.0
    a = torch.zeros(1, 1, 8, 8)
    a[0, 0, 1, 1] = 0.5
    ratio = (pool(a) - pool(torch.zeros_like(a))).norm() / a.norm()
    assert float(ratio) == pytest.approx(2.0)
    assert lipschitz_upper_bound(nn.MaxPool2d(2), (1, 8, 8))["upper"] == 1.0


def test_bound_of_a_linear_net_against_its_dense_jacobian():
    model = Pooled(relu=False).eval()
    model.block = nn.Sequential(model.block.conv1, model.block.bn1)  # no ReLU anywhere
    out = lipschitz_upper_bound(model, (2, 8, 8), **EXACT)
    exact = top_sv(dense(lambda x: model(x) - model(torch.zeros_like(x)), (2, 8, 8)))
    assert exact <= out["upper"]
    avg = dict(out["layers"])["avg"]
    assert avg == pytest.approx(0.5, rel=1e-9)  # a 2x2 average pool: 1/2
    single = nn.Sequential(make_conv(2, 3, 3, 2, 1, 1, 1))
    exact = top_sv(dense(lambda x: single(x) - single(torch.zeros_like(x)), (2, 6, 6)))
    assert lipschitz_upper_bound(single, (2, 6, 6), **EXACT)["upper"] == pytest.approx(exact, rel=1e-7)


REGISTRY = ["m1", "stdcnn", "c1", "resnet18", "preact_resnet18"]
RESIDUAL = {"resnet18", "preact_resnet18"}
FACTORS = {  # the top-level factors: the walk must follow each model's forward
    "m1": ["normalize", "conv1", "pool", "conv2", "pool", "fc1", "fc2"],
    "stdcnn": ["normalize", "conv1", "conv2", "pool", "conv3", "conv4", "pool", "fc1", "fc2"],
    "c1": ["normalize", "conv1", "bn1", "pool", "conv2", "bn2", "pool", "fc1", "fc2", "fc3"],
    "resnet18": ["normalize", "conv1", "bn1"] + [f"layers.{s}.{b}" for s in range(4) for b in range(2)]
    + ["fc (global average pool before it)", "fc"],
    # standardize is the identity at the authors' default (input_normalization false)
    "preact_resnet18": ["normalize", "conv1"] + [f"layers.{s}.{b}" for s in range(4) for b in range(2)]
    + ["linear (global average pool before it)", "linear"],
}


def registry_model(name: str, **kwargs) -> nn.Module:
    spec = DATASETS[MODELS[name].dataset]
    return build_model(name, in_channels=spec.in_channels, num_classes=spec.num_classes,
                       image_size=spec.image_size, mean=spec.mean, std=spec.std, **kwargs)


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in REGISTRY]
                         + [("preact_resnet18", {"batchnorm": True})], ids=str)
def test_bound_holds_on_each_registry_model(name, kwargs):
    spec = DATASETS[MODELS[name].dataset]
    model = registry_model(name, **kwargs)
    gen = torch.Generator().manual_seed(2)
    for module in model.modules():  # BN with statistics a trained net might have
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.3, 2.0, generator=gen)
            module.weight.data.uniform_(-1.5, 1.5, generator=gen)
    model.train()  # the bound must measure eval mode and restore this
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    out = lipschitz_upper_bound(model, shape, iters=8 if name in RESIDUAL else 40, tol=1e-3)
    assert all(m.training for m in model.modules())
    assert [n for n, _ in out["factors"]] == FACTORS[name]
    model.eval()
    assert out["upper"] >= max_pair_ratio(model, shape, 4, gen, dtype=torch.float32)
    x = torch.rand(1, *shape, generator=gen)
    assert out["upper"] >= jacobian_norm(model, x)
    assert lipschitz_ma2023(model) > 0


def test_m1_without_pools_follows_forward_too():
    model = build_model("m1", in_channels=1, num_classes=10, image_size=28, mean=(0.1,),
                        std=(0.3,), pool=False)
    out = lipschitz_upper_bound(model, (1, 28, 28), iters=5)
    assert [n for n, _ in out["factors"]] == ["normalize", "conv1", "conv2", "fc1", "fc2"]


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x.flatten(1))
        return self.b(h) + h  # a skip connection the bound has no rule for


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return 3 * self.a(x.flatten(1))  # an operation between layers


@pytest.mark.parametrize("model, shape, match", [
    (nn.Sequential(nn.Flatten(), nn.GELU()), (1, 2, 2), "layer type GELU"),
    (nn.Sequential(nn.Conv1d(1, 1, 1)), (1, 4), "layer type Conv1d"),
    (Skip(), (1, 2, 2), "cannot follow the forward path between b and the output"),
    (Scaled(), (1, 2, 2), "cannot follow the forward path between a and the output"),
])
def test_unknown_layers_and_operations_raise(model, shape, match):
    with pytest.raises(ValueError, match=match):
        lipschitz_upper_bound(model, shape, iters=2)


def test_bound_leaves_model_grads_and_rng_as_found():
    model = Pooled()
    model.conv.weight.grad = torch.ones_like(model.conv.weight)
    state = torch.get_rng_state()
    first = lipschitz_upper_bound(model, (2, 8, 8), iters=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model.conv.weight.grad, torch.ones_like(model.conv.weight))
    assert model.fc.weight.grad is None and model.training
    with torch.inference_mode():
        assert lipschitz_upper_bound(model, (2, 8, 8), iters=5)["upper"] == first["upper"]


# ---------------------------------------------------------------- lipschitz_ma2023


@pytest.mark.parametrize("spec", CONVS[:8], ids=str)
def test_ma2023_kernel_norm_is_below_the_operator_norm(spec):
    *args, side = spec
    conv = make_conv(*args)
    reshaped = lipschitz_ma2023(nn.Sequential(conv))
    # independent: the map from one (C_in, k, k) patch to the conv's value at one position
    c_in, (kh, kw) = conv.in_channels, conv.kernel_size
    patch = dense(lambda p: F.conv2d(p, conv.weight, None, dilation=1), (c_in, kh, kw))
    assert reshaped == pytest.approx(top_sv(patch), rel=1e-10)
    shape = (c_in, side, side)
    true = top_sv(dense(lambda x: F.conv2d(x, conv.weight, None, conv.stride, conv.padding,
                                           conv.dilation, conv.groups), shape))
    assert reshaped <= true * (1 + 1e-10)


def authors_resnet_l2(model: nn.Module, rows_in_blocks: str = "theirs") -> float:
    """The authors' return_Lipschitz_resnet_L2 (freq-robust/src/utils_analysis.py:1372-1448),
    written out as their code is: per stage, (c1 c2 + shortcut) (c1 c2 + 1), each conv's
    torch.linalg.svd top value of its kernel viewed with their literal row counts."""
    def sv(weight, rows):
        return float(torch.linalg.svd(weight.detach().double().reshape(rows, -1))[1].max())

    if rows_in_blocks == "theirs":  # their literal .view(n, -1) row counts per stage
        first_c1, first_c2, short = [64, 64, 128, 256], [64, 128, 256, 512], [None, 64, 128, 256]
    else:  # (C_out, C_in k k) everywhere: what their code would give without its reshape
        first_c1, first_c2, short = [64, 128, 256, 512], [64, 128, 256, 512], [None, 128, 256, 512]
    width = [64, 128, 256, 512]
    total = sv(model.conv1.weight, 64)
    for s, stage in enumerate(model.layers):
        b0, b1 = stage[0], stage[1]
        skip = 1.0 if s == 0 else sv(b0.shortcut[0].weight, short[s])
        total *= sv(b0.conv1.weight, first_c1[s]) * sv(b0.conv2.weight, first_c2[s]) + skip
        total *= sv(b1.conv1.weight, width[s]) * sv(b1.conv2.weight, width[s]) + 1.0
    head = model.linear if hasattr(model, "linear") else model.fc
    return total * float(torch.linalg.svd(head.weight.detach().double())[1].max())


@pytest.mark.parametrize("name, kwargs", [("preact_resnet18", {}), ("preact_resnet18", {"batchnorm": True}),
                                          ("resnet18", {})], ids=str)
def test_ma2023_follows_the_authors_block_rule(name, kwargs):
    torch.manual_seed(5)
    model = registry_model(name, **kwargs)
    ours = lipschitz_ma2023(model)
    assert ours == pytest.approx(authors_resnet_l2(model), rel=1e-5)
    # their in-block reshape matters: (C_out, -1) everywhere gives another number
    assert ours != pytest.approx(authors_resnet_l2(model, "c_out"), rel=1e-3)
    # and a plain product of every kernel norm (no "+ 1" / "+ shortcut") is far off
    plain = math.prod(top_sv(m.weight.reshape(m.weight.shape[0], -1))
                      for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert ours != pytest.approx(plain, rel=1e-2)


def test_ma2023_refuses_group_convs_by_name():
    model = registry_model("p4cnn")
    with pytest.raises(ValueError, match=r"no rule for layer type P4Lift \('P4CNN.convs.0'\)"):
        lipschitz_ma2023(model)


def test_ma2023_multiplies_conv_and_linear_norms_only():
    conv, linear = make_conv(2, 3, 3, 1, 1, 1, 1), nn.Linear(12, 5).double()
    model = nn.Sequential(Normalize((0.5, 0.5), (0.1, 0.1)), conv, nn.BatchNorm2d(3), nn.Flatten(), linear)
    expected = top_sv(conv.weight.reshape(3, -1)) * top_sv(linear.weight)
    assert lipschitz_ma2023(model) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- input gradients, weight norm


def test_input_gradient_norms_match_torch_func():
    model = Pooled()  # train mode: the measure must use eval mode, and restore train
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(5, 2, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    got = input_gradient_norms(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    for i in range(5):
        grad = torch.func.grad(lambda z, i=i: model(z[None])[0, y[i]])(x[i])
        assert float(got[i]) == pytest.approx(float(grad.detach().norm()), rel=1e-10)
    # a central finite difference along the gradient direction of point 0
    d = torch.func.grad(lambda z: model(z[None])[0, y[0]])(x[0])
    d = d / d.norm()
    h = 1e-5
    with torch.no_grad():
        fd = (model((x[0] + h * d)[None])[0, y[0]] - model((x[0] - h * d)[None])[0, y[0]]) / (2 * h)
    assert float(got[0]) == pytest.approx(float(fd), rel=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(input_gradient_norms(model, x, y), got)


def test_input_gradient_norms_check_their_input():
    model = Pooled()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        input_gradient_norms(model, x * 3, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one per point"):
        input_gradient_norms(model, x, torch.tensor([0]))
    with pytest.raises(ValueError, match="number of classes 3"):
        input_gradient_norms(model, x, torch.tensor([0, 3]))


def test_weight_norm_is_the_norm_of_all_parameters():
    model = Pooled()
    direct = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    assert weight_norm(model) == pytest.approx(float(direct), rel=1e-12)
    before = weight_norm(model)
    with torch.no_grad():
        model.bn.bias.add_(1.0)  # BN's affine parameters count
        model.bn.running_mean.add_(100.0)  # buffers do not
    assert weight_norm(model) > before
    direct = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    assert weight_norm(model) == pytest.approx(float(direct), rel=1e-12)


# ---------------------------------------------------------------- the callback


def small_callback(**kwargs) -> FunctionMeasures:
    return FunctionMeasures(**{"power_iters": 20, "num_samples": 40, "batch_size": 16,
                               "progress": False, **kwargs})


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_fit_end_results_and_logs(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=4)
    module = Net()
    trainer.fit(module, datamodule=Data())
    res = cb.results
    assert set(res) == RESULT_KEYS
    assert res["function_num_samples"] == 40 and res["function_time_s"] > 0
    assert res["input_grad_norm_median"] <= res["input_grad_norm_p95"]
    assert res["lipschitz_upper"] >= res["input_grad_norm_p95"]  # a global bound
    assert [name for name, _ in res["lipschitz_layers"]] == ["net.0", "net.1", "net.5"]
    assert res["weight_norm"] == pytest.approx(weight_norm(module))
    logged = logged_metrics(trainer)
    for key in RESULT_KEYS - {"lipschitz_layers"}:
        assert logged[f"func/{key}"] == pytest.approx(res[key])


def test_test_end_under_inference_mode_and_side_effects(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(on="test_end")
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    assert cb.results == {}
    trainer.test(module, datamodule=data)
    first = dict(cb.results)
    assert set(first) == RESULT_KEYS

    module.train()
    module.net[1].eval()
    modes = [m.training for m in module.modules()]
    module.net[5].weight.grad = torch.ones_like(module.net[5].weight)
    rng = torch.get_rng_state()
    again = cb.evaluate(module, data.test_dataloader())
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in module.modules()] == modes
    assert torch.equal(module.net[5].weight.grad, torch.ones_like(module.net[5].weight))
    assert module.net[0].weight.grad is None
    for key in RESULT_KEYS - {"function_time_s", "lipschitz_layers"}:  # seeded, same data
        assert again[key] == pytest.approx(first[key], rel=1e-6)
    assert again["lipschitz_layers"] == first["lipschitz_layers"]


def test_diverged_model_is_skipped(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback()
    module = Net()
    with torch.no_grad():
        module.net[0].weight[0, 0, 0, 0] = float("nan")
    cb._stage(make_trainer(pl, tmp_path, [cb]), module, "fit_end")
    assert cb.results == {"function_skipped": "non-finite parameters"}


@pytest.mark.parametrize("kwargs, match", [
    ({"power_iters": 0}, "power_iters"),
    ({"tol": 0.0}, "tol"),
    ({"num_samples": 0}, "num_samples"),
    ({"on": "val_end"}, "valid: fit_end, test_end"),
])
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FunctionMeasures(**kwargs)


def test_a_layer_without_an_ma2023_rule_gets_nan_and_a_warning(caplog):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.PReLU(), nn.Linear(8, 4))
    loader = DataLoader(TensorDataset(*synthetic(20, seed=3)), batch_size=8)
    with caplog.at_level("WARNING", logger="robusthp.callbacks.function_measures"):
        res = small_callback(num_samples=None).evaluate(model, loader)
    assert math.isnan(res["lipschitz_ma2023"]) and "no rule for layer type PReLU" in caplog.text
    assert res["weight_norm"] > 0


def test_a_model_the_bound_cannot_follow_gets_nan_and_a_warning(caplog):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 4))
    loader = DataLoader(TensorDataset(*synthetic(20, seed=3)), batch_size=8)
    with caplog.at_level("WARNING", logger="robusthp.callbacks.function_measures"):
        res = small_callback(num_samples=None).evaluate(model, loader)
    assert set(res) == RESULT_KEYS and res["function_num_samples"] == 20
    assert math.isnan(res["lipschitz_upper"]) and res["lipschitz_layers"] == []
    assert "layer type GELU" in caplog.text
    assert res["input_grad_norm_mean"] > 0 and res["weight_norm"] > 0
