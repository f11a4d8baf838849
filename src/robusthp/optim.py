"""The one optimizer factory: resolved SGD settings -> torch optimizer and schedule.

The regimes themselves (the paper's three, Kamath et al. Sec. 2.1) are rows of
``robusthp.catalog.REGIMES``; ``robusthp.settings.resolve_sgd`` turns a regime's keys and
the batch size into :class:`SGDSettings`. This module only builds torch objects from them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from robusthp.catalog import REGIMES, RegimeSpec, get_regime, register_regime
from robusthp.settings import SGDSettings, resolve_sgd

__all__ = ["REGIMES", "RegimeSpec", "SGDSettings", "build_optimizer", "get_regime",
           "register_regime", "resolve_sgd"]


def build_optimizer(
    params: Iterable[torch.nn.Parameter], sgd: SGDSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """SGD with every setting explicit, plus the regime's per-epoch schedule (or None)."""
    optimizer = torch.optim.SGD(
        params, lr=sgd.lr, momentum=sgd.momentum, dampening=sgd.dampening,
        weight_decay=sgd.weight_decay, nesterov=sgd.nesterov,
    )
    scheduler = None
    if sgd.halve_every_epochs is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=sgd.halve_every_epochs, gamma=0.5
        )
    return optimizer, scheduler
