"""Random perturbations: Gaussian pixel noise and DCT band-limited noise (Ma et al. 2023).

Ma, Pan, Farahmand, 'Understanding the robustness difference between SGD and adaptive
gradient methods' (arXiv 2308.06703; code averyma/opt-robust, averyma/freq-robust)
evaluate accuracy under these besides attacks. Each function has an attack's call shape,
``(model, x, y, **settings) -> x_perturbed``, so it goes through the same registry
(``robusthp.attacks.ATTACKS``) and the same ``robust_accuracy`` loop; ``model`` is
unused (nothing here looks at it) and ``y`` is only checked.

Contract: ``x`` ``(N, ...)`` floats in ``[0, 1]`` (``(N, C, n, n)`` square images for
``band_noise``), ``y`` ``(N,)`` integer labels; the result has ``x``'s shape, dtype and
device and is detached. The draws come from ``generator`` (a ``torch.Generator``) or, when
None, a private generator seeded 0 on ``x``'s device: never the global RNG. The result
depends on the batching (a batch of 32 does not draw the same numbers as two of 16).

- ``gaussian_noise``: ``clip_[0,1](x + N(0, var))`` per pixel (the study's; its MNIST
  variances 0.01, 0.05, 0.1, CIFAR-10 0.001, 0.005, 0.007).
- ``band_noise``: per channel, Gaussian noise ``N(0, var)`` (the study: 0.01) on the
  orthonormal 2-D DCT-II coefficients of one radial band only, transformed back and
  added **unclamped** (the study's convention: clipping would leak energy into other
  bands, so the result may leave ``[0, 1]``).
- ``dct_matrix``: the orthonormal DCT-II matrix ``C`` (computed here; the authors load
  theirs from a file), with ``X_hat = C^T X C`` the 2-D DCT of an ``(n, n)`` image and
  ``X = C X_hat C^T`` its inverse.
- ``radial_bands``: each coefficient ``(u, v)``'s band. Reconstruction (the study gives
  only "10 bands of ~102 coefficients" for 32x32): the ``n^2`` coefficients are sorted by
  their squared radius ``u^2 + v^2`` from the DC corner with a stable sort (ties in
  row-major order, so ``(0, 1)`` comes before ``(1, 0)``) and cut into ``bands`` runs of
  equal count; when ``bands`` does not divide ``n^2``, the first ``n^2 mod bands`` bands
  (the lowest frequencies) hold one more. 32x32, 10 bands: 4 of 103 then 6 of 102;
  28x28, 10 bands: 4 of 79 then 6 of 78. Band 0 holds the DC coefficient.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from robusthp.attacks.linf import _check_xy
from robusthp.side_effects import fp32


def gaussian_noise(
    model: nn.Module, x: Tensor, y: Tensor, var: float, generator: torch.Generator | None = None
) -> Tensor:
    """Gaussian pixel noise: ``clip_[0,1](x + sqrt(var) * z)``, ``z ~ N(0, 1)`` per pixel.

    Arguments:
        model (nn.Module): unused (the registry's call shape).
        x (Tensor): ``(N, ...)`` floats in ``[0, 1]``.  y (Tensor): ``(N,)`` labels.
        var (float): the noise variance (>= 0), in pixel units squared.
        generator (torch.Generator | None): the source of ``z``; default a private
            generator seeded 0 on ``x``'s device. The global RNG is never used.

    Shape:
        - output: ``x``'s shape, dtype and device; range ``[0, 1]``.

    Example::
        >>> x_noisy = gaussian_noise(model, x, y, var=0.05, generator=torch.Generator().manual_seed(0))
    """
    _check_var(var, "gaussian_noise")
    _check_xy(x, y)
    with torch.no_grad():
        z = _standard_normal(x, generator)
        return (x.detach() + math.sqrt(var) * z).clamp_(0.0, 1.0)


def band_noise(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    band: int,
    bands: int = 10,
    var: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DCT band-limited Gaussian noise, added unclamped (Ma et al. 2023's convention).

    Per image and channel: ``x + C (M * sqrt(var) Z) C^T``, with ``Z ~ N(0, 1)``
    ``(n, n)``, ``M`` the 0/1 mask of band ``band`` of ``radial_bands(n, bands)`` and
    ``C = dct_matrix(n)``: noise of variance ``var`` on that band's DCT coefficients and
    zero on all others. ``C`` and the masks are cached per size, device and dtype.

    Arguments:
        model (nn.Module): unused (the registry's call shape).
        x (Tensor): ``(N, C, n, n)`` floats in ``[0, 1]`` (square images).
        y (Tensor): ``(N,)`` labels.
        band (int): which band, ``0 <= band < bands`` (0: the lowest frequencies).
        bands (int): how many equal-count radial bands (default 10, the study's).
        var (float): variance of each kept coefficient (>= 0; default 0.01, the study's).
        generator (torch.Generator | None): the source of ``Z``; default a private
            generator seeded 0 on ``x``'s device. The global RNG is never used.

    Shape:
        - output: ``(N, C, n, n)``, ``x``'s dtype and device; may leave ``[0, 1]``.

    Example::
        >>> x_noisy = band_noise(model, x, y, band=9)   # the highest of 10 bands
    """
    _check_xy(x, y)
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"band_noise: x must be (N, C, n, n) square images; got shape {tuple(x.shape)}")
    n = x.shape[-1]
    _check_bands(n, bands, "band_noise")
    if isinstance(band, bool) or not isinstance(band, int) or not 0 <= band < bands:
        raise ValueError(f"band_noise: band must be an integer in [0, {bands}); got {band!r}")
    _check_var(var, "band_noise")
    with torch.no_grad(), fp32():
        dct = _cached_dct(n, x.device, x.dtype)  # (n, n)
        mask = _cached_band_mask(n, bands, band, x.device, x.dtype)  # (n, n), 0/1
        coeffs = _standard_normal(x, generator).mul_(mask).mul_(math.sqrt(var))  # (N, C, n, n)
        return x.detach() + dct @ coeffs @ dct.T  # C X_hat C^T per image and channel


def dct_matrix(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(n, n)`` orthonormal DCT-II matrix ``C`` (``C^T C = I``), computed in float64.

    ``C[i, j] = sqrt(1/n) cos(pi (2i+1) j / 2n)`` for ``j = 0``, ``sqrt(2/n) cos(...)``
    otherwise: row ``i`` is the pixel, column ``j`` the frequency, so ``C^T x`` is the 1-D
    DCT of a signal ``x`` (``scipy.fft.dct(x, norm="ortho")``), ``C^T X C`` the 2-D DCT of
    an image ``X`` (``scipy.fft.dctn(X, norm="ortho")``) and ``C X_hat C^T`` its inverse.
    """
    _check_size(n, "dct_matrix")
    i = torch.arange(n, dtype=torch.float64).view(n, 1)  # pixel
    j = torch.arange(n, dtype=torch.float64).view(1, n)  # frequency
    c = torch.cos(math.pi * (2 * i + 1) * j / (2 * n)) * math.sqrt(2.0 / n)
    c[:, 0] = math.sqrt(1.0 / n)  # cos(0) = 1
    return c.to(device=device, dtype=dtype)


def radial_bands(n: int, bands: int, device: torch.device | str | None = None) -> Tensor:
    """``(n, n)`` int64: the band (``0 .. bands-1``) of each DCT coefficient ``(u, v)``.

    Equal-count bands by radius from the DC corner: the coefficients sorted by
    ``u^2 + v^2`` (a stable sort, ties in row-major order) and cut into ``bands`` runs,
    the first ``n^2 mod bands`` of them one longer (see the module docstring).
    """
    _check_bands(n, bands, "radial_bands")
    u = torch.arange(n).view(n, 1)
    v = torch.arange(n).view(1, n)
    radius2 = (u * u + v * v).flatten()  # exact integers: ties are real ties
    order = torch.sort(radius2, stable=True).indices  # row-major flat indices, by radius
    q, rem = divmod(n * n, bands)
    sizes = torch.tensor([q + 1] * rem + [q] * (bands - rem))
    labels = torch.empty(n * n, dtype=torch.int64)
    labels[order] = torch.repeat_interleave(torch.arange(bands), sizes)
    return labels.view(n, n).to(device)


# ---------------------------------------------------------------- helpers


def _standard_normal(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, 1)`` draws shaped like ``x`` (its dtype, on its device), never from the
    global RNG: from ``generator`` (on its own device) or a private one seeded 0."""
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    z = torch.empty(x.shape, dtype=x.dtype, device=generator.device).normal_(generator=generator)
    return z.to(x.device)


@functools.lru_cache(maxsize=32)
def _cached_dct(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False):  # a normal tensor, usable in and out of inference mode
        return dct_matrix(n, device=device, dtype=dtype)


@functools.lru_cache(maxsize=256)
def _cached_band_mask(n: int, bands: int, band: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False):
        return (radial_bands(n, bands, device=device) == band).to(dtype)


def _check_var(var: float, owner: str) -> None:
    if isinstance(var, bool) or not isinstance(var, (int, float)) or not math.isfinite(var) or var < 0:
        raise ValueError(f"{owner}: var (the noise variance, pixel units squared) must be a finite "
                         f"number >= 0; got {var!r}")


def _check_size(n: int, owner: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{owner}: n (the image side) must be an integer >= 1; got {n!r}")


def _check_bands(n: int, bands: int, owner: str) -> None:
    _check_size(n, owner)
    if isinstance(bands, bool) or not isinstance(bands, int) or not 1 <= bands <= n * n:
        raise ValueError(f"{owner}: bands must be an integer in [1, {n * n}] (n^2 coefficients); got {bands!r}")
