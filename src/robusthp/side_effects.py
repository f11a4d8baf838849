"""Context managers that leave the caller's model and autograd state as they found them.

Attacks and the Hessian need eval mode and gradients; the caller may be in train
mode, under ``torch.no_grad`` or under Lightning's ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Enable autograd even inside ``torch.inference_mode`` or ``torch.no_grad``.

    Tensors created before entering (e.g. a test batch) may be inference tensors:
    clone them inside this block before they enter a graph.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def preserved_grads(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``.grad`` (tensor or None) on exit."""
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


@contextlib.contextmanager
def fp32() -> Iterator[None]:
    """Disable any surrounding autocast (attacks and curvature run in full precision)."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def detached_copy(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor with the same values; call under ``gradients_on``."""
    return t.detach().clone()
