"""The one optimizer factory: resolved optimizer settings -> torch optimizer and schedule.

The regimes themselves (the paper's three SGD regimes, Kamath et al. Sec. 2.1, Ma et
al. 2023's SGD, Adam and RMSProp, and ENGM, Dabouei et al. 2022) are rows of
``robusthp.catalog.REGIMES``; ``robusthp.settings.resolve_sgd`` turns a regime's keys and
the batch size into :class:`SGDSettings`. This module only builds torch objects from them.

ENGM's optimizer is plain ``torch.optim.SGD`` (heavy-ball momentum, dampening 0, weight
decay outside the normalization): its per-example normalization lives in the loss, which
the training step must weight with ``robusthp.engm.ExampleWeights`` and
``robusthp.engm.reweighted_loss`` (:func:`example_weights` builds the former from the
settings), so that the gradient SGD sees is ENGM's (1/m) Σ g_i / max(‖g_i‖, γ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from robusthp.catalog import REGIMES, RegimeSpec, get_regime, register_regime
from robusthp.engm import ExampleWeights
from robusthp.settings import SGDSettings, resolve_sgd

__all__ = ["REGIMES", "RegimeSpec", "SGDSettings", "build_optimizer", "example_weights",
           "get_regime", "register_regime", "resolve_sgd"]


def build_optimizer(
    params: Iterable[torch.nn.Parameter], sgd: SGDSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The regime's optimizer with every setting explicit, plus its per-epoch schedule (or
    None): the Benchmark's halving, or the lr drops at fixed epochs (Ma et al.'s SGD)."""
    optimizer = _OPTIMIZERS[sgd.optimizer](list(params), sgd)
    scheduler = None
    if sgd.halve_every_epochs is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=sgd.halve_every_epochs, gamma=0.5
        )
    elif sgd.lr_drop_epochs:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(sgd.lr_drop_epochs), gamma=sgd.lr_drop_factor
        )
    return optimizer, scheduler


def _sgd(params: list, s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, dampening=s.dampening,
                           weight_decay=s.weight_decay, nesterov=s.nesterov)


def _engm(params: list, s: SGDSettings) -> torch.optim.Optimizer:
    """ENGM's update v <- μv + ĝ, θ <- θ - ηv: torch SGD on the reweighted loss's gradient."""
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, dampening=0.0,
                           weight_decay=s.weight_decay, nesterov=False)


def example_weights(sgd: SGDSettings) -> ExampleWeights | None:
    """The ENGM regime's per-example weighting (None for every other regime)."""
    if sgd.optimizer != "engm":
        return None
    return ExampleWeights(sgd.engm_gamma, mode=sgd.engm_mode, refit_every=sgd.engm_refit_every)


def _adam(params: list, s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=s.lr, betas=s.betas, eps=s.eps,
                            weight_decay=s.weight_decay, amsgrad=False)


def _rmsprop(params: list, s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=s.lr, alpha=s.alpha, eps=s.eps,
                               weight_decay=s.weight_decay, momentum=0.0, centered=False)


# one builder per robusthp.catalog.OPTIMIZERS entry
_OPTIMIZERS: dict[str, Callable[[list, SGDSettings], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "rmsprop": _rmsprop, "engm": _engm,
}
