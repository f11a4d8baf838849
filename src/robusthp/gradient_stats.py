"""Norms and variances of the training loss's parameter gradients, in pure torch.

The premise of ENGM (Dabouei et al., ECCV 2022, arXiv 2209.01199): adversarial training has
larger gradient norms and variance than natural training, and momentum SGD's convergence
slows with that variance. :func:`gradient_statistics` measures both on fixed mini-batches,
from per-example gradients g_i = ∇θ CE(model(x_i), y_i) (``robusthp.per_example``, chunk
by chunk: memory ``chunk_size x P`` floats, never ``N x P``).

The model runs in eval mode (each submodule's flag restored): per-example gradients need it
(``per_example``'s docstring: in train mode BatchNorm couples the examples of a batch, so
g_i is not defined, and vmap cannot update running statistics), and dropout would make the
statistics noisy. So these are the gradients of the eval-mode loss, not exactly the ones
the optimizer saw in train mode; with neither BatchNorm nor dropout they are the same.

Accumulation is in float64 whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from robusthp.per_example import DEFAULT_CHUNK, per_example_grad_chunks, trainable

STAT_KEYS = ("grad_norm", "grad_example_norm", "grad_mean_norm", "grad_var", "grad_batch_var")


def gradient_statistics(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    chunk_size: int = DEFAULT_CHUNK,
    *,
    progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, float]:
    """Gradient norms and variances of the mean cross-entropy over mini-batches.

    Arguments:
        model: maps inputs to logits; evaluated in eval mode (flags restored). Its ``.grad``
            is never written (``torch.func.grad``).
        batches: ``(x, y)`` mini-batches (the run's batch size: the statistics of a
            mini-batch gradient depend on it); ``x`` ``(m_b, ...)``, ``y`` ``(m_b,)``
            integer classes. Moved to the device of the model's parameters.
        chunk_size: examples per vmap call (memory only; the values do not depend on it).
        progress: called as ``progress(batches_done, total_batches_or_None)`` after each batch.

    Returns floats, with N = Σ m_b examples, B batches, G_b = (1/m_b) Σ_{i in b} g_i,
    ḡ = (1/N) Σ g_i and Ḡ = (1/B) Σ G_b:

    * ``grad_norm``: (1/B) Σ ‖G_b‖, the mean mini-batch gradient norm;
    * ``grad_example_norm``: (1/N) Σ ‖g_i‖;
    * ``grad_mean_norm``: ‖ḡ‖;
    * ``grad_var``: (1/N) Σ ‖g_i - ḡ‖², the trace of the per-example gradient covariance,
      as E‖g‖² - ‖ḡ‖² (clamped at 0 against rounding);
    * ``grad_batch_var``: (1/B) Σ ‖G_b - Ḡ‖², the spread of the mini-batch gradients
      (Welford's update, one P-vector); NaN with a single batch (no spread to measure).
    """
    device = _param_device(model)
    num_params = sum(p.numel() for p in trainable(model).values())
    total = torch.zeros(num_params, dtype=torch.float64, device=device)  # Σ g_i
    batch_mean = torch.zeros_like(total)  # Welford's running mean of the G_b
    sq_sum = norm_sum = batch_norm_sum = batch_spread = 0.0
    count = num_batches = 0
    total_batches = len(batches) if hasattr(batches, "__len__") else None
    for x, y in batches:
        if len(y) == 0:
            raise ValueError("gradient_statistics: a batch has no examples")
        g_batch = torch.zeros_like(total)  # Σ_{i in b} g_i
        for chunk in per_example_grad_chunks(model, x.to(device), y.to(device), chunk_size):
            norms = torch.linalg.vector_norm(chunk, dim=1, dtype=torch.float64)  # (n,)
            sq_sum += float(norms.square().sum())
            norm_sum += float(norms.sum())
            g_batch += chunk.sum(dim=0, dtype=torch.float64)
        total += g_batch
        count += len(y)
        g_batch /= len(y)  # G_b
        num_batches += 1
        batch_norm_sum += float(g_batch.norm())
        delta = g_batch - batch_mean
        batch_mean += delta / num_batches
        batch_spread += float(delta.dot(g_batch - batch_mean))  # Welford: Σ ‖G_b - Ḡ‖²
        if progress is not None:
            progress(num_batches, total_batches)
    if count == 0:
        raise ValueError("gradient_statistics: no batches given")
    mean_norm_sq = float((total / count).square().sum())
    return {
        "grad_norm": batch_norm_sum / num_batches,
        "grad_example_norm": norm_sum / count,
        "grad_mean_norm": math.sqrt(mean_norm_sq),
        "grad_var": max(sq_sum / count - mean_norm_sq, 0.0),
        "grad_batch_var": batch_spread / num_batches if num_batches >= 2 else math.nan,
    }


def _param_device(model: nn.Module) -> torch.device:
    param = next(iter(trainable(model).values()), None)
    if param is None:
        raise ValueError("gradient_statistics: the model has no trainable parameters")
    return param.device
