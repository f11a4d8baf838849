"""Model registry and the four models of Table 1: shapes, hand-counted parameters, contracts."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from robusthp import catalog
from robusthp.models import MODELS, Normalize, build_model, register_model

MNIST = dict(in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,))
CIFAR = dict(
    in_channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
)
DATASET = {"m1": MNIST, "stdcnn": MNIST, "c1": CIFAR, "resnet18": CIFAR, "p4cnn": MNIST, "z2cnn": MNIST,
           "preact_resnet18": CIFAR}
# models that read raw pixels, as their authors' (Ma et al.'s PreActResNet18): an identity
# Normalize (mean 0, std 1) keeps the input checks, the dataset's mean/std are unused
RAW_PIXELS = {"preact_resnet18"}


# ---- parameter counts by hand, layer by layer ------------------------------------------


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_out * c_in * k * k + (c_out if bias else 0)


def fc(n_in: int, n_out: int) -> int:
    return n_out * n_in + n_out


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers


def basic_block(c_in: int, c_out: int, stride: int) -> int:
    main = (
        conv(c_in, c_out, 3, bias=False) + bn(c_out) + conv(c_out, c_out, 3, bias=False) + bn(c_out)
    )
    projection = stride != 1 or c_in != c_out
    return main + (conv(c_in, c_out, 1, bias=False) + bn(c_out) if projection else 0)


def resnet18_count(c_in: int, classes: int) -> int:
    total = conv(c_in, 64, 3, bias=False) + bn(64)  # CIFAR stem, no max-pool
    width = 64
    for i, c_out in enumerate((64, 128, 256, 512)):
        for j in range(2):  # [2, 2, 2, 2] BasicBlocks
            total += basic_block(width, c_out, 2 if (i > 0 and j == 0) else 1)
            width = c_out
    return total + fc(512, classes)


def preact_block(c_in: int, c_out: int, stride: int, batchnorm: bool) -> int:
    # kuangliu's PreActBlock: BN of the input and of conv1's output, a 1x1 conv shortcut
    # without BN where the shape changes
    convs = conv(c_in, c_out, 3, bias=False) + conv(c_out, c_out, 3, bias=False)
    projection = conv(c_in, c_out, 1, bias=False) if stride != 1 or c_in != c_out else 0
    return convs + projection + ((bn(c_in) + bn(c_out)) if batchnorm else 0)


def preact_resnet18_count(c_in: int, classes: int, batchnorm: bool = False) -> int:
    total = conv(c_in, 64, 3, bias=False)  # stem, no BN (pre-activation: BN opens each block)
    width = 64
    for i, c_out in enumerate((64, 128, 256, 512)):
        for j in range(2):
            total += preact_block(width, c_out, 2 if (i > 0 and j == 0) else 1, batchnorm)
            width = c_out
    return total + fc(512, classes)  # no BN after the last block


HAND_COUNT = {
    # M1 pooled on 1x28x28: 28 -conv5-> 24 -mp2-> 12 -conv5-> 8 -mp2-> 4
    "m1": sum(
        [
            conv(1, 20, 5),  # 20*1*5*5 + 20 = 520
            conv(20, 20, 5),  # 20*20*5*5 + 20 = 10,020
            fc(20 * 4 * 4, 500),  # 500*320 + 500 = 160,500
            fc(500, 10),  # 10*500 + 10 = 5,010
        ]
    ),
    # StdCNN on 1x28x28: 28 -> 26 -> 24 -mp2-> 12 -> 10 -> 8 -mp2-> 4
    "stdcnn": sum(
        [
            conv(1, 10, 3),  # 10*1*3*3 + 10 = 100
            conv(10, 10, 3),  # 10*10*3*3 + 10 = 910
            conv(10, 20, 3),  # 20*10*3*3 + 20 = 1,820
            conv(20, 20, 3),  # 20*20*3*3 + 20 = 3,620
            fc(20 * 4 * 4, 50),  # 50*320 + 50 = 16,050
            fc(50, 10),  # 10*50 + 10 = 510
        ]
    ),
    # C1 on 3x32x32: pad-2 convs keep the size, MP(3, stride 2, pad 1) halves it: 32 -> 16 -> 8
    "c1": sum(
        [
            conv(3, 64, 5),  # 64*3*5*5 + 64 = 4,864
            bn(64),  # 128
            conv(64, 64, 5),  # 64*64*5*5 + 64 = 102,464
            bn(64),  # 128
            fc(64 * 8 * 8, 384),  # 384*4096 + 384 = 1,573,248
            fc(384, 192),  # 192*384 + 192 = 73,920
            fc(192, 10),  # 10*192 + 10 = 1,930
        ]
    ),
    "resnet18": resnet18_count(3, 10),
    "preact_resnet18": preact_resnet18_count(3, 10),
    # P4CNN on 1x28x28 (Cohen & Welling): a P4 filter holds 4 rotation planes, its bias and
    # BN one value per channel, shared over the rotations
    "p4cnn": sum(
        [
            10 * 1 * 3 * 3 + 10,  # lifting conv 1 -> 10, 3x3 = 100
            5 * (10 * 10 * 4 * 3 * 3 + 10),  # five P4 convs 10 -> 10, 3x3 = 5 x 3,610
            10 * 10 * 4 * 4 * 4 + 10,  # final P4 conv 10 -> 10, 4x4 = 6,410
            6 * 2 * 10,  # six BNs, weight + bias
        ]
    ),
    # Z2CNN: the same layout with plain convs of 20 channels
    "z2cnn": sum(
        [
            conv(1, 20, 3),  # 200
            5 * conv(20, 20, 3),  # 5 x 3,620
            conv(20, 10, 4),  # 3,210
            6 * 2 * 20,  # six BNs
        ]
    ),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make(name: str, dataset: dict | None = None, num_classes: int = 10, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=num_classes, **(dataset or DATASET[name]), **kwargs)


def pixels(dataset: dict, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = dataset["image_size"]
    return torch.rand(n, dataset["in_channels"], size, size, generator=g)


def test_registry_names():
    assert sorted(MODELS) == ["c1", "m1", "p4cnn", "preact_resnet18", "resnet18", "stdcnn", "z2cnn"]
    assert set(HAND_COUNT) == set(MODELS) == set(DATASET)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_param_count_matches_table_1(name):
    assert n_params(make(name)) == HAND_COUNT[name]


def test_param_counts_literal_values():
    # the numbers quoted in the docstrings and README
    assert HAND_COUNT == {"m1": 176_050, "stdcnn": 23_010, "c1": 1_756_682, "resnet18": 11_173_962,
                          "p4cnn": 24_680, "z2cnn": 21_750, "preact_resnet18": 11_164_362}
    assert preact_resnet18_count(3, 10, batchnorm=True) == 11_164_362 + 6_784  # 2 x sum of BN widths


def test_m1_without_pooling_is_the_literal_table():
    # 28 -conv5-> 24 -conv5-> 20; 20*20*20 = 8000 features
    expected = conv(1, 20, 5) + conv(20, 20, 5) + fc(20 * 20 * 20, 500) + fc(500, 10)
    model = make("m1", pool=False)
    assert n_params(model) == expected == 4_016_050
    assert make("m1", pool=False)(pixels(MNIST)).shape == (2, 10)


def test_param_counts_follow_channels_and_classes():
    # 3x32x32 into M1: 32 -> 28 -> 14 -> 10 -> 5; into StdCNN: 32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5
    m1 = conv(3, 20, 5) + conv(20, 20, 5) + fc(20 * 5 * 5, 500) + fc(500, 7)
    assert n_params(make("m1", CIFAR, num_classes=7)) == m1
    std = (
        conv(3, 10, 3)
        + conv(10, 10, 3)
        + conv(10, 20, 3)
        + conv(20, 20, 3)
        + fc(20 * 5 * 5, 50)
        + fc(50, 7)
    )
    assert n_params(make("stdcnn", CIFAR, num_classes=7)) == std
    assert n_params(make("resnet18", num_classes=100)) == resnet18_count(3, 100)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape(name):
    dataset = DATASET[name]
    logits = make(name, num_classes=10)(pixels(dataset, n=3))
    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["m1", "stdcnn"])
def test_mnist_models_run_on_cifar_shape(name):
    assert make(name, CIFAR)(pixels(CIFAR)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_normalize_is_first_layer(name):
    model = make(name).eval()
    assert isinstance(next(model.children()), Normalize)
    called: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, _: called.append(m))
        for m in model.modules()
        if m is not model
    ]
    try:
        model(pixels(DATASET[name]))
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(called[0], Normalize)  # the first module the forward pass calls


@pytest.mark.parametrize("name", sorted(MODELS))
def test_constant_mean_image_normalizes_to_zero(name):
    dataset = DATASET[name]
    model = make(name)
    x = torch.tensor(dataset["mean"]).view(1, -1, 1, 1).expand_as(pixels(dataset))  # (2, C, S, S)
    expected = x if name in RAW_PIXELS else torch.zeros_like(x)
    torch.testing.assert_close(model.normalize(x), expected)
    assert "normalize.mean" not in model.state_dict()  # rebuilt from config, not checkpointed


@pytest.mark.parametrize("name", sorted(MODELS))
def test_input_gradient_flows(name):
    model = make(name).eval()
    x = pixels(DATASET[name]).requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([3, 7]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("train", [True, False])
def test_in_place_relus_change_no_numbers(name, train, monkeypatch):
    """The models' ReLUs run in place (a speed choice): logits, parameter gradients and the
    input gradient equal those with every ReLU out of place, bit for bit, and the input
    pixels are left as they were."""

    def run():
        model = make(name).train(train)
        x = pixels(DATASET[name], n=4).requires_grad_(True)
        before = x.detach().clone()
        torch.manual_seed(1)  # same dropout masks in both passes
        logits = model(x)
        nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
        assert torch.equal(x.detach(), before)
        return logits.detach(), x.grad, [p.grad for p in model.parameters()]

    in_place = run()
    relu, calls = nn.functional.relu, []

    def out_of_place_relu(t, inplace=False):
        calls.append(inplace)
        return relu(t)

    monkeypatch.setattr(nn.functional, "relu", out_of_place_relu)
    out_of_place = run()
    # the models asked for in-place ReLUs, and got them out of place; PreActResNet18 without
    # BN keeps one out of place, on the block input its identity shortcut still reads
    assert calls and (all(calls) if name != "preact_resnet18" else any(calls) and not all(calls))
    assert torch.equal(in_place[0], out_of_place[0])
    assert torch.equal(in_place[1], out_of_place[1])
    assert all(torch.equal(a, b) for a, b in zip(in_place[2], out_of_place[2], strict=True))


def test_stdcnn_dropout_is_off_in_eval_mode():
    model = make("stdcnn")
    x = pixels(MNIST, n=8)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))  # dropout active in train mode


def test_unknown_model_lists_names():
    with pytest.raises(ValueError) as err:
        build_model("foo", num_classes=10, **MNIST)
    assert str(err.value) == "unknown model 'foo'; choose one of: c1, m1, p4cnn, preact_resnet18, resnet18, stdcnn, z2cnn"


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="'m1' is already registered"):
        register_model("m1")(lambda **kw: nn.Identity())
    assert MODELS["m1"].__name__ == "M1"  # not overwritten


def test_register_new_model():
    @register_model("tiny_test_model")
    def tiny(*, in_channels, num_classes, image_size, mean, std):
        return nn.Sequential(
            Normalize(mean, std), nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes)
        )

    try:
        assert build_model("tiny_test_model", num_classes=4, **MNIST)(pixels(MNIST)).shape == (2, 4)
    finally:
        del MODELS["tiny_test_model"]


def test_registry_is_filled_from_the_catalog():
    assert list(MODELS) == list(catalog.MODELS)  # same names, same order
    for name, spec in catalog.MODELS.items():
        module, attr = spec.builder.split(":")
        assert MODELS[name] is getattr(importlib.import_module(module), attr)


def test_registered_model_gets_a_catalog_entry_and_loses_it_when_deleted():
    @register_model("tiny_catalog_model", label="Tiny")
    def tiny(*, in_channels, num_classes, image_size, mean, std):
        return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        spec = catalog.MODELS["tiny_catalog_model"]
        assert (spec.name, spec.label, spec.dataset) == ("tiny_catalog_model", "Tiny", None)
        assert spec.builder == f"{__name__}:{tiny.__qualname__}"
    finally:
        del MODELS["tiny_catalog_model"]
    assert "tiny_catalog_model" not in catalog.MODELS and "tiny_catalog_model" not in MODELS
    with pytest.raises(ValueError, match="'m1' is already registered"):
        register_model("m1")(tiny)
    assert "m1" in catalog.MODELS  # a catalog model stays in the catalog


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match=r"unknown option\(s\): poool; it accepts: pool$"):
        build_model("m1", num_classes=10, poool=False, **MNIST)
    with pytest.raises(TypeError, match="dropout; it accepts: none"):
        build_model("stdcnn", num_classes=10, dropout=0.1, **MNIST)


@pytest.mark.parametrize(("name", "image_size", "smallest"), [("m1", 15, 16), ("stdcnn", 15, 16)])
def test_too_small_image_is_an_error(name, image_size, smallest):
    dataset = dict(MNIST, image_size=image_size)
    with pytest.raises(ValueError, match=f"image_size >= {smallest}; got {image_size}"):
        build_model(name, num_classes=10, **dataset)
    build_model(name, num_classes=10, **dict(MNIST, image_size=smallest))


def test_m1_without_pool_needs_only_9_pixels():
    with pytest.raises(ValueError, match=r"pool=False\) needs image_size >= 9"):
        build_model("m1", num_classes=10, pool=False, **dict(MNIST, image_size=8))


@pytest.mark.parametrize(
    "bad",
    [
        dict(mean=(0.5, 0.5), std=(0.5, 0.5)),  # 2 values, 1 channel
        dict(std=(0.0,)),  # zero std
        dict(image_size=0),
        dict(num_classes=0),
    ],
)
def test_bad_build_arguments(bad):
    args = dict(MNIST, num_classes=10) | bad
    with pytest.raises(ValueError):
        build_model("stdcnn", **args)


def test_scalar_mean_is_a_type_error():
    with pytest.raises(TypeError, match="mean must be a sequence"):
        build_model("m1", num_classes=10, **dict(MNIST, mean=0.1307))


def test_wrong_input_shape_is_named():
    model = make("m1")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(pixels(CIFAR))
    with pytest.raises(ValueError, match="built for 28x28"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="float pixels"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_models_are_pure_torch():
    code = (
        "import sys, robusthp.models; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'omegaconf')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- PreActResNet18 (Ma et al. 2023; the authors' opt-robust/models/preact_resnet.py) ----


def test_preact_defaults_are_the_authors_cifar_setting():
    # PreActResNet18(dataset, num_classes, input_normalization=False, enable_batchnorm=False)
    model = make("preact_resnet18")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.standardize, nn.Identity)
    assert n_params(model) == preact_resnet18_count(3, 10, batchnorm=False)


def test_preact_switches_change_the_modules():
    with_bn = make("preact_resnet18", batchnorm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 16  # 2 per block
    assert n_params(with_bn) == preact_resnet18_count(3, 10, batchnorm=True)
    standardized = make("preact_resnet18", input_normalization=True)
    assert type(standardized.standardize).__name__ == "PerImageStandardization"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in standardized.modules())
    with pytest.raises(TypeError, match="batchnorm must be true or false"):
        make("preact_resnet18", batchnorm="yes")


def test_per_image_standardization_gives_mean_0_std_1():
    model = make("preact_resnet18", input_normalization=True)
    x = pixels(CIFAR, n=4) * torch.tensor([0.2, 0.5, 1.0, 0.7]).view(4, 1, 1, 1)
    z = model.standardize(x).double()  # (4, 3, 32, 32)
    torch.testing.assert_close(z.mean(dim=(1, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0)
    # unbiased std, as the authors' torch.std (n - 1), not TensorFlow's
    torch.testing.assert_close(z.std(dim=(1, 2, 3)), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    # a flat image: std below 1/sqrt(n), so the floor divides: (x - mean) * sqrt(3072)
    flat = torch.full((1, 3, 32, 32), 0.5)
    flat[0, 0, 0, 0] = 0.5 + 1e-3
    expected = (flat - flat.mean()) * math.sqrt(3 * 32 * 32)
    torch.testing.assert_close(model.standardize(flat), expected)


def test_preact_blocks_compute_the_pre_activation_form():
    """Each block, by hand with F.conv2d: conv2(relu(conv1(relu(x)))) + shortcut, where the
    shortcut is x itself or a 1x1 conv of relu(x) (the authors' forward, no BN)."""
    model = make("preact_resnet18").eval()
    relu = nn.functional.relu
    for block, c_in in ((model.layers[0][0], 64), (model.layers[1][0], 64)):
        x = torch.randn(2, c_in, 8, 8, generator=torch.Generator().manual_seed(3))
        before = x.clone()
        out = block(x)
        assert torch.equal(x, before)  # the input is not overwritten in place
        stride = block.conv1.stride
        main = nn.functional.conv2d(relu(x), block.conv1.weight, stride=stride, padding=1)
        main = nn.functional.conv2d(relu(main), block.conv2.weight, padding=1)
        skip = x if block.shortcut is None else nn.functional.conv2d(
            relu(x), block.shortcut[0].weight, stride=stride)
        torch.testing.assert_close(out, main + skip)


def test_preact_ignores_the_dataset_mean_and_std():
    a = make("preact_resnet18").eval()
    b = make("preact_resnet18", dict(CIFAR, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))).eval()
    x = pixels(CIFAR)
    assert torch.equal(a(x), b(x))
