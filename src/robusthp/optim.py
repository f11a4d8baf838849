"""The one optimizer factory: the paper's three SGD regimes (Kamath et al., Sec. 2.1).

=========  ===============================  ==========  =========================
regime     learning rate                    momentum    schedule
=========  ===============================  ==========  =========================
lr         ``lr`` (0.01)                    swept       none
lr_bs      ``lr_bs_ratio * batch_size``     swept       none
benchmark  ``lr`` (0.01)                    fixed 0.9   halved every 5 epochs
=========  ===============================  ==========  =========================

Every SGD setting is explicit: no weight decay, no Nesterov, no dampening (the
paper's plain SGD). The LR/BS ratio becomes a learning rate here and nowhere else.
Later regimes (Adam, RMSProp, ENGM) register in ``REGIMES``. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

PAPER_LR = 0.01
PAPER_LR_BS_RATIO = 0.00015625  # = 0.005 / 32: lr 0.005 at batch 32, 0.64 at 4096
BENCHMARK_MOMENTUM = 0.9
BENCHMARK_HALVE_EVERY_EPOCHS = 5


@dataclass(frozen=True)
class RegimeSpec:
    """How one regime turns (lr, lr_bs_ratio, batch_size, momentum) into SGD settings."""

    name: str
    lr: Callable[[float, float, int], float]  # (lr, lr_bs_ratio, batch_size) -> lr
    fixed_momentum: float | None = None  # a regime that fixes momentum rejects any other value
    halve_every_epochs: int | None = None
    description: str = ""


REGIMES: dict[str, RegimeSpec] = {}


def register_regime(spec: RegimeSpec) -> RegimeSpec:
    if spec.name in REGIMES:
        raise ValueError(f"regime {spec.name!r} is already registered")
    REGIMES[spec.name] = spec
    return spec


register_regime(RegimeSpec("lr", lambda lr, ratio, bs: lr, description="fixed learning rate"))
register_regime(
    RegimeSpec("lr_bs", lambda lr, ratio, bs: ratio * bs, description="fixed lr / batch-size ratio")
)
register_regime(
    RegimeSpec(
        "benchmark",
        lambda lr, ratio, bs: lr,
        fixed_momentum=BENCHMARK_MOMENTUM,
        halve_every_epochs=BENCHMARK_HALVE_EVERY_EPOCHS,
        description="Yao et al. 2018: lr 0.01, momentum 0.9, halved every 5 epochs",
    )
)


@dataclass(frozen=True)
class SGDSettings:
    """Resolved, validated SGD hyperparameters of one run (what results.json records)."""

    regime: str
    lr: float  # the initial, effective learning rate
    momentum: float
    batch_size: int
    halve_every_epochs: int | None = None
    weight_decay: float = 0.0
    nesterov: bool = False
    dampening: float = 0.0

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate used during (0-based) ``epoch``."""
        if self.halve_every_epochs is None:
            return self.lr
        return self.lr * 0.5 ** (epoch // self.halve_every_epochs)


def get_regime(name: str) -> RegimeSpec:
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; choose one of: {', '.join(sorted(REGIMES))}")
    return REGIMES[name]


def resolve_sgd(
    regime: str,
    batch_size: int,
    momentum: float | None = None,
    lr: float = PAPER_LR,
    lr_bs_ratio: float = PAPER_LR_BS_RATIO,
) -> SGDSettings:
    """Validate the knobs and convert them to SGD settings (the one place units change).

    ``momentum=None`` means the regime's own value (0 unless the regime fixes it).
    """
    spec = get_regime(regime)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if momentum is not None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if spec.fixed_momentum is not None:
        if momentum is not None and momentum != spec.fixed_momentum:
            raise ValueError(
                f"regime {regime!r} fixes momentum at {spec.fixed_momentum}; got momentum={momentum!r} "
                f"(drop the override, or use regime=lr / regime=lr_bs to sweep momentum)"
            )
        momentum = spec.fixed_momentum
    for name, value in (("lr", lr), ("lr_bs_ratio", lr_bs_ratio)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return SGDSettings(
        regime=regime,
        lr=float(spec.lr(lr, lr_bs_ratio, batch_size)),
        momentum=float(momentum or 0.0),
        batch_size=batch_size,
        halve_every_epochs=spec.halve_every_epochs,
    )


def build_optimizer(
    params: Iterable[torch.nn.Parameter], sgd: SGDSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """SGD with every setting explicit, plus the regime's per-epoch schedule (or None)."""
    optimizer = torch.optim.SGD(
        params,
        lr=sgd.lr,
        momentum=sgd.momentum,
        dampening=sgd.dampening,
        weight_decay=sgd.weight_decay,
        nesterov=sgd.nesterov,
    )
    scheduler = None
    if sgd.halve_every_epochs is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=sgd.halve_every_epochs, gamma=0.5
        )
    return optimizer, scheduler
