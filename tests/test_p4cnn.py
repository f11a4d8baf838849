"""P4 group convs and P4CNN / Z2CNN: exact rot90 equivariance in float64, a loop reference,
rotation-invariant logits, hand-counted parameters, shapes, registry, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robusthp import catalog
from robusthp.models import MODELS, P4CNN, Z2CNN, P4Conv, P4Lift, build_model
from robusthp.models.p4conv import P4BatchNorm, p4_max_pool2d, rotation_max

MNIST = dict(in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,))
CIFAR = dict(
    in_channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
)
EXACT = 1e-10  # float64: what "exactly equivariant" means here


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def rot(x: torch.Tensor, k: int) -> torch.Tensor:
    """A plain quarter turn of the last two dims, k times."""
    return torch.rot90(x, k, dims=(-2, -1))


def act(y: torch.Tensor, k: int, direction: int = 1) -> torch.Tensor:
    """The stated action on a P4 map (N, C, 4, H, W): rot90 the planes, roll the rotation axis."""
    return torch.roll(rot(y, k), direction * k, dims=2)


def randomize(layer: nn.Module, g: torch.Generator) -> nn.Module:
    """float64, random weights and a random (non-zero) bias."""
    layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(randn(*p.shape, g=g))
    return layer


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---- layers: exact equivariance --------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [7, 8])  # odd and even sides
@pytest.mark.parametrize("kernel", [3, 4])  # odd and even kernels
def test_lift_is_equivariant(k, size, kernel):
    g = gen(k + 10 * size + 100 * kernel)
    lift = randomize(P4Lift(2, 3, kernel), g)
    x = randn(2, 2, size, size, g=g)
    y = lift(x)
    assert y.shape == (2, 3, 4, size - kernel + 1, size - kernel + 1)
    assert max_err(lift(rot(x, k)), act(y, k)) < EXACT
    if k in (1, 3):  # the law is not vacuous: the other roll direction fails
        assert max_err(lift(rot(x, k)), act(y, k, direction=-1)) > 1e-2
        assert max_err(lift(rot(x, k)), rot(y, k)) > 1e-2  # and a roll is needed at all


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("kernel", [3, 4])
def test_group_conv_is_equivariant(k, size, kernel):
    g = gen(1 + k + 10 * size + 100 * kernel)
    conv = randomize(P4Conv(3, 2, kernel), g)
    x = randn(2, 3, 4, size, size, g=g)  # a generic P4 map, not one a lift made
    y = conv(x)
    assert y.shape == (2, 2, 4, size - kernel + 1, size - kernel + 1)
    assert max_err(conv(act(x, k)), act(y, k)) < EXACT
    if k in (1, 3):
        assert max_err(conv(act(x, k)), act(y, k, direction=-1)) > 1e-2


def test_lift_then_group_convs_are_equivariant():
    g = gen(5)
    net = nn.Sequential(randomize(P4Lift(1, 4, 3), g), nn.ReLU(), randomize(P4Conv(4, 4, 3), g),
                        nn.ReLU(), randomize(P4Conv(4, 2, 4), g))
    x = randn(3, 1, 13, 13, g=g)
    for k in range(4):
        assert max_err(net(rot(x, k)), act(net(x), k)) < EXACT


# ---- layers: dense loop references --------------------------------------------------------


def test_lift_equals_loop_reference():
    g = gen(6)
    lift = randomize(P4Lift(2, 3, 3), g)
    x = randn(2, 2, 6, 6, g=g)
    w, b = lift.weight, lift.bias
    ref = torch.zeros(2, 3, 4, 4, 4, dtype=torch.float64)
    for o in range(3):
        for r in range(4):  # output rotation: the filter turned r times
            for i in range(2):
                filt = rot(w[o, i], r)[None, None]  # (1, 1, 3, 3)
                ref[:, o, r] += F.conv2d(x[:, i : i + 1], filt)[:, 0]
            ref[:, o, r] += b[o]
    assert max_err(lift(x), ref) < EXACT


def test_group_conv_equals_loop_reference():
    """out[o, r] = sum_{i, s} corr(x[i, s], rot90(w[o, i, (s - r) % 4], r)) + b[o]: the group
    correlation with the filter moved by rotation r (planes turned, rotation axis shifted)."""
    g = gen(7)
    conv = randomize(P4Conv(2, 3, 3), g)
    x = randn(2, 2, 4, 6, 5, g=g)  # non-square, to catch a transposed index
    w, b = conv.weight, conv.bias
    ref = torch.zeros(2, 3, 4, 4, 3, dtype=torch.float64)
    for o in range(3):
        for r in range(4):  # output rotation
            for i in range(2):
                for s in range(4):  # input rotation
                    filt = rot(w[o, i, (s - r) % 4], r)[None, None]
                    ref[:, o, r] += F.conv2d(x[:, i : i + 1, s], filt)[:, 0]
            ref[:, o, r] += b[o]
    assert max_err(conv(x), ref) < EXACT


def test_bias_is_one_per_channel_shared_over_rotations():
    conv = P4Conv(2, 3, 3)
    assert conv.bias.shape == (3,) and conv.weight.shape == (3, 2, 4, 3, 3)
    with torch.no_grad():
        conv.weight.zero_()
    y = conv(torch.randn(1, 2, 4, 5, 5))
    assert torch.equal(y, conv.bias.view(1, 3, 1, 1, 1).expand_as(y))
    assert P4Conv(2, 3, 3, bias=False).bias is None and P4Lift(1, 3, 3, bias=False).bias is None


def test_init_scales_with_the_fan_in():
    torch.manual_seed(0)
    for layer, fan_in in [(P4Lift(10, 40, 3), 10 * 9), (P4Conv(10, 40, 3), 10 * 4 * 9)]:
        bound = fan_in**-0.5  # nn.Conv2d's default, kaiming-uniform(a=sqrt 5)
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound
        assert layer.bias.abs().max() <= bound


def test_p4conv_rejects_a_plain_image():
    with pytest.raises(ValueError, match=r"P4 map \(N, 2, 4, H, W\)"):
        P4Conv(2, 3, 3)(torch.randn(1, 2, 6, 6))


def test_pool_batchnorm_and_rotation_max_commute_with_the_action():
    g = gen(8)
    y = randn(4, 3, 4, 8, 8, g=g)
    for k in range(4):
        assert max_err(p4_max_pool2d(act(y, k)), act(p4_max_pool2d(y), k)) < EXACT
        assert max_err(rotation_max(act(y, k)), rot(rotation_max(y), k)) < EXACT
    bn = randomize(P4BatchNorm(3), g)
    assert sum(p.numel() for p in bn.parameters()) == 2 * 3
    for train in (True, False):
        bn.train(train)
        assert max_err(bn(act(y, 1)), act(bn(y), 1)) < EXACT
    bn.train()
    out = bn(y)  # batch statistics over N, the rotation axis and space: per channel
    mean = out.mean(dim=(0, 2, 3, 4))
    assert max_err(mean, bn.bias) < EXACT


# ---- models ---------------------------------------------------------------------------------


def make(name: str, dataset: dict | None = None, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=num_classes, **(dataset or MNIST))


def pixels(dataset: dict, n: int = 2, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    size = dataset["image_size"]
    return torch.rand(n, dataset["in_channels"], size, size, generator=gen(seed), dtype=dtype)


def trained_stats(model: nn.Module, dataset: dict) -> nn.Module:
    """float64, BN with non-trivial affine and running stats (a few train-mode forwards)."""
    model.double()
    g = gen(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
                m.momentum = 0.5
        model.train()
        for seed in range(3):
            model(pixels(dataset, n=8, dtype=torch.float64, seed=10 + seed))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
    return model.eval()


@pytest.mark.parametrize("dataset", [MNIST, CIFAR], ids=["1x28x28", "3x32x32"])
def test_p4cnn_logits_are_rot90_invariant(dataset):
    model = trained_stats(make("p4cnn", dataset), dataset)
    x = pixels(dataset, n=4, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        assert logits.std() > 1e-3  # not trivially constant
        for k in (1, 2, 3):
            assert max_err(model(rot(x, k)), logits) < EXACT
        model.train()  # batch statistics of a rotated batch are the same statistics
        train_logits = model(x)
        assert max_err(model(rot(x, 1)), train_logits) < EXACT


def test_z2cnn_logits_are_not_rot90_invariant():
    model = trained_stats(make("z2cnn"), MNIST)
    x = pixels(MNIST, n=4, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        for k in (1, 2, 3):
            assert max_err(model(rot(x, k)), logits) > 1e-3


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_counts_by_hand():
    # P4CNN on 1x28x28, 10 classes: weights Cout*Cin*(4 input rotations)*k*k, one bias per Cout
    p4cnn = (
        (10 * 1 * 3 * 3 + 10)  # lift 1 -> 10, 3x3: 100
        + 5 * (10 * 10 * 4 * 3 * 3 + 10)  # five P4 convs 10 -> 10, 3x3: 5 * 3,610
        + (10 * 10 * 4 * 4 * 4 + 10)  # top P4 conv 10 -> 10, 4x4: 6,410
        + 6 * (2 * 10)  # six BNs, weight + bias per channel (shared over rotations)
    )
    z2cnn = (
        (20 * 1 * 3 * 3 + 20)  # 1 -> 20, 3x3: 200
        + 5 * (20 * 20 * 3 * 3 + 20)  # five 20 -> 20, 3x3: 5 * 3,620
        + (10 * 20 * 4 * 4 + 10)  # top 20 -> 10, 4x4: 3,210
        + 6 * (2 * 20)  # six BNs
    )
    assert (p4cnn, z2cnn) == (24_680, 21_750)  # the numbers in the docstring
    assert n_params(make("p4cnn")) == p4cnn
    assert n_params(make("z2cnn")) == z2cnn
    # on 3 channels and 7 classes only the first and the last conv change
    assert n_params(make("p4cnn", CIFAR, num_classes=7)) == p4cnn - 100 + (10 * 3 * 9 + 10) - 6410 + (
        7 * 10 * 4 * 16 + 7
    )
    assert n_params(make("z2cnn", CIFAR, num_classes=7)) == z2cnn - 200 + (20 * 3 * 9 + 20) - 3210 + (
        7 * 20 * 16 + 7
    )


@pytest.mark.parametrize("name", ["p4cnn", "z2cnn"])
@pytest.mark.parametrize("size", [28, 29, 32])
def test_output_shape(name, size):
    dataset = dict(MNIST, image_size=size)
    logits = make(name, dataset)(pixels(dataset, n=3))
    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["p4cnn", "z2cnn"])
def test_too_small_image_is_an_error(name):
    with pytest.raises(ValueError, match=f"{name} needs image_size >= 28; got 27"):
        build_model(name, num_classes=10, **dict(MNIST, image_size=27))
    build_model(name, num_classes=10, **MNIST)


def test_registry_and_catalog():
    model = build_model(
        "p4cnn", in_channels=1, num_classes=10, image_size=28, mean=(0.1307,), std=(0.3081,)
    )
    assert isinstance(model, P4CNN)
    assert isinstance(make("z2cnn"), Z2CNN)
    assert MODELS["p4cnn"] is P4CNN and MODELS["z2cnn"] is Z2CNN
    for name, label in [("p4cnn", "P4CNN"), ("z2cnn", "Z2CNN")]:
        spec = catalog.MODELS[name]
        assert (spec.label, spec.dataset) == (label, "mnist")
    with pytest.raises(TypeError, match="it accepts: none"):
        build_model("p4cnn", num_classes=10, dropout=0.3, **MNIST)


@pytest.mark.parametrize("name", ["p4cnn", "z2cnn"])
def test_sgd_steps_reduce_the_loss(name):
    model = make(name).train()
    x = pixels(MNIST, n=16, seed=4)
    y = torch.randint(0, 10, (16,), generator=gen(5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]
