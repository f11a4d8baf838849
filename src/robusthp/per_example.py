"""Per-example parameter gradients in chunks (``torch.func``: vmap of grad), pure torch.

ENGM (``robusthp.engm``) needs each example's gradient norm and the gradient statistics
(``robusthp.gradient_stats``) need their mean and spread; neither needs all N gradients at
once, so :func:`per_example_grad_chunks` yields them ``chunk_size`` examples at a time, each
chunk one ``(n, P)`` matrix (P = the number of trainable parameters, in
``model.parameters()`` order): memory is ``chunk_size x P`` floats, not ``N x P``.

The model runs in eval mode (each submodule's flag is restored): vmap cannot update
BatchNorm's running statistics, and in train mode an example's BatchNorm output would
depend on the rest of its batch, so its "own" gradient would not be defined. With eval
mode, BatchNorm uses its running statistics and each g_i is the gradient of example i's
loss alone. Buffers are constants; parameters with ``requires_grad=False`` are left out.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from robusthp.side_effects import eval_mode, fp32, gradients_on

DEFAULT_CHUNK = 64  # examples per vmap call: 64 x P floats (StdCNN: ~0.8 GB at P = 3.3M)


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that get gradients, by name (``named_parameters`` order)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def per_example_grad_chunks(model: nn.Module, x: Tensor, y: Tensor,
                            chunk_size: int = DEFAULT_CHUNK) -> Iterator[Tensor]:
    """``(n, P)`` matrices of per-example gradients of the cross-entropy, ``chunk_size``
    examples each (the last may be smaller), in the order of ``x``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    params = {k: v.detach() for k, v in trainable(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    with eval_mode(model), gradients_on(), fp32():
        for start in range(0, len(x), chunk_size):
            xs = x[start:start + chunk_size].detach().clone()
            ys = y[start:start + chunk_size].detach().clone()
            grads = per_example(params, xs, ys)
            yield torch.cat([g.reshape(len(xs), -1) for g in grads.values()], dim=1)


def per_example_grad_norms(model: nn.Module, x: Tensor, y: Tensor,
                           chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """``(N,)`` L2 norms of the per-example gradients ‖∇θ ℓ(x_i, y_i)‖ (eval mode)."""
    norms = [chunk.norm(dim=1) for chunk in per_example_grad_chunks(model, x, y, chunk_size)]
    return torch.cat(norms) if norms else x.new_zeros(0)
