"""P4CNN, the rotation-equivariant MNIST-rot net of Cohen & Welling (2016), and Z2CNN, its
plain baseline with the same layout.

Layout (public code tscohen/gconv_experiments, ``MNIST_ROT/models/P4CNN.py`` / ``Z2CNN.py``):

    P4CNN: P4Lift(in, 10, 3) - 5 x P4Conv(10, 10, 3), each of the six + BN + ReLU,
           2x2 max-pool after layer 2 - P4Conv(10, num_classes, 4) - max over rotations
           and space -> logits.
    Z2CNN: the same with ``nn.Conv2d``, 20 channels (in -> 20, 20 -> 20, 20 -> num_classes
           4x4), BatchNorm2d, max over space.

Valid (unpadded) convs. On 1x28x28: 28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> 6 -> 4 ->
final 4x4 -> 1; 28 is the smallest image. P4CNN: 24,680 parameters, Z2CNN: 21,750. On
larger images the final map is larger than 1x1 and the global spatial max still gives logits.

P4CNN's logits are exactly invariant under quarter turns of the input (``torch.rot90``),
in train and eval mode, whenever the pre-pool side (image_size - 4) is even, e.g. 28 or 32;
on odd sides the floor of the 2x2 pool drops an edge a rotation moves, and invariance is
only approximate.

As the public code says: the layer list, kernel sizes, widths, conv bias, BN (chainer
``BatchNormalization(out_channels)`` right after each conv) then ReLU, the pool after layer 2,
the top conv without BN/ReLU and the max readout; P4CNN's dropout is commented out there.
Reconstruction / departures:
* P4 BN statistics shared over the rotation axis (our reading of chainer's BN on the
  (N, C, 4, H, W) map, and what equivariance needs): :class:`P4BatchNorm`.
* No dropout in Z2CNN either (the public Z2CNN has dropout 0.3 after layers 1, 3, 4, 5, 6):
  the two models differ only in the conv type and width.
* PyTorch's floor pooling (chainer's ``cover_all=True`` is a ceil; equal on even sides).
* Init: ``nn.Conv2d``'s default, with the P4 fan-in for P4 layers (see ``p4conv``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.models.normalize import Normalize
from robusthp.models.p4conv import P4BatchNorm, P4Conv, P4Lift, p4_max_pool2d, rotation_max

KERNEL = 3  # the six conv+BN+ReLU layers, valid (no padding)
TOP_KERNEL = 4  # the final conv to num_classes
LAYERS = 6  # conv+BN+ReLU layers
POOL_AFTER = 2  # a 2x2 max-pool after this layer
P4_WIDTH = 10
Z2_WIDTH = 20  # ~ the same parameter count as P4CNN's 10 (x4 rotations)


def feature_side(image_size: int) -> int:
    """Side of the final (logit) map; < 1 means the image is too small."""
    side = image_size
    for layer in range(1, LAYERS + 1):
        side -= KERNEL - 1
        if layer == POOL_AFTER:
            side //= 2  # 2x2 max-pool, stride 2, floor
    return side - (TOP_KERNEL - 1)


def _check_size(name: str, image_size: int) -> None:
    if feature_side(image_size) < 1:
        smallest = next(s for s in itertools.count(1) if feature_side(s) >= 1)
        raise ValueError(f"{name} needs image_size >= {smallest}; got {image_size}")


class P4CNN(nn.Module):
    """Seven P4 group convs (a lifting one first), BN + ReLU, max over rotations and space.

    Input: float (N, in_channels, image_size, image_size) pixels in [0, 1].
    Output: logits (N, num_classes), invariant to ``torch.rot90`` of the input.
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
        _check_size("p4cnn", image_size)
        w = P4_WIDTH
        self.num_classes = num_classes  # the logits come from a conv, not an nn.Linear
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.convs = nn.ModuleList(
            [P4Lift(in_channels, w, KERNEL)] + [P4Conv(w, w, KERNEL) for _ in range(LAYERS - 1)]
        )
        self.bns = nn.ModuleList([P4BatchNorm(w) for _ in range(LAYERS)])
        self.top = P4Conv(w, num_classes, TOP_KERNEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, 28, 28) on MNIST
        for layer, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True), start=1):
            x = F.relu(bn(conv(x)), inplace=True)  # (N, 10, 4, 26, 26), (N, 10, 4, 24, 24), ...
            if layer == POOL_AFTER:
                x = p4_max_pool2d(x, 2)  # (N, 10, 4, 12, 12): spatial only
        x = self.top(x)  # (N, num_classes, 4, 1, 1) on 28x28
        return rotation_max(x).amax(dim=(-2, -1))  # (N, num_classes)


class Z2CNN(nn.Module):
    """P4CNN's layout with plain 3x3 convs, 20 channels, BatchNorm2d; max over space.

    Input: float (N, in_channels, image_size, image_size) pixels in [0, 1].
    Output: logits (N, num_classes); not rotation invariant.
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
        _check_size("z2cnn", image_size)
        w = Z2_WIDTH
        self.num_classes = num_classes  # the logits come from a conv, not an nn.Linear
        self.normalize = Normalize(mean, std, image_size=image_size)
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels, w, KERNEL)] + [nn.Conv2d(w, w, KERNEL) for _ in range(LAYERS - 1)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(w) for _ in range(LAYERS)])
        self.top = nn.Conv2d(w, num_classes, TOP_KERNEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (N, C, 28, 28) on MNIST
        for layer, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True), start=1):
            x = F.relu(bn(conv(x)), inplace=True)  # (N, 20, 26, 26), (N, 20, 24, 24), ...
            if layer == POOL_AFTER:
                x = F.max_pool2d(x, 2)  # (N, 20, 12, 12)
        x = self.top(x)  # (N, num_classes, 1, 1) on 28x28
        return x.amax(dim=(-2, -1))  # (N, num_classes)
