"""What every robusthp callback needs to serve *any* Lightning project.

Users write ``import pytorch_lightning as pl`` or ``import lightning.pytorch as pl``;
the two are distinct copies, and a Trainer only accepts callbacks of its own
namespace (see ../shared/STACK.md). So each public callback is one class that
subclasses a Lightning-free logic mixin *and* every ``Callback`` class that
imports here. Nothing in this module imports Hydra.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

_NAMESPACES = ("pytorch_lightning", "lightning.pytorch")

# When a robusthp callback may run (its ``on=``), and the Lightning hook it runs in.
# "fit_end" is on_train_end: the module is still on its device and gradients are on
# (on_fit_end comes after the teardown moved it to the CPU). "test_end" is
# on_test_epoch_end, under inference mode, which the callbacks turn off for themselves.
STAGES = {"fit_end": "on_train_end", "test_end": "on_test_epoch_end"}


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` class of every installed Lightning namespace."""
    bases = []
    for name in _NAMESPACES:
        try:
            bases.append(importlib.import_module(name).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError("robusthp.callbacks needs pytorch-lightning or lightning installed")
    return tuple(bases)


def log_to_loggers(trainer: Any, metrics: Mapping[str, float]) -> None:
    """Send metrics to every logger of the trainer, on global rank zero only.

    Works in hooks where ``pl_module.log`` is refused (``on_train_end``,
    ``on_fit_end``, ``on_test_end``) as well as elsewhere.
    """
    if not getattr(trainer, "is_global_zero", True):
        return
    clean = {k: float(v) for k, v in metrics.items()}
    for logger in getattr(trainer, "loggers", []) or []:
        logger.log_metrics(clean, step=trainer.global_step)


def default_batch_to_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y, ...)`` tuples/lists, or dicts with ``x``/``y``, ``input``/``target``,
    ``image``/``label`` or ``images``/``labels`` keys."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for kx, ky in (("x", "y"), ("input", "target"), ("image", "label"), ("images", "labels")):
            if kx in batch and ky in batch:
                return batch[kx], batch[ky]
    raise TypeError(
        f"cannot split a batch of type {type(batch).__name__} into (inputs, targets); "
        "pass batch_to_xy=callable(batch) -> (x, y) to the callback"
    )


def take_samples(
    loader: Iterable[Any],
    num_samples: int | None,
    batch_to_xy: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_samples`` (x, y) pairs of ``loader`` as batches (all when None)."""
    batches, seen = [], 0
    for batch in loader:
        x, y = batch_to_xy(batch)
        if num_samples is not None:
            x, y = x[: num_samples - seen], y[: num_samples - seen]
        batches.append((x, y))
        seen += len(y)
        if num_samples is not None and seen >= num_samples:
            break
    if seen == 0:
        raise ValueError("no data to evaluate on: the dataloader yielded no samples")
    return batches


def datamodule_loader(trainer: Any, names: tuple[str, ...]) -> Iterable[Any] | None:
    """The first loader a trainer's datamodule offers among ``names`` (None if none)."""
    dm = getattr(trainer, "datamodule", None)
    for name in names:
        fn = getattr(dm, name, None) if dm is not None else None
        if callable(fn):
            return fn()
    return None


def rebatch(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same samples, in order, in batches of ``batch_size`` (None: as they are)."""
    if batch_size is None:
        return list(batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
