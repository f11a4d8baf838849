"""Rotating batches of images on their device: the rotation study's one rotation.

Kamath, Deshpande, Subrahmanyam (arXiv 2002.11318) train on images rotated by a uniform
random angle in [-Θ, Θ] and measure accuracy on test images rotated the same way. Their
code rotates PIL images: nearest neighbour, the same canvas, black fill. ``rotate`` does
that to a whole batch at once (one ``affine_grid`` + ``grid_sample``), each image by its
own angle, so augmentation and the invariance profile cost one gather, not a PIL call
per image.

Conventions: angles in degrees, positive = counter-clockwise as displayed (row 0 at the
top), as PIL's ``Image.rotate`` and torchvision's ``rotate``; the centre of rotation is
the image centre; pixels from outside the canvas are 0 (black). ``rotate(x, 90)`` equals
``torch.rot90(x, 1, dims=(-2, -1))`` on square images (tests/test_rotation.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("nearest", "bilinear")


def rotate(x: Tensor, degrees: float | Tensor, mode: str = "nearest") -> Tensor:
    """``x`` (N, C, H, W) float, each image rotated by its angle in ``degrees`` (a number,
    or a (N,) tensor of per-image angles). ``mode``: "nearest" (the authors') or
    "bilinear" (smooth in the angle: for tangents). Same shape, dtype and device."""
    if mode not in MODES:
        raise ValueError(f"rotate: mode must be one of {', '.join(MODES)}; got {mode!r}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"rotate: x must be a float (N, C, H, W) batch; got {x.dtype} {tuple(x.shape)}")
    n, _, h, w = x.shape
    angles = torch.as_tensor(degrees, dtype=x.dtype, device=x.device)
    if angles.dim() == 0:
        angles = angles.expand(n)
    if angles.shape != (n,):
        raise ValueError(f"rotate: degrees must be a number or one angle per image ({n}); "
                         f"got shape {tuple(angles.shape)}")
    rad = torch.deg2rad(angles)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # output pixel (x, y) in [-1, 1] coordinates (y down) samples the input at R(a) (x, y),
    # corrected for the aspect ratio so that a non-square image rotates rigidly
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = sin * (w / h), cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def uniform_angles(n: int, max_degrees: float, generator: torch.Generator | None,
                   device: torch.device | str | None = None) -> Tensor:
    """``n`` angles drawn uniformly from [-max_degrees, max_degrees] (float32)."""
    u = torch.rand(n, generator=generator, device=device)
    return (2 * u - 1) * float(max_degrees)


def random_rotation(x: Tensor, max_degrees: float, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``x`` rotated by its own uniform random angle in [-max_degrees,
    max_degrees], nearest neighbour, black fill (the study's augmentation). 0: ``x`` itself."""
    if max_degrees == 0:
        return x
    return rotate(x, uniform_angles(len(x), max_degrees, generator, x.device).to(x.dtype))


def rotation_tangents(x: Tensor, delta_degrees: float = 2.0) -> Tensor:
    """The central difference ``(R_δ x - R_-δ x) / 2δ`` (δ in radians), per image: the
    direction a small rotation moves each image in (bilinear, so it is smooth in δ).
    Used for universal invariant directions (a reconstruction: see
    ``robusthp.attacks.universal``)."""
    if not delta_degrees > 0:
        raise ValueError(f"rotation_tangents: delta_degrees must be > 0; got {delta_degrees!r}")
    plus = rotate(x, delta_degrees, mode="bilinear")
    minus = rotate(x, -delta_degrees, mode="bilinear")
    return (plus - minus) / (2 * math.radians(delta_degrees))
