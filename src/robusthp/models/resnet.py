"""ResNet18 in its CIFAR form (He et al. 2016), the paper's CIFAR-10 ResNet.

The ImageNet stem (7x7/2 conv + 3x3/2 max-pool) would shrink a 32x32 image to 8x8
before the first block; the CIFAR form replaces it with one 3x3/1 conv (64) and no
pool, the layout of the widely used kuangliu/pytorch-cifar ResNet18 that CIFAR
papers of the period train. Then BasicBlocks [2, 2, 2, 2] with 64/128/256/512
channels (stride 2 at the start of stages 2-4; 1x1 conv + BN shortcut where the
shape changes), global average pool, FC. Convs have no bias (BN follows each).
32 -> 32 -> 16 -> 8 -> 4 -> 1; 11,173,962 parameters for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize

STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)  # BasicBlocks per stage


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU. (N, in, S, S) -> (N, out, S/stride, S/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # projection where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(nn.Module):
    """CIFAR-style ResNet of BasicBlocks.

    Input: float (N, in_channels, image_size, image_size) pixels in [0, 1].
    Output: logits (N, num_classes). Any image_size >= 1 works (3x3/2 convs with
    padding 1 never reach 0x0; the global pool absorbs the final size).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        blocks: Sequence[int],
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"resnet needs image_size >= 1; got {image_size}")
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.conv1 = conv3x3(in_channels, STEM_WIDTH)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        stages, width = [], STEM_WIDTH
        for i, (out_width, n_blocks) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (n_blocks - 1)
            stage = []
            for stride in strides:
                stage.append(BasicBlock(width, out_width, stride))
                width = out_width
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, 32, 32) on CIFAR-10
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (N, 64, 32, 32)
        x = self.layers(x)  # (N, 512, 4, 4)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 512)
        return self.fc(x)  # (N, num_classes)


def resnet18(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ResNet:
    """ResNet18 (CIFAR form): BasicBlocks [2, 2, 2, 2]; see ``ResNet`` for the contract."""
    return ResNet(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        mean=mean,
        std=std,
        blocks=RESNET18_BLOCKS,
    )
