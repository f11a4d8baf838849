"""Hydra config -> validated plain settings objects (the one-way flow into Lightning).

Each field of ``robusthp.settings`` names its config key; this module reads those keys and
lets the settings classes check them. Any bad value raises ``ConfigError`` with one line
naming it and what is allowed; ``robusthp.run`` prints that line and exits non-zero.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robusthp.catalog import DATASETS, MODELS
from robusthp.settings import (
    AdversarialSettings,
    AdvTrainSettings,
    DataSettings,
    FunctionSettings,
    GradStatsSettings,
    HessianSettings,
    InvarianceSettings,
    PerturbationSettings,
    RobustValSettings,
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
    adversarial = _optional(cfg, AdversarialSettings)
    adv_train = _adv_train(cfg, adversarial)
    perturbation = _optional(cfg, PerturbationSettings)
    size = DATASETS[data.dataset].image_size
    if perturbation.enabled and perturbation.bands > size * size:  # one DCT coefficient per band at most
        raise ConfigError(f"eval.perturbation.bands must be at most {size * size} (the DCT "
                          f"coefficients of a {size}x{size} {data.dataset} image), got {perturbation.bands}")
    if adv_train.enabled and adv_train.last_epochs is not None and adv_train.last_epochs > train.epochs:
        raise ConfigError(f"adv_train.last_epochs must be at most epochs={train.epochs}, "
                          f"got {adv_train.last_epochs}")
    return RunSettings(
        data=data, model=model, sgd=sgd, train=train,
        adversarial=adversarial, hessian=_optional(cfg, HessianSettings),
        perturbation=perturbation, function=_optional(cfg, FunctionSettings),
        invariance=_optional(cfg, InvarianceSettings), universal=_optional(cfg, UniversalSettings),
        adv_train=adv_train, grad_stats=_optional(cfg, GradStatsSettings),
        robust_val=_robust_val(cfg, adv_train, adversarial),
        model_kwargs={} if kwargs is None else dict(OmegaConf.to_container(kwargs, resolve=True)),
    )


def _primary_budget(cfg: DictConfig, adversarial: AdversarialSettings) -> tuple[float, str]:
    """The evaluation's primary (eps, reading): what adversarial training defaults to."""
    if not adversarial.enabled:  # its keys were not read: take them from the config
        adversarial = _read(cfg, AdversarialSettings)
    return adversarial.eps[0], adversarial.eps_space[0]


def _adv_train(cfg: DictConfig, adversarial: AdversarialSettings) -> AdvTrainSettings:
    """``adv_train.*`` with its ``None`` keys resolved (natural training: not read)."""
    method = OmegaConf.select(cfg, "adv_train.method", default="none")
    if method == "none":
        return AdvTrainSettings()
    return _read(cfg, AdvTrainSettings).resolved(*_primary_budget(cfg, adversarial))


def _robust_val(cfg: DictConfig, adv_train: AdvTrainSettings,
                adversarial: AdversarialSettings) -> RobustValSettings:
    """``eval.robust_val.*``; a ``None`` eps / reading is the training attack's (or, for
    natural training, the evaluation's primary one)."""
    section = _optional(cfg, RobustValSettings)
    if not section.enabled:
        return section
    eps, space = (adv_train.eps, adv_train.eps_space) if adv_train.enabled else \
        _primary_budget(cfg, adversarial)
    return RobustValSettings(**{**section.__dict__, "eps": section.eps if section.eps is not None else eps,
                                "eps_space": section.eps_space or space})


def _check_model(name: str) -> None:
    MODELS.lookup(name)  # the catalog's (robusthp.models.register_model adds users' own)
