"""PreActResNet18 (He et al. 2016, "Identity Mappings"), the model of Ma, Pan, Farahmand
2023 on CIFAR, in the kuangliu/pytorch-cifar layout their code uses
(opt-robust/models/preact_resnet.py).

Layout (preact_resnet.py:15-40, 72-131): a 3x3/1 stem conv (64, no bias), then
PreActBlocks [2, 2, 2, 2] of 64/128/256/512 channels (stride 2 at the start of stages
2-4), each ``relu(bn1(x))`` -> conv3x3 -> ``relu(bn2(.))`` -> conv3x3, plus a shortcut: the
block's input x itself, or, where the shape changes, a 1x1 conv (no BN) of the
pre-activated input. No BN or ReLU after the last block: global average pool, FC.

Two switches, as the authors' constructor ``PreActResNet18(dataset, num_classes,
input_normalization, enable_batchnorm)`` (preact_resnet.py:156):

- ``batchnorm``: the blocks' two BNs (``enable_batchnorm``); off, each ``bn`` is left
  out and the ReLUs act on the raw block input and conv output (preact_resnet.py:35, 38);
- ``input_normalization``: per-image standardization of the input
  (preact_resnet.py:102-110, TensorFlow's ``per_image_standardization``).

Both default to False: the authors build their CIFAR models as
``PreActResNet18(dataset, num_classes, False, False)`` (freq-robust/eval_AA_cluster.py:98,
opt-robust/notebook/fig4_band_limited_gaussian.ipynb cell 3) and train them with
``input_normalization=false enable_batchnorm=false`` (freq-robust/
run_cifar10_cifar100_svhn.sh:25-26). Their models read raw [0, 1] pixels: the dataset's
mean/std are not used, and the ``Normalize`` first layer robusthp's models share is the
identity here (mean 0, std 1), kept for its input checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize
from robusthp.models.resnet import RESNET18_BLOCKS, STAGE_WIDTHS, STEM_WIDTH, conv3x3


class PerImageStandardization(nn.Module):
    """(x - mean(x)) / max(std(x), 1/sqrt(n)) per image, n = C H W: the authors' input
    normalization (preact_resnet.py:102-110). ``torch.std`` there is the unbiased one
    (n - 1), not TensorFlow's, so the unbiased std of the output is 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / std.clamp(min=1.0 / math.sqrt(n))


class PreActBlock(nn.Module):
    """Pre-activation BasicBlock (preact_resnet.py:15-40). (N, in, S, S) -> (N, out, S/stride, S/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels) if batchnorm else None
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels) if batchnorm else None
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut: nn.Module | None = None  # None: the identity on the block's input
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without BN the first ReLU acts on x itself, which the identity shortcut still needs:
        # only a BN output may be overwritten in place
        out = F.relu(self.bn1(x), inplace=True) if self.bn1 is not None else F.relu(x)
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.bn2(out) if self.bn2 is not None else out
        out = self.conv2(F.relu(out, inplace=True))
        return out + skip


class PreActResNet(nn.Module):
    """CIFAR-style pre-activation ResNet.

    Input: float (N, in_channels, image_size, image_size) pixels in [0, 1]. Output: logits
    (N, num_classes). The authors' ``avg_pool2d(out, 4)`` (preact_resnet.py:129) is the
    global pool for 32x32 inputs (4x4 after the last stage); a global pool here keeps any
    image size working (28x28 ends at 4x4 too).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        blocks: Sequence[int],
        batchnorm: bool,
        input_normalization: bool,
    ) -> None:
        super().__init__()
        self.normalize = Normalize((0.0,) * in_channels, (1.0,) * in_channels, image_size=image_size)
        self.standardize: nn.Module = PerImageStandardization() if input_normalization else nn.Identity()
        self.conv1 = conv3x3(in_channels, STEM_WIDTH)
        stages, width = [], STEM_WIDTH
        for i, (out_width, n_blocks) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (n_blocks - 1)
            stage = []
            for stride in strides:
                stage.append(PreActBlock(width, out_width, stride, batchnorm))
                width = out_width
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(self.normalize(x))  # (N, C, 32, 32) on CIFAR-10
        x = self.layers(self.conv1(x))  # (N, 512, 4, 4)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (N, num_classes)


def preact_resnet18(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batchnorm: bool = False,
    input_normalization: bool = False,
) -> PreActResNet:
    """PreActResNet18 at the authors' CIFAR setting by default (no BN, no input
    normalization); ``mean``/``std`` are ignored (the authors feed raw pixels)."""
    if image_size < 1:
        raise ValueError(f"preact_resnet18 needs image_size >= 1; got {image_size}")
    for key, value in (("batchnorm", batchnorm), ("input_normalization", input_normalization)):
        if not isinstance(value, bool):
            raise TypeError(f"preact_resnet18: {key} must be true or false; got {value!r}")
    return PreActResNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                        blocks=RESNET18_BLOCKS, batchnorm=batchnorm, input_normalization=input_normalization)
