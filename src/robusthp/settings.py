"""Every setting of a run in one place: its default, its unit, its config key and its check.

Plain dataclasses, torch-free and Hydra-free. Each field that the user can set carries its
config key (``setting(key=...)``); from that one declaration

- ``robusthp.config_store`` builds the Hydra defaults (the YAMLs only select and override),
- ``robusthp.config`` reads a composed config back into these objects, and
- the callbacks and core functions take their keyword defaults (e.g.
  ``HessianSettings.backend``).

A bad value raises ``ValueError`` with one line naming the config key, the value and what
is allowed; ``python -m robusthp.run`` prints that line and exits 2.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from robusthp.catalog import (
    DATASETS,
    MA2023_BANDS,
    MA2023_NUM_SAMPLES,
    REGIMES,
    get_regime,
    get_spec,
)

Check = Callable[[Any, str], Any]  # (value, config key) -> the value, coerced; raises ValueError

DEFAULT_DATASET = "mnist"


# ---------------------------------------------------------------------------- checks


def check_int(value: Any, key: str, minimum: int | None = None) -> int:
    """An integer (a float with an integer value is accepted) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
    return value


def integer(minimum: int | None = None, optional: bool = False) -> Check:
    def check(value: Any, key: str) -> int | None:
        return None if optional and value is None else check_int(value, key, minimum)

    return check


def positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def optional_positive_number(value: Any, key: str) -> float | None:
    return None if value is None else positive_number(value, key)


def tolerance(value: Any, key: str) -> float:
    """A finite number > 0: an infinite tolerance would stop an iteration before it starts."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not value > 0:
        raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def one_of(*choices: str) -> Check:
    def check(value: Any, key: str) -> str:
        if value not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def text(value: Any, key: str) -> str:
    return str(value)


def names(value: Any, key: str) -> tuple[str, ...]:
    out = (value,) if isinstance(value, str) else tuple(value)
    if not out or not all(isinstance(v, str) for v in out):
        raise ValueError(f"{key} must name at least one entry, got {value!r}")
    return out


def choices(allowed: tuple[str, ...]) -> Check:
    """A check: one name of ``allowed`` or a non-empty list of them, without repeats."""

    def check(value: Any, key: str) -> tuple[str, ...]:
        out = names(value, key)
        bad = [v for v in out if v not in allowed]
        if bad or len(set(out)) != len(out):
            why = f"unknown {bad[0]!r}" if bad else "a repeated name"
            raise ValueError(f"{key}: {why} in {value!r}; choose from {', '.join(allowed)}")
        return out

    return check


def eps_values(value: Any, key: str) -> tuple[float, ...]:
    """One L-inf budget or a list of them, each a finite number >= 0 (pixel units)."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{key} must be a number >= 0 or a list of them, got {v!r}")
    if not values:
        raise ValueError(f"{key} is empty; give at least one eps")
    return tuple(float(v) for v in values)


def attack_eps_values(value: Any, key: str) -> tuple[float, ...]:
    """``eps_values`` each > 0: an attack at eps 0 has no step to take (PGD's default step is
    a fraction of eps), so it is refused before training rather than failing after it."""
    values = eps_values(value, key)
    if any(v == 0 for v in values):
        raise ValueError(f"{key} must be numbers > 0 (eps 0 is the clean accuracy, already "
                         f"measured), got {value!r}")
    return values


EPS_SPACES = ("pixel", "normalized")


def eps_spaces(value: Any, key: str) -> tuple[str, ...]:
    """One eps reading or a list of them (the first is the primary one), each once."""
    values = (value,) if isinstance(value, str) else tuple(value or ())
    bad = [v for v in values if v not in EPS_SPACES]
    if not values or bad:
        raise ValueError(f"{key} must be one of {', '.join(EPS_SPACES)} or a list of them, "
                         f"got {value!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a reading twice: {list(values)}")
    return values


def check_momentum(value: Any, key: str = "momentum") -> float | None:
    """None (the regime's own) or a number in [0, 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{key} must be in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LoggerSpec:
    """A Lightning logger robusthp can attach: the packages it needs (any one of them, from
    the robusthp extra of the logger's name) and its options (``logger.<name>.<key>=``)."""

    packages: tuple[str, ...]
    options: dict[str, Any]


# ``logger=csv`` (the default), ``logger=[csv,tensorboard]``, ...: every one gets the same
# metrics. Each writes below the run's directory.
LOGGERS = {
    "csv": LoggerSpec((), {"name": "logs"}),  # logs/version_N/metrics.csv
    # the tensorboard package, not tensorboardX: tensorboardX names its event files by the
    # second, so the test-time writer can overwrite the fit-time one (seen here)
    "tensorboard": LoggerSpec(("tensorboard",), {"name": "tensorboard"}),
    "wandb": LoggerSpec(("wandb",), {"project": "robusthp", "offline": True}),  # `wandb sync` later
    "mlflow": LoggerSpec(("mlflow",), {"experiment_name": "robusthp", "tracking_uri": None}),  # mlruns/
}


def logger_choices(value: Any, key: str) -> dict[str, dict[str, Any]]:
    """``{logger name: its options}``, each name known and its package installed."""
    if isinstance(value, str):
        value = {value: {}}
    elif isinstance(value, (list, tuple)):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must name loggers among {', '.join(LOGGERS)}, got {value!r}")
    for name in value:
        if name not in LOGGERS:
            raise ValueError(f"unknown {key} {name!r}; choose among: {', '.join(LOGGERS)}")
        packages = LOGGERS[name].packages
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ValueError(f"{key}={name} needs the {packages[0]} package: "
                             f"pip install 'robusthp[{name}]'")
    return {name: {**LOGGERS[name].options, **(options or {})} for name, options in value.items()}


def check_divides(batch_size: int, devices: int) -> None:
    """The studied batch size is the global one: it must split evenly across devices."""
    if batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} does not divide across trainer.devices={devices}; "
            f"the global batch size must be a multiple of the number of devices"
        )


def degrees(value: Any, key: str) -> float:
    """An angle in degrees, 0 to 180 (a rotation's largest magnitude)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 180:
        raise ValueError(f"{key} must be an angle in degrees from 0 to 180; got {value!r}")
    return float(value)


def _dataset(value: Any, key: str) -> str:
    return get_spec(value).name


def _channels_last(value: Any, key: str) -> bool | None:
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be auto, true or false, got {value!r}")


# ---------------------------------------------------------------------------- declaring


def setting(default: Any, key: str | None = None, check: Check | None = None,
            config: Any = None, group: bool = False) -> Any:
    """A dataclass field with its config key, its check and (if it differs) the value the
    Hydra config starts from (``config``: e.g. an interpolation). ``group``: the key is a
    config group of YAML choices (its defaults live there); ``default`` is then a factory."""
    meta = {"key": key, "check": check, "group": group}
    if config is not None:
        meta["config"] = config
    if group:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


class Checked:
    """Runs every field's check in ``__post_init__`` (coerced values replace the given ones)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                value = check(getattr(self, f.name), f.metadata.get("key") or f.name)
                object.__setattr__(self, f.name, value)


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DataSettings(Checked):
    """Everything that decides which images a run sees, and in which batches."""

    dataset: str = setting(DEFAULT_DATASET, "dataset.name", _dataset)
    root: str = setting("./data", "data.root", text, config="${oc.env:ROBUSTHP_DATA_DIR,./data}")
    batch_size: int = setting(128, "batch_size", integer(1))  # the GLOBAL batch size studied
    eval_batch_size: int = setting(1000, "data.eval_batch_size", integer(1))
    val_size: int | None = setting(None, "data.val_size", integer(0, optional=True))  # None: the dataset's
    split_seed: int = setting(0, "data.split_seed", integer())  # the train/val split (fixed across a sweep)
    shuffle_seed: int = setting(0, "seed", integer())  # batch order (the run's seed)
    train_subset: int | None = setting(None, "data.train_subset", integer(1, optional=True))  # first N
    test_subset: int | None = setting(None, "data.test_subset", integer(1, optional=True))
    download: bool = setting(True, "data.download", boolean)  # when missing under root (needs internet)
    # training images rotated by a uniform random angle in [-rotation, rotation] degrees
    # (nearest, black fill: Kamath et al., arXiv 2002.11318); 0: none
    rotation: float = setting(0.0, "data.rotation", degrees)
    on_device: bool = setting(True)  # keep the whole dataset on the training device
    channels_last: bool = setting(False)  # resolved at run time from TrainSettings.channels_last
    # SGD steps per Lightning training_step call: amortizes its ~0.5-0.9 ms per-call cost
    # (benchmarks/train_throughput.py); the steps and their order are the same for any value
    steps_per_call: int = setting(8, "trainer.steps_per_call", integer(1))


@dataclass(frozen=True)
class TrainSettings(Checked):
    epochs: int = setting(100, "epochs", integer(1))  # the paper trains 100 epochs
    seed: int = setting(0, "seed", integer())  # model init and batch order
    accelerator: str = setting("auto", "trainer.accelerator", text)  # cpu | gpu | auto
    devices: int = setting(1, "trainer.devices", integer(1))  # >1: DDP, batch_size stays global
    precision: str = setting("32-true", "trainer.precision", text)
    progress_bar: bool = setting(True, "trainer.progress_bar", boolean)
    check_every: int = setting(50, "trainer.check_every", integer(1))  # steps between divergence checks
    threads: int | None = setting(None, "trainer.threads", integer(1, optional=True))  # None: torch's
    # None ("auto"): on CPU only, where it makes these convnets 1.1-1.9x faster
    # (benchmarks/model_step.py); true | false to force it
    channels_last: bool | None = setting(None, "trainer.channels_last", _channels_last, config="auto")
    validate: bool = setting(True, "eval.validate", boolean)  # validation accuracy every epoch
    checkpoint: bool = setting(True)  # checkpoints/last.ckpt each epoch, resume from it
    # Lightning loggers and their options (conf/logger/*.yaml); every one gets the same metrics
    loggers: dict[str, dict[str, Any]] = setting(lambda: {"csv": dict(LOGGERS["csv"].options)},
                                                 "logger", logger_choices, group=True)


ADVERSARIAL_ATTACKS = ("fgsm", "pgd", "autoattack")  # eval.adversarial.attacks' choices


@dataclass(frozen=True)
class AdversarialSettings(Checked):
    """FGSM/PGD after training (Kamath et al., Appendix A), L-inf in [0, 1] pixels."""

    enabled: bool = setting(True, "eval.adversarial.enabled", boolean)
    # one budget or several (a robustness curve; the first is the primary one)
    eps: tuple[float, ...] = setting((DATASETS[DEFAULT_DATASET].eps,), "eval.adversarial.eps",
                                     attack_eps_values, config="${dataset.eps}")
    # fgsm, pgd (L-inf, robusthp.attacks.linf) and autoattack (standard version, L-inf, at the
    # reference implementation's settings); worst_acc counts a point robust only if all failed
    attacks: tuple[str, ...] = setting(("fgsm", "pgd"), "eval.adversarial.attacks",
                                       choices(ADVERSARIAL_ATTACKS))
    pgd_steps: int = setting(40, "eval.adversarial.pgd_steps", integer(1))  # the paper's 40
    # None: 2.5 * eps / pgd_steps (Madry et al.'s rule; the paper states no step size)
    pgd_alpha: float | None = setting(None, "eval.adversarial.pgd_alpha", optional_positive_number)
    random_start: bool = setting(False, "eval.adversarial.random_start", boolean)  # the paper states none
    # PGD runs per point: the first starts as random_start says, the others at random points
    # of the eps-ball (the run's seeded generator); 1 is the paper's single run
    pgd_restarts: int = setting(1, "eval.adversarial.pgd_restarts", integer(1))
    # AutoAttack on the first N evaluated points only (None: all); worst_acc then counts those N
    autoattack_num_samples: int | None = setting(None, "eval.adversarial.autoattack_num_samples",
                                                 integer(1, optional=True))
    num_samples: int | None = setting(None, "eval.adversarial.num_samples", integer(1, optional=True))  # None: all
    batch_size: int | None = setting(1000, "eval.adversarial.batch_size", integer(1, optional=True))
    # how eps is read: "pixel" ([0, 1] pixels, the default: the unit of RobustBench and Madry
    # et al.) or "normalized" (units of the model's input normalization, eps_pixel = eps x
    # std per channel: Yao et al.'s code, whose eps the paper uses); a list evaluates both
    eps_space: tuple[str, ...] = setting(("pixel",), "eval.adversarial.eps_space", eps_spaces,
                                         config="pixel")
    # per-example minimal L-inf perturbation eps* and the robustness curve acc(eps), in the
    # primary reading, searched up to min_eps_max (None: twice the largest eps)
    min_eps: bool = setting(False, "eval.adversarial.min_eps", boolean)
    min_eps_max: float | None = setting(None, "eval.adversarial.min_eps_max", optional_positive_number)


HESSIAN_BACKENDS = ("pyhessian", "lanczos")
HESSIAN_SPLITS = ("train", "test")
# HessianSettings' fields beyond the top eigenvalues (added after runs were recorded)
HESSIAN_SPECTRUM_KEYS = ("trace", "trace_tol", "trace_max_iter", "density", "density_vectors",
                         "density_iter", "per_layer")


@dataclass(frozen=True)
class HessianSettings(Checked):
    """The top Hessian eigenvalue of the training loss after training (Yao et al.'s method)."""

    enabled: bool = setting(True, "eval.hessian.enabled", boolean)
    # pyhessian: PyHessian's power iteration, the reference the study names; lanczos: fewer
    # Hessian-vector products for the same accuracy (benchmarks/hessian.py)
    backend: str = setting("pyhessian", "eval.hessian.backend", one_of(*HESSIAN_BACKENDS))
    top_n: int = setting(1, "eval.hessian.top_n", integer(1))
    # a fixed, seeded subset of the training split (None: all of it). PyHessian's authors
    # (arXiv 1912.07145) find the top eigenvalue stable from about 4096 points on
    num_samples: int | None = setting(4096, "eval.hessian.num_samples", integer(1, optional=True))
    max_iter: int = setting(100, "eval.hessian.max_iter", integer(1))
    tol: float = setting(1e-3, "eval.hessian.tol", tolerance)  # relative
    batch_size: int | None = setting(1024, "eval.hessian.batch_size", integer(1, optional=True))
    # the loss whose curvature is measured: the training split (default, as the paper's "loss
    # landscape of training") or the test split (as HessianFlow's code); recorded in results
    split: str = setting("train", "eval.hessian.split", one_of(*HESSIAN_SPLITS))
    # Beyond the top eigenvalue (robusthp.hessian), each off by default (extra products).
    # The trace by Hutchinson's estimator, run until its standard error is trace_tol of it
    trace: bool = setting(False, "eval.hessian.trace", boolean)
    trace_tol: float = setting(0.05, "eval.hessian.trace_tol", tolerance)  # relative
    trace_max_iter: int = setting(100, "eval.hessian.trace_max_iter", integer(2))
    # the eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019):
    # density_vectors start vectors, density_iter Lanczos steps each. PyHessian's 100 steps
    # cost 5-8x the top eigenvalue; from 20 on, the top five nodes (the outliers) of trained
    # MNIST nets match the 100-step run's (M1 to 1e-15, StdCNN to ~4e-6 relative) and the bulk
    # moves by <= 5e-4 of the spectrum's width, at 1-2.5x the top eigenvalue's time
    # (benchmarks/hessian.py --spectrum)
    density: bool = setting(False, "eval.hessian.density", boolean)
    density_vectors: int = setting(1, "eval.hessian.density_vectors", integer(1))
    density_iter: int = setting(20, "eval.hessian.density_iter", integer(1))
    # the top eigenvalue of each module's diagonal block (Lanczos, to max_iter and tol)
    per_layer: bool = setting(False, "eval.hessian.per_layer", boolean)


def optional_eps_values(value: Any, key: str) -> tuple[float, ...] | None:
    """None (the dataset's, from the study) or one number >= 0 or a list of them."""
    return None if value is None else eps_values(value, key)


@dataclass(frozen=True)
class PerturbationSettings(Checked):
    """Accuracy under perturbations other than the paper's L-inf attacks (Ma et al. 2023):
    Gaussian noise, DCT band-limited noise, L2 PGD and optionally AutoAttack; [0, 1] pixels.
    ``None`` budgets take the dataset's from ``robusthp.catalog.MA2023_BUDGETS``. The noises
    run on the first ``num_samples`` test points, the attacks (PGD-L2, AutoAttack) on the
    first ``attack_num_samples`` of those: the authors add noise to the whole test set and
    attack the first 1,000 (``robusthp.catalog.MA2023_NUM_SAMPLES``)."""

    enabled: bool = setting(False, "eval.perturbation.enabled", boolean)
    noise_var: tuple[float, ...] | None = setting(None, "eval.perturbation.noise_var", optional_eps_values)
    bands: int = setting(MA2023_BANDS, "eval.perturbation.bands", integer(0))  # 0: no band noise
    band_var: float | None = setting(None, "eval.perturbation.band_var", optional_positive_number)
    l2_eps: tuple[float, ...] | None = setting(None, "eval.perturbation.l2_eps", optional_eps_values)
    l2_steps: int = setting(40, "eval.perturbation.l2_steps", integer(1))  # alpha: 2.5 eps / steps
    # AutoAttack (standard version, torchattacks) at the L-inf and L2 budgets: slow, off by default
    autoattack: bool = setting(False, "eval.perturbation.autoattack", boolean)
    linf_eps: tuple[float, ...] | None = setting(None, "eval.perturbation.linf_eps", optional_eps_values)
    num_samples: int | None = setting(MA2023_NUM_SAMPLES, "eval.perturbation.num_samples",
                                      integer(1, optional=True))
    # None: the attacks run on every one of the num_samples points
    attack_num_samples: int | None = setting(None, "eval.perturbation.attack_num_samples",
                                             integer(1, optional=True))
    batch_size: int | None = setting(1000, "eval.perturbation.batch_size", integer(1, optional=True))


@dataclass(frozen=True)
class FunctionSettings(Checked):
    """Measures of the trained function itself (Ma et al. 2023): an upper bound of its L2
    Lipschitz constant, the authors' reshaped-kernel number, input-gradient norms and the
    total weight norm."""

    enabled: bool = setting(False, "eval.function.enabled", boolean)
    power_iters: int = setting(100, "eval.function.power_iters", integer(1))  # per layer
    tol: float = setting(1e-4, "eval.function.tol", positive_number)  # relative, per layer
    num_samples: int | None = setting(1000, "eval.function.num_samples", integer(1, optional=True))
    batch_size: int | None = setting(1000, "eval.function.batch_size", integer(1, optional=True))


def angles(low: float | None = None, high: float | None = None) -> Check:
    """A check: one angle in degrees or a list of them (an empty list: none), each finite
    and within [low, high] where given."""

    def check(value: Any, key: str) -> tuple[float, ...]:
        values = list(value) if isinstance(value, list | tuple) else [value]
        span = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
        for v in values:
            ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
            if not ok or (low is not None and v < low) or (high is not None and v > high):
                raise ValueError(f"{key} must be angles in degrees{span}; got {v!r} in {value!r}")
        return tuple(float(v) for v in values)

    return check


def l2_norms(value: Any, key: str) -> tuple[float, ...]:
    """One L2 norm >= 0 or a non-empty list of them ([0, 1] pixel units)."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise ValueError(f"{key} must be one L2 norm >= 0 or a list of them; got an empty list")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{key} must be L2 norms >= 0 (in [0, 1] pixels); got {v!r} in {value!r}")
    return tuple(float(v) for v in values)


UNIVERSAL_ATTACKS = ("gradient", "fgsm", "deepfool")  # robusthp.attacks.universal's directions
PROFILE_ANGLES = tuple(float(a) for a in range(0, 181, 15))  # 0, 15, ..., 180 degrees


@dataclass(frozen=True)
class InvarianceSettings(Checked):
    """The rotation-invariance profile (Kamath et al., arXiv 2002.11318): test accuracy on
    images rotated by a uniform random angle in [-theta, theta], and at fixed angles."""

    enabled: bool = setting(False, "eval.invariance.enabled", boolean)
    thetas: tuple[float, ...] = setting(PROFILE_ANGLES, "eval.invariance.thetas", angles(0, 180))
    angles: tuple[float, ...] = setting(PROFILE_ANGLES, "eval.invariance.angles", angles())  # [] : off
    num_samples: int | None = setting(1000, "eval.invariance.num_samples", integer(1, optional=True))
    batch_size: int | None = setting(1000, "eval.invariance.batch_size", integer(1, optional=True))


@dataclass(frozen=True)
class UniversalSettings(Checked):
    """SVD-Universal perturbations (Kamath et al., arXiv 2005.08632): one input-agnostic L2
    direction from the first ``n`` test points' attack directions, and its fooling rate on
    the held-out ones at each L2 norm in [0, 1] pixels; with ``invariant``, the universal
    invariant direction of rotation tangents (a reconstruction, arXiv 2006.04449)."""

    enabled: bool = setting(False, "eval.universal.enabled", boolean)
    attacks: tuple[str, ...] = setting(UNIVERSAL_ATTACKS, "eval.universal.attacks",
                                       choices(UNIVERSAL_ATTACKS))
    n: int = setting(64, "eval.universal.n", integer(1))  # points that build the direction
    # MNIST images have an L2 norm of about 9.4 in [0, 1] pixels: these norms span the
    # range where fooling rates change (a reconstruction; the paper's norms are not public)
    norms: tuple[float, ...] = setting((0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0),
                                       "eval.universal.norms", l2_norms)
    # test points taken: the first n build the direction, the rest measure it (None: all)
    num_samples: int | None = setting(1000, "eval.universal.num_samples", integer(2, optional=True))
    invariant: bool = setting(True, "eval.universal.invariant", boolean)
    delta_degrees: float = setting(2.0, "eval.universal.delta_degrees", positive_number)
    batch_size: int | None = setting(1000, "eval.universal.batch_size", integer(1, optional=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples is not None and self.num_samples <= self.n:
            raise ValueError(f"eval.universal.num_samples must exceed eval.universal.n (the first n "
                             f"build the direction, the rest are held out); got "
                             f"num_samples={self.num_samples}, n={self.n}")


# ---------------------------------------------------------------------------- training options


ADV_TRAIN_METHODS = ("none", "pgd", "fgsm")  # adv_train=<method>: natural, Madry et al.'s PGD, FGSM
BN_MODES = ("eval", "train")


def _optional_bool(value: Any, key: str) -> bool | None:
    return None if value is None else boolean(value, key)


def optional_eps(value: Any, key: str) -> float | None:
    """None (the evaluation's primary eps) or one finite number > 0."""
    if isinstance(value, list | tuple):
        raise ValueError(f"{key} must be one number > 0 (one budget), got {value!r}")
    return None if value is None else attack_eps_values(value, key)[0]


def _optional_space(value: Any, key: str) -> str | None:
    return None if value is None else one_of(*EPS_SPACES)(value, key)


@dataclass(frozen=True)
class AdvTrainSettings(Checked):
    """Adversarial training (``adv_train=pgd|fgsm``): each SGD step trains on examples that
    ``robusthp.attacks`` crafts against the current model (the evaluation's own code), in
    [0, 1] pixels. ``None`` keys take the method's or the evaluation's value:

    - ``eps``/``eps_space``: the evaluation's primary budget and reading (the first of
      ``eval.adversarial.eps`` / ``eval.adversarial.eps_space``);
    - ``steps``: 40 for PGD (Madry et al.'s MNIST setting), 1 for FGSM;
    - ``alpha``: PGD's 2.5 eps / steps (``eval.adversarial``'s rule), eps for FGSM; read
      in ``eps_space`` like eps (normalized: x std per channel in pixels);
    - ``random_start``: true for PGD (Madry et al.), false for FGSM.

    FGSM is one step of eps from the clean point: it refuses steps other than 1, an alpha
    and a random start (which it would ignore).

    ``last_epochs=K`` trains naturally first and adversarially only in the last K epochs
    (Yao et al. 2018's FGSM fine-tuning); None: every epoch. ``bn_mode`` is the model's
    mode while crafting: ``eval`` (default) attacks the model with BatchNorm's running
    statistics, the function that is evaluated, and updates nothing; ``train`` uses batch
    statistics (as the attacked batch will see in its training step) and restores the
    running statistics afterwards, so only the training step updates them."""

    method: str = setting("none", "adv_train.method", one_of(*ADV_TRAIN_METHODS))
    eps: float | None = setting(None, "adv_train.eps", optional_eps)
    eps_space: str | None = setting(None, "adv_train.eps_space", _optional_space)
    steps: int | None = setting(None, "adv_train.steps", integer(1, optional=True))
    alpha: float | None = setting(None, "adv_train.alpha", optional_positive_number)
    random_start: bool | None = setting(None, "adv_train.random_start", _optional_bool)
    last_epochs: int | None = setting(None, "adv_train.last_epochs", integer(1, optional=True))
    bn_mode: str = setting("eval", "adv_train.bn_mode", one_of(*BN_MODES))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "fgsm" and self.steps not in (None, 1):
            raise ValueError(f"adv_train.steps must be 1 (or null) for adv_train=fgsm, got {self.steps!r}; "
                             f"use adv_train=pgd for several steps")
        if self.method == "fgsm" and self.random_start:
            raise ValueError("adv_train.random_start must be false (or null) for adv_train=fgsm, "
                             "got True; use adv_train=pgd adv_train.steps=1 for a random start")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def resolved(self, eval_eps: float, eval_space: str) -> AdvTrainSettings:
        """Every ``None`` key replaced by its method's or the evaluation's value."""
        pgd = self.method == "pgd"
        if not pgd and self.alpha is not None:
            raise ValueError(f"adv_train.alpha is PGD's step; adv_train=fgsm steps by eps, got "
                             f"alpha={self.alpha!r}: drop it, or use adv_train=pgd adv_train.steps=1")
        steps = self.steps if self.steps is not None else (ADV_TRAIN_PGD_STEPS if pgd else 1)
        eps = self.eps if self.eps is not None else eval_eps
        return AdvTrainSettings(
            method=self.method, eps=eps, eps_space=self.eps_space or eval_space, steps=steps,
            alpha=self.alpha if self.alpha is not None else (
                ALPHA_EPS_RATIO * eps / steps if pgd else eps) or None,
            random_start=pgd if self.random_start is None else self.random_start,
            last_epochs=self.last_epochs, bn_mode=self.bn_mode,
        )


ADV_TRAIN_PGD_STEPS = 40  # Madry et al. 2018's MNIST training attack
ALPHA_EPS_RATIO = 2.5  # PGD's default step: 2.5 eps / steps (Madry et al.; as robusthp.attacks)


@dataclass(frozen=True)
class GradStatsSettings(Checked):
    """Per-epoch gradient statistics of the training loss (``GradientStatistics``): the
    mini-batch gradient norm and the per-example and mini-batch gradient variance, on a fixed
    subset of the training split, on the inputs the run trains on (adversarial ones under
    ``adv_train``)."""

    enabled: bool = setting(False, "eval.grad_stats.enabled", boolean)
    num_samples: int = setting(512, "eval.grad_stats.num_samples", integer(2))
    batch_size: int | None = setting(None, "eval.grad_stats.batch_size", integer(1, optional=True))  # None: the run's
    every_n_epochs: int = setting(1, "eval.grad_stats.every_n_epochs", integer(1))
    chunk_size: int = setting(64, "eval.grad_stats.chunk_size", integer(1))  # examples per vmap call


@dataclass(frozen=True)
class RobustValSettings(Checked):
    """Per-epoch PGD accuracy on a fixed subset of the validation split (``RobustValidation``),
    so robust overfitting shows in the logs (``val/robust_acc``) and the report."""

    enabled: bool = setting(False, "eval.robust_val.enabled", boolean)
    eps: float | None = setting(None, "eval.robust_val.eps", optional_eps)  # None: adv_train's
    eps_space: str | None = setting(None, "eval.robust_val.eps_space", _optional_space)  # None: adv_train's
    steps: int = setting(10, "eval.robust_val.steps", integer(1))
    alpha: float | None = setting(None, "eval.robust_val.alpha", optional_positive_number)  # None: 2.5 eps / steps
    random_start: bool = setting(False, "eval.robust_val.random_start", boolean)
    num_samples: int = setting(500, "eval.robust_val.num_samples", integer(1))
    every_n_epochs: int = setting(1, "eval.robust_val.every_n_epochs", integer(1))


# ---------------------------------------------------------------------------- SGD


@dataclass(frozen=True)
class SGDSettings:
    """Resolved, validated optimizer hyperparameters of one run (what results.json records
    under ``sgd``; the name is the paper's, the optimizer may be Adam or RMSProp).

    Every setting is explicit: no weight decay, no Nesterov, no dampening (the paper's
    plain SGD) unless a regime says otherwise. ``momentum`` is SGD's heavy-ball momentum:
    0 for the adaptive optimizers, which have none (their betas / alpha are apart)."""

    regime: str
    lr: float  # the initial, effective learning rate
    momentum: float
    batch_size: int
    halve_every_epochs: int | None = None
    weight_decay: float = 0.0
    nesterov: bool = False
    dampening: float = 0.0
    optimizer: str = "sgd"  # sgd | adam | rmsprop | engm (robusthp.catalog.OPTIMIZERS)
    betas: tuple[float, float] | None = None  # Adam's
    alpha: float | None = None  # RMSProp's smoothing constant
    eps: float | None = None  # Adam's / RMSProp's denominator term
    lr_drop_epochs: tuple[int, ...] = ()  # lr x lr_drop_factor after each of these epochs
    lr_drop_factor: float = 0.1
    # ENGM's (robusthp.engm; None for other regimes): gradients normalized per example by
    # max(norm, engm_gamma), norms exact or cheap (input-gradient fit, refit every N steps)
    engm_gamma: float | None = None
    engm_mode: str | None = None
    engm_refit_every: int | None = None


def _unit_interval(value: Any, key: str) -> float:
    """A number in [0, 1) (betas, alpha)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{key} must be a number in [0, 1), got {value!r}")
    return float(value)


def _non_negative(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    return float(value)


# the regime keys whose check is not "a positive number"
_REGIME_KEY_CHECKS: dict[str, Check] = {
    "beta1": _unit_interval, "beta2": _unit_interval, "alpha": _unit_interval,
    "weight_decay": _non_negative,
    "gamma": _non_negative, "mode": one_of("exact", "cheap"), "refit_every": integer(1),  # ENGM's
}


def resolve_sgd(regime: str, batch_size: int, momentum: float | None = None,
                dataset: str | None = None, epochs: int | None = None,
                **keys: float | str) -> SGDSettings:
    """The regime's keys and the batch size -> optimizer settings (the one place units change).

    ``momentum=None`` means the regime's own (0 unless the regime fixes it); an adaptive
    regime (Adam, RMSProp) refuses any momentum. ``keys`` are the regime's own (``lr`` for
    lr/benchmark, ``lr_bs_ratio`` for lr_bs, ``beta1`` ... for adam, ``gamma``, ``mode`` and
    ``refit_every`` for engm); any other key is
    refused and a missing one takes its default from ``robusthp.catalog.REGIMES``.
    ``dataset`` picks the default lr of a regime that has one per dataset; ``epochs``
    places a regime's lr drops (fractions of training).
    """
    spec = get_regime(regime)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    momentum = _regime_momentum(spec, check_momentum(momentum))
    unused = sorted(set(keys) - set(spec.keys))
    if unused:
        raise ValueError(
            f"regime {regime!r} does not use {', '.join(unused)}; its keys: {', '.join(spec.keys)}"
        )
    values = {k: keys[k] if keys.get(k) is not None else default for k, default in spec.keys.items()}
    if "lr" in values and values["lr"] is None:
        values["lr"] = _dataset_lr(spec, dataset)
    values = {k: _REGIME_KEY_CHECKS.get(k, positive_number)(v, f"regime.{k}") for k, v in values.items()}
    return SGDSettings(
        regime=regime, lr=float(spec.lr(values, batch_size)), momentum=float(momentum or 0.0),
        batch_size=batch_size, halve_every_epochs=spec.halve_every_epochs,
        weight_decay=values.get("weight_decay", 0.0), optimizer=spec.optimizer,
        betas=(values["beta1"], values["beta2"]) if "beta1" in values else None,
        alpha=values.get("alpha"), eps=values.get("eps"),
        lr_drop_epochs=_drop_epochs(spec, epochs), lr_drop_factor=spec.lr_drop_factor,
        engm_gamma=values.get("gamma"), engm_mode=values.get("mode"),
        engm_refit_every=values.get("refit_every"),
    )


def _regime_momentum(spec: Any, momentum: float | None) -> float | None:
    if spec.adaptive and momentum is not None:
        knobs = "regime.beta1, regime.beta2" if "beta1" in spec.keys else "regime.alpha"
        raise ValueError(
            f"regime {spec.name!r} has no SGD momentum (its {knobs} are not momentum); "
            f"got momentum={momentum!r}: drop the override"
        )
    if spec.fixed_momentum is not None:
        if momentum is not None and momentum != spec.fixed_momentum:
            raise ValueError(
                f"regime {spec.name!r} fixes momentum at {spec.fixed_momentum}; got momentum={momentum!r} "
                f"(drop the override, or use a regime that sweeps it: "
                f"{', '.join(f'regime={r}' for r, s in REGIMES.items() if s.sweeps_momentum)})"
            )
        return spec.fixed_momentum
    return momentum


def _dataset_lr(spec: Any, dataset: str | None) -> float:
    table = spec.lr_by_dataset or {}
    if dataset not in table:
        raise ValueError(
            f"regime {spec.name!r} has no default lr for dataset {dataset!r} (it has one for "
            f"{', '.join(table) or 'none'}); set regime.lr=..."
        )
    return table[dataset]


def _drop_epochs(spec: Any, epochs: int | None) -> tuple[int, ...]:
    """The epochs after which lr drops: floor(fraction x epochs), each at least 1."""
    if not spec.lr_drops:
        return ()
    if epochs is None:
        raise ValueError(f"regime {spec.name!r} drops lr at fractions of training: pass epochs=")
    return tuple(sorted({max(1, math.floor(f * epochs)) for f in spec.lr_drops}))


# ---------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, validated, in the units the paper reasons in."""

    data: DataSettings
    model: str
    sgd: SGDSettings
    train: TrainSettings
    adversarial: AdversarialSettings = field(default_factory=AdversarialSettings)
    hessian: HessianSettings = field(default_factory=HessianSettings)
    perturbation: PerturbationSettings = field(default_factory=PerturbationSettings)
    function: FunctionSettings = field(default_factory=FunctionSettings)
    invariance: InvarianceSettings = field(default_factory=InvarianceSettings)
    universal: UniversalSettings = field(default_factory=UniversalSettings)
    adv_train: AdvTrainSettings = field(default_factory=AdvTrainSettings)
    grad_stats: GradStatsSettings = field(default_factory=GradStatsSettings)
    robust_val: RobustValSettings = field(default_factory=RobustValSettings)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_divides(self.data.batch_size, self.train.devices)

    def cell(self) -> dict[str, Any]:
        """The grid coordinates of this run (the report's row keys)."""
        return {
            "dataset": self.data.dataset, "model": self.model, "regime": self.sgd.regime,
            "batch_size": self.sgd.batch_size, "momentum": self.sgd.momentum, "lr": self.sgd.lr,
            "seed": self.train.seed, "epochs": self.train.epochs, "rotation": self.data.rotation,
            "adv_train": self.adv_train.method,
        }


SECTIONS = (DataSettings, TrainSettings, AdversarialSettings, HessianSettings,
            PerturbationSettings, FunctionSettings, InvarianceSettings, UniversalSettings,
            AdvTrainSettings, GradStatsSettings, RobustValSettings)
"""The settings classes whose fields are config keys."""
