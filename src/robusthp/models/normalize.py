"""The input layer every model starts with: check the pixel tensor, then standardize it.

Normalization lives inside the model, not in the data pipeline, so that attacks
perturb and clip in pixel space ([0, 1], where eps is defined) and the gradient
w.r.t. the input is the gradient w.r.t. pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel.

    Input: float (N, C, H, W) pixels in [0, 1], C == len(mean) and, when
    ``image_size`` is given, H == W == image_size. Output: same shape, standardized.
    The shape is checked on every call (free: no device sync); the [0, 1] range is
    not, since that would need a sync per batch; attacks and data modules own it.
    mean/std are non-persistent buffers: they follow ``.to(device)`` but stay out of
    the state dict, as they are rebuilt from the dataset config.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], image_size: int | None = None
    ) -> None:
        super().__init__()
        mean_t = torch.tensor([float(m) for m in mean])
        std_t = torch.tensor([float(s) for s in std])
        if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"mean and std need one value per channel and the same length; "
                f"got mean={tuple(mean_t.tolist())}, std={tuple(std_t.tolist())}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be > 0 in every channel; got {tuple(std_t.tolist())}")
        self.channels = mean_t.numel()
        self.image_size = image_size
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)  # (1, C, 1, 1)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)  # (1, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return (x - self.mean) / self.std

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected pixels of shape (N, {self.channels}, H, W); got {tuple(x.shape)}"
            )
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            size = self.image_size
            raise ValueError(f"model was built for {size}x{size} images; got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float pixels in [0, 1]; got dtype {x.dtype}")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, image_size={self.image_size}"
