"""M1, the MNIST / Fashion-MNIST convnet of Kamath et al., Table 1.

Table 1 reads ``Conv(5,5,20) - Conv(5,5,20) - FC(500) - FC(10)`` and shows no
pooling; Yao et al.'s public code (HessianFlow) has no M1 to check against.

Our default, ``pool=True``, puts a 2x2 max-pool after each conv, reading the
table as an abbreviation of the LeNet layout. Evidence:
- Caffe's MNIST LeNet example is conv 5x5x20 - pool 2x2 - conv 5x5x50 - pool 2x2 -
  FC500 - FC10: the same kernels, first width and FC sizes, with the pools;
- without pools, 28 -> 24 -> 20 leaves 8000 features, so FC500 alone would hold
  4.0M of 4.02M weights (23x the pooled net), out of line with the paper's
  other small MNIST net (StdCNN, 23k parameters).
Pooled: 28 -> 24 -> 12 -> 8 -> 4, 320 features, 176,050 parameters, ~6.0 MFLOP
per training sample (forward and weight gradients, 2 FLOP per multiply-add).
``pool=False`` builds the literal table: 8000 features, 4,016,050 parameters, ~49 MFLOP per
sample, about 8x costlier per MNIST run. ReLU after each conv and after FC500.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize

KERNEL = 5  # conv kernel, valid (no padding)
WIDTH = 20  # channels of both convs
HIDDEN = 500  # units of the hidden FC layer


def feature_side(image_size: int, pool: bool) -> int:
    """Side of the last feature map; < 1 means the image is too small."""
    side = image_size
    for _ in range(2):
        side = side - (KERNEL - 1)  # valid conv
        if pool:
            side = side // 2  # 2x2 max-pool, stride 2, floor
    return side


class M1(nn.Module):
    """Two 5x5 convs (20 channels) and two FC layers; see the module docstring.

    Input: float (N, in_channels, image_size, image_size) pixels in [0, 1].
    Output: logits (N, num_classes).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pool: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(pool, bool):
            raise TypeError(f"m1: pool must be True or False; got {pool!r}")
        side = feature_side(image_size, pool)
        if side < 1:
            smallest = next(s for s in itertools.count(1) if feature_side(s, pool) >= 1)
            raise ValueError(f"m1 (pool={pool}) needs image_size >= {smallest}; got {image_size}")
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.conv1 = nn.Conv2d(in_channels, WIDTH, KERNEL)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, KERNEL)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.fc1 = nn.Linear(WIDTH * side * side, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, S, S)
        x = self.pool(F.relu(self.conv1(x), inplace=True))  # (N, 20, 12, 12) on MNIST, pooled
        x = self.pool(F.relu(self.conv2(x), inplace=True))  # (N, 20, 4, 4)
        x = x.flatten(1)  # (N, 20 * 4 * 4 = 320)
        x = F.relu(self.fc1(x), inplace=True)  # (N, 500)
        return self.fc2(x)  # (N, num_classes)
