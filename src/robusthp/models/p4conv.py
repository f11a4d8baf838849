"""P4 group convolutions (Cohen & Welling 2016, "Group equivariant convolutional networks").

P4 is the group of translations and quarter turns of the square grid. A P4 feature map
has shape (N, C, 4, H, W): dim 2, the *rotation axis*, indexes the four rotations
r = 0, 1, 2, 3 of the filter that produced it. Plain torch, no dependency.

Conventions, exactly:

* ``rot90(t)`` is ``torch.rot90(t, 1, dims=(-2, -1))``: a quarter turn counter-clockwise
  as the array is printed (row 0 on top): ``[[a, b], [c, d]] -> [[b, d], [a, c]]``.
* On a P4 map the quarter turn acts as ``T(y) = torch.roll(rot90(y), 1, dims=2)``:
  rotate every plane and shift the rotation axis by one, ``T(y)[:, :, r] = rot90(y[:, :, r - 1])``
  (indices mod 4). On a plain image, ``T(x) = rot90(x)``.
* Equivariance law, for :class:`P4Lift` (image in) and :class:`P4Conv` (P4 map in),
  any weights and bias, valid convolution of any size and kernel (odd or even):

      f(T(x)) == T(f(x)),   e.g.  lift(rot90(x)) == roll(rot90(lift(x)), 1, dims=2).

  Applying it k times: ``f(rot90(x, k)) == roll(rot90(f(x), k), k, dims=2)``.
* :class:`P4BatchNorm` (statistics and affine per channel, shared over the rotation axis and
  space), pointwise nonlinearities, :func:`p4_max_pool2d` (spatial only, on an even side)
  commute with ``T``; :func:`rotation_max` of a P4 map, then a max over space, is invariant.

Like ``nn.Conv2d`` these are cross-correlations. Output rotation r uses the filter
transformed by r quarter turns: lifting, ``rot90(w, r)``; group conv,
``rot90(roll(w, r, dims=2), r)`` (rotate the planes and cycle the filter's own rotation
axis, the action of P4 on a function on P4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ROTATIONS = 4  # the order of the rotation part of P4
SPATIAL = (-2, -1)  # the dims torch.rot90 turns


def rotation_max(y: torch.Tensor) -> torch.Tensor:
    """Max over the rotation axis: (N, C, 4, H, W) -> (N, C, H, W). Turns ``T`` into a plain
    ``rot90`` of the planes (a rotation-equivariant, rotation-index-free map)."""
    return y.amax(dim=2)


def p4_max_pool2d(y: torch.Tensor, kernel_size: int = 2) -> torch.Tensor:
    """Spatial max-pool of a P4 map, each rotation plane alone (stride = kernel).

    Pooling never mixes the rotation axis, so it commutes with ``T`` exactly when the side is
    a multiple of the kernel (e.g. even for 2x2); otherwise the floor drops the last rows /
    columns, an edge that a rotation moves, and equivariance holds only away from it.
    """
    n, c, g, h, w = y.shape
    out = F.max_pool2d(y.reshape(n, c * g, h, w), kernel_size)
    return out.reshape(n, c, g, *out.shape[-2:])


def _reset(weight: nn.Parameter, bias: nn.Parameter | None) -> None:
    """``nn.Conv2d``'s default init with the true fan-in: kaiming-uniform(a=sqrt 5) on the
    weight, so the bound is 1/sqrt(fan_in), fan_in = prod(weight.shape[1:]) (Cin*k*k for the
    lift, Cin*4*k*k for a group conv, which sums over 4 input rotations); bias the same.
    Keeps P4 layers on the same scale as the plain convs of the Z2 baseline."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = math.prod(weight.shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    # one bias per output channel, repeated over the 4 rotations: a per-rotation bias
    # would not commute with the roll of the rotation axis
    return None if bias is None else bias.repeat_interleave(ROTATIONS)


class P4Lift(nn.Module):
    """Lifting conv Z2 -> P4: image (N, Cin, H, W) -> (N, Cout, 4, H-k+1, W-k+1), valid.

    ``out[:, o, r] = conv2d(x, rot90(w[o], r)) + b[o]``, the 4 rotated copies of each
    filter stacked into one ``F.conv2d`` (4*Cout output channels). Weight (Cout, Cin, k, k).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _reset(self.weight, self.bias)

    def filter_bank(self) -> torch.Tensor:
        """(Cout*4, Cin, k, k): row o*4 + r is filter o turned r quarter turns."""
        w = self.weight
        bank = torch.stack([torch.rot90(w, r, dims=SPATIAL) for r in range(ROTATIONS)], dim=1)
        return bank.reshape(self.out_channels * ROTATIONS, self.in_channels, *w.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.filter_bank(), _bias(self.bias))  # (N, Cout*4, H', W')
        return out.reshape(x.shape[0], self.out_channels, ROTATIONS, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}")


class P4Conv(nn.Module):
    """Group conv P4 -> P4: (N, Cin, 4, H, W) -> (N, Cout, 4, H-k+1, W-k+1), valid.

    ``out[:, o, r] = sum_{i, s} conv2d(x[:, i, s], rot90(w[o, i, (s - r) % 4], r)) + b[o]``:
    filter of output rotation r is ``rot90(roll(w, r, dims=2), r)``. All 4 output rotations
    stacked into one (Cout*4, Cin*4, k, k) bank and one ``F.conv2d`` on the input seen as
    (N, Cin*4, H, W). Weight (Cout, Cin, 4, k, k).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, ROTATIONS, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _reset(self.weight, self.bias)

    def filter_bank(self) -> torch.Tensor:
        """(Cout*4, Cin*4, k, k): row o*4 + r, column i*4 + s is ``rot90(w[o, i, (s-r)%4], r)``."""
        w = self.weight
        bank = torch.stack(
            [torch.rot90(torch.roll(w, r, dims=2), r, dims=SPATIAL) for r in range(ROTATIONS)],
            dim=1,
        )  # (Cout, 4, Cin, 4, k, k)
        return bank.reshape(self.out_channels * ROTATIONS, self.in_channels * ROTATIONS, *w.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1:3] != (self.in_channels, ROTATIONS):
            raise ValueError(
                f"P4Conv expects a P4 map (N, {self.in_channels}, {ROTATIONS}, H, W); got {tuple(x.shape)}"
            )
        n, c, g, h, w = x.shape
        out = F.conv2d(x.reshape(n, c * g, h, w), self.filter_bank(), _bias(self.bias))
        return out.reshape(n, self.out_channels, ROTATIONS, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}")


class P4BatchNorm(nn.BatchNorm3d):
    """BatchNorm of a P4 map (N, C, 4, H, W), one mean/var/weight/bias per channel, shared over
    the rotation axis and space (``BatchNorm3d`` with the rotation axis as depth). Separate
    statistics per rotation would break equivariance. 2*C parameters."""

    def __init__(self, channels: int, **kwargs: object) -> None:
        super().__init__(channels, **kwargs)
