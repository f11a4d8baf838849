"""Hydra config -> validated plain settings objects (the one-way flow into Lightning).

Every check here raises ``ConfigError`` with one line naming the bad value and
what is allowed; ``robusthp.run`` prints that line and exits non-zero.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from robusthp.data import DataSettings, get_spec
from robusthp.experiment import AdversarialSettings, HessianSettings, RunSettings, TrainSettings
from robusthp.models import MODELS
from robusthp.optim import resolve_sgd


class ConfigError(ValueError):
    """A user-facing configuration mistake (one line, no traceback)."""


def _int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _opt_int(value: Any, name: str, minimum: int = 1) -> int | None:
    return None if value is None else _int(value, name, minimum)


def _eps_tuple(value: Any) -> tuple[float, ...]:
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"eval.adversarial.eps must be a number >= 0 or a list of them, got {v!r}")
        out.append(float(v))
    if not out:
        raise ConfigError("eval.adversarial.eps is empty; give at least one eps")
    return tuple(out)


def settings_from_config(cfg: DictConfig) -> RunSettings:
    """Validate the composed config and build :class:`RunSettings` from it."""
    try:
        return _settings(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # checks inside the settings classes / factories
        raise ConfigError(str(err)) from None


def _settings(cfg: DictConfig) -> RunSettings:
    dataset = str(cfg.dataset.name)
    get_spec(dataset)
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.model.name!r}; choose one of: {', '.join(sorted(MODELS))}")
    batch_size = _int(cfg.batch_size, "batch_size", minimum=1)
    sgd = resolve_sgd(
        str(cfg.regime.name), batch_size=batch_size, momentum=cfg.momentum,
        lr=cfg.regime.lr, lr_bs_ratio=cfg.regime.lr_bs_ratio,
    )
    t, d = cfg.trainer, cfg.data
    devices = _int(t.devices, "trainer.devices", minimum=1)
    if batch_size % devices:
        raise ConfigError(
            f"batch_size {batch_size} does not divide across trainer.devices={devices}; "
            f"the global batch size must be a multiple of the number of devices"
        )
    data = DataSettings(
        dataset=dataset, root=str(d.root), batch_size=batch_size,
        eval_batch_size=_int(d.eval_batch_size, "data.eval_batch_size", 1),
        val_size=_opt_int(d.val_size, "data.val_size", 0), split_seed=_int(d.split_seed, "data.split_seed"),
        shuffle_seed=_int(cfg.seed, "seed"), train_subset=_opt_int(d.train_subset, "data.train_subset"),
        test_subset=_opt_int(d.test_subset, "data.test_subset"), download=bool(d.download),
        steps_per_call=_int(t.steps_per_call, "trainer.steps_per_call", 1),
    )
    train = TrainSettings(
        epochs=_int(cfg.epochs, "epochs", minimum=1), seed=_int(cfg.seed, "seed"),
        accelerator=str(t.accelerator), devices=devices, precision=str(t.precision),
        progress_bar=bool(t.progress_bar), check_every=_int(t.check_every, "trainer.check_every", 1),
        threads=_opt_int(t.threads, "trainer.threads"),
        channels_last=_channels_last(t.channels_last),
        validate=bool(cfg.eval.get("validate", True)),
    )
    return RunSettings(
        data=data, model=str(cfg.model.name), sgd=sgd, train=train,
        adversarial=_adversarial(cfg.eval.get("adversarial")),
        hessian=_hessian(cfg.eval.get("hessian")),
        model_kwargs=_kwargs(cfg.model.get("kwargs")),
    )


def _channels_last(value: Any) -> bool | None:
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    raise ConfigError(f"trainer.channels_last must be auto, true or false, got {value!r}")


def _kwargs(node: DictConfig | None) -> dict[str, Any]:
    return {} if node is None else dict(OmegaConf.to_container(node, resolve=True))


def _adversarial(a: DictConfig | None) -> AdversarialSettings:
    if a is None or not a.get("enabled", True):
        return AdversarialSettings(enabled=False)
    return AdversarialSettings(
        enabled=True, eps=_eps_tuple(a.eps), attacks=tuple(a.attacks),
        pgd_steps=_int(a.pgd_steps, "eval.adversarial.pgd_steps", 1),
        pgd_alpha=None if a.pgd_alpha is None else float(a.pgd_alpha),
        random_start=bool(a.random_start),
        num_samples=_opt_int(a.num_samples, "eval.adversarial.num_samples"),
        batch_size=_opt_int(a.batch_size, "eval.adversarial.batch_size"),
    )


def _hessian(h: DictConfig | None) -> HessianSettings:
    if h is None or not h.get("enabled", True):
        return HessianSettings(enabled=False)
    return HessianSettings(
        enabled=True, backend=str(h.backend), top_n=_int(h.top_n, "eval.hessian.top_n", 1),
        num_samples=_opt_int(h.num_samples, "eval.hessian.num_samples"),
        max_iter=_int(h.max_iter, "eval.hessian.max_iter", 1), tol=float(h.tol),
        batch_size=_opt_int(h.batch_size, "eval.hessian.batch_size"),
    )
