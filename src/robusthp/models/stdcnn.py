"""StdCNN, the small MNIST / Fashion-MNIST convnet of Kamath et al., Table 1.

``Conv(3,3,10) - Conv(3,3,10) - MP(2,2) - Conv(3,3,20) - Conv(3,3,20) - MP(2,2) -
FC(50) - Dropout(0.5) - FC(10)``, valid (unpadded) convs, ReLU after each conv and
after FC50. On 1x28x28: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, 320 features,
23,010 parameters. It carries the paper's counter-example (Fashion-MNIST, Sec. 3.2).
The only model with dropout: evaluate it in eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize

KERNEL = 3  # conv kernel, valid (no padding)
WIDTHS = (10, 20)  # channels of the two conv pairs
HIDDEN = 50  # units of the hidden FC layer
DROPOUT = 0.5


def feature_side(image_size: int) -> int:
    """Side of the last feature map; < 1 means the image is too small."""
    side = image_size
    for _ in WIDTHS:
        side = side - 2 * (KERNEL - 1)  # two valid convs
        side = side // 2  # 2x2 max-pool, stride 2, floor
    return side


class StdCNN(nn.Module):
    """Two pairs of 3x3 convs with max-pools, then FC50, dropout, FC.

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
        side = feature_side(image_size)
        if side < 1:
            smallest = next(s for s in itertools.count(1) if feature_side(s) >= 1)
            raise ValueError(f"stdcnn needs image_size >= {smallest}; got {image_size}")
        w1, w2 = WIDTHS
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.conv1 = nn.Conv2d(in_channels, w1, KERNEL)
        self.conv2 = nn.Conv2d(w1, w1, KERNEL)
        self.conv3 = nn.Conv2d(w1, w2, KERNEL)
        self.conv4 = nn.Conv2d(w2, w2, KERNEL)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(w2 * side * side, HIDDEN)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc2 = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, 28, 28) on MNIST
        x = F.relu(self.conv1(x), inplace=True)  # (N, 10, 26, 26)
        x = self.pool(F.relu(self.conv2(x), inplace=True))  # (N, 10, 12, 12)
        x = F.relu(self.conv3(x), inplace=True)  # (N, 20, 10, 10)
        x = self.pool(F.relu(self.conv4(x), inplace=True))  # (N, 20, 4, 4)
        x = x.flatten(1)  # (N, 20 * 4 * 4 = 320)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # (N, 50)
        return self.fc2(x)  # (N, num_classes)
