"""C1, the CIFAR-10 convnet of Kamath et al., Table 1 (and of Yao et al. 2018).

Table 1 reads ``Conv(5,5,64) - MP(3,3) - BN - Conv(5,5,64) - MP(3,3) - BN -
FC(384) - FC(192) - FC(10)`` without padding, strides or activation order. We
follow Yao et al.'s public code (HessianFlow ``models/c1.py``), since the paper
takes C1 and its benchmark setting from them:
- conv 5x5, padding 2 (size kept), then ReLU, then BatchNorm, then
  MaxPool(kernel 3, stride 2, padding 1), twice: 32 -> 16 -> 8;
- 64 * 8 * 8 = 4096 features -> FC384 -> ReLU -> FC192 -> ReLU -> FC.
So the order is ReLU - BN - MP, not the table's MP - BN; the two differ (BN is
affine per channel and can flip signs, so it does not commute with max-pool).
The overlapping 3x3/2 pools go back to the TensorFlow CIFAR-10 tutorial net that
C1 descends from. 1,756,682 parameters (plus 256 BN running statistics).
BatchNorm makes the output depend on the batch in train mode: evaluate (and take
Hessians) in the mode you mean to measure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize

KERNEL = 5  # conv kernel, padding 2 keeps the size
WIDTH = 64  # channels of both convs
HIDDEN = (384, 192)  # units of the two hidden FC layers


def feature_side(image_size: int) -> int:
    """Side of the last feature map: each 3x3/2 pool with padding 1 halves, rounding up."""
    side = image_size
    for _ in range(2):
        side = (side + 2 * 1 - 3) // 2 + 1  # MaxPool2d(3, stride=2, padding=1)
    return side


class C1(nn.Module):
    """Two conv-ReLU-BN-pool stages and three FC layers; see the module docstring.

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
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"c1 needs image_size >= 1; got {image_size}")
        side = feature_side(image_size)
        h1, h2 = HIDDEN
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.conv1 = nn.Conv2d(in_channels, WIDTH, KERNEL, padding=KERNEL // 2)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, KERNEL, padding=KERNEL // 2)
        self.bn2 = nn.BatchNorm2d(WIDTH)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(WIDTH * side * side, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, 32, 32) on CIFAR-10
        x = self.pool(self.bn1(F.relu(self.conv1(x), inplace=True)))  # (N, 64, 16, 16)
        x = self.pool(self.bn2(F.relu(self.conv2(x), inplace=True)))  # (N, 64, 8, 8)
        x = x.flatten(1)  # (N, 64 * 8 * 8 = 4096)
        x = F.relu(self.fc1(x), inplace=True)  # (N, 384)
        x = F.relu(self.fc2(x), inplace=True)  # (N, 192)
        return self.fc3(x)  # (N, num_classes)
