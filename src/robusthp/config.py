"""Hydra config -> validated plain settings objects (the one-way flow into Lightning).

Each field of ``robusthp.settings`` names its config key; this module reads those keys and
lets the settings classes check them. Any bad value raises ``ConfigError`` with one line
naming it and what is allowed; ``robusthp.run`` prints that line and exits non-zero.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robusthp.catalog import MODELS
from robusthp.settings import (
    AdversarialSettings,
    DataSettings,
    FunctionSettings,
    HessianSettings,
    InvarianceSettings,
    PerturbationSettings,
    RunSettings,
    TrainSettings,
    UniversalSettings,
    resolve_sgd,
)

_ABSENT = object()


class ConfigError(ValueError):
    """A user-facing configuration mistake (one line, no traceback)."""


def settings_from_config(cfg: DictConfig) -> RunSettings:
    """Validate the composed config and build :class:`RunSettings` from it."""
    try:
        return _settings(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # the checks of the settings classes and factories
        raise ConfigError(str(err)) from None


def _read(cfg: DictConfig, section: type) -> Any:
    """``section`` built from the config keys its fields declare."""
    values = {}
    for f in fields(section):
        key = f.metadata.get("key")
        value = OmegaConf.select(cfg, key, default=_ABSENT) if key else _ABSENT
        if value is not _ABSENT:  # an absent key keeps the field's default
            values[f.name] = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    return section(**values)


def _optional(cfg: DictConfig, section: type) -> Any:
    """An evaluation section; a disabled one is not read (its other keys may be anything)."""
    enabled = OmegaConf.select(cfg, section.__dataclass_fields__["enabled"].metadata["key"])
    return section(enabled=False) if enabled is False else _read(cfg, section)


def _settings(cfg: DictConfig) -> RunSettings:
    data, train = _read(cfg, DataSettings), _read(cfg, TrainSettings)
    model = str(cfg.model.name)
    _check_model(model)
    regime = dict(OmegaConf.to_container(cfg.regime, resolve=True))
    sgd = resolve_sgd(str(regime.pop("name")), batch_size=data.batch_size,
                      momentum=cfg.get("momentum"), dataset=data.dataset, epochs=train.epochs,
                      **regime)
    kwargs = cfg.model.get("kwargs")
    return RunSettings(
        data=data, model=model, sgd=sgd, train=train,
        adversarial=_optional(cfg, AdversarialSettings), hessian=_optional(cfg, HessianSettings),
        perturbation=_optional(cfg, PerturbationSettings), function=_optional(cfg, FunctionSettings),
        invariance=_optional(cfg, InvarianceSettings), universal=_optional(cfg, UniversalSettings),
        model_kwargs={} if kwargs is None else dict(OmegaConf.to_container(kwargs, resolve=True)),
    )


def _check_model(name: str) -> None:
    MODELS.lookup(name)  # the catalog's (robusthp.models.register_model adds users' own)
