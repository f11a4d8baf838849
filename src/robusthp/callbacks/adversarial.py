"""``AdversarialRobustness``: FGSM/PGD/AutoAttack accuracy of any LightningModule, as a callback.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks import AdversarialRobustness
    cb = AdversarialRobustness(eps=0.3, num_samples=1000)
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results  # {"clean_acc": ..., "fgsm_acc": ..., "pgd_acc": ..., "adversarial_time_s": ...}

The module's ``forward`` must map ``[0, 1]`` pixels to logits (normalization inside).
Runs once at the end of fit (``on_train_end``: the module is still on its device;
``on_fit_end`` comes after Lightning moved it to the CPU; skipped when the fit was
interrupted) and/or at the end of test (``on_test_epoch_end``, where inference mode is
switched off for the attack). Only global rank zero computes. A diverged model (its
``diverged`` attribute, or non-finite parameters) is not attacked: one warning, and
``results == {"adversarial_skipped": "diverged"}`` (or ``"non-finite parameters"``).

Data, never the training data:

* ``dataloader=`` when given, at every stage;
* at the end of fit: the datamodule's ``test_dataloader()`` (``trainer.fit(model,
  datamodule=dm)``). Nothing there (plain loaders to ``fit``, a datamodule without
  ``test_dataloader()``, or one that needs ``setup("test")`` first): one warning, and
  the attack runs at the end of the next ``trainer.test`` instead, even when ``on`` lacks
  "test_end". It never raises inside the user's fit for missing data;
* at the end of test: the loaders that test runs on (``trainer.test_dataloaders``, the
  first of several), however they were given: ``trainer.test(model, loader)``,
  ``datamodule=``, or the module's own ``test_dataloader()``.

Hooks, data rules, skip rules, progress bar and the common argument checks are shared
with ``HessianEigenvalues`` (``_lightning.py``); the keyword defaults are
``robusthp.settings.AdversarialSettings``'.

Eps readings (``eps_space``): ``"pixel"`` reads eps in ``[0, 1]`` pixels; ``"normalized"``
reads it in units of the model's input normalization, so the box is ``eps x std_c`` in
pixels per channel (std from ``std=`` or the model's ``Normalize`` layer). A list of
readings evaluates each eps in each.

Result keys: ``clean_acc`` and, for every eps and reading, ``<attack>_acc@<key>`` with
key ``f"{eps:g}"`` in pixels (``pgd_acc@0.3``) or ``f"{eps:g}norm"`` normalized
(``pgd_acc@0.3norm``), and ``worst_acc@<key>``: a point counts as robust only if every
attack run at that eps and reading failed on it (the per-point minimum, as AutoAttack and
RobustBench count), so it is <= each attack's accuracy. The plain ``fgsm_acc``/``pgd_acc``/
``autoattack_acc``/``worst_acc`` hold the FIRST eps of the FIRST reading (the primary one,
so readers of ``pgd_acc`` work whatever the lists).
``adversarial_eps`` lists each (key, eps as given, reading, pixel eps per channel). With
``min_eps``: the per-example minimal L-inf perturbation eps* in the primary reading, searched
up to ``min_eps_max`` (default twice the largest eps): ``median_min_eps``, ``min_eps_auc``
(mean accuracy over ``[0, min_eps_max]``), ``min_eps_above_max``, ``min_eps_max``,
``min_eps_space``, ``min_eps_curve`` (``{"eps": [...], "acc": [...]}``) and ``min_eps_star``.
eps* is capped at every eps of the primary reading where an attack fooled the point, so the
curve never reads above an attack that ran (``min_eps_bounded``: how many points the cap
lowered, i.e. the search missed).
Loggers get the accuracies, ``median_min_eps`` and ``min_eps_auc``, prefixed ``adv/``;
``self.results`` also holds ``adversarial_time_s`` and ``adversarial_num_samples``.

Leaves the model's train/eval flags, parameters' ``.grad`` and the global RNGs (torch's
CPU, Python's, NumPy's) as it found them: the data loader's draws are undone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks import (
    acc_key,
    accuracies,
    attack_names,
    bind,
    bounded_by_attacks,
    check_attack_args,
    correct_masks,
    default_alpha,
    get_attack,
    min_eps_summary,
    minimal_eps,
    worst_case,
)
from robusthp.callbacks import _lightning as shared
from robusthp.models.normalize import Normalize
from robusthp.settings import AdversarialSettings, eps_spaces, integer, names, positive_number

log = logging.getLogger(__name__)

LOG_PREFIX = "adv/"
_LOGGED = ("median_min_eps", "min_eps_auc")  # logged besides the accuracies
_OWNER = "AdversarialRobustness"


class _AdversarialRobustnessLogic(shared.TestDataEvaluation):
    """Lightning-free logic; ``AdversarialRobustness`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "adversarial_skipped", log
    log_prefix, title = LOG_PREFIX, "adversarial robustness"

    def __init__(
        self,
        eps: float | Sequence[float],
        attacks: str | Sequence[str] = AdversarialSettings.attacks,
        pgd_steps: int = AdversarialSettings.pgd_steps,
        pgd_alpha: float | None = AdversarialSettings.pgd_alpha,
        random_start: bool = AdversarialSettings.random_start,
        pgd_restarts: int = AdversarialSettings.pgd_restarts,
        autoattack_num_samples: int | None = AdversarialSettings.autoattack_num_samples,
        num_samples: int | None = AdversarialSettings.num_samples,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        seed: int = 0,
        batch_size: int | None = AdversarialSettings.batch_size,
        progress: bool = True,
        eps_space: str | Sequence[str] = AdversarialSettings.eps_space,
        std: Sequence[float] | None = None,
        min_eps: bool = AdversarialSettings.min_eps,
        min_eps_max: float | None = AdversarialSettings.min_eps_max,
    ) -> None:
        super().__init__()
        self.eps = _as_eps_list(eps)
        self.eps_space = shared.check_value(_OWNER, eps_spaces, eps_space, "eps_space")
        self.std = None if std is None else _as_std(std)
        self.min_eps = bool(min_eps)
        self.min_eps_max = None if min_eps_max is None else shared.check_value(
            _OWNER, positive_number, min_eps_max, "min_eps_max")
        self.attacks = shared.check_value(_OWNER, names, attacks, "attacks")
        linf = [*attack_names("linf"), *attack_names("autoattack")]
        for name in self.attacks:
            get_attack(name)  # unknown names raise, listing the valid ones
            if name not in linf:
                raise ValueError(f"{_OWNER}: attack {name!r} is not an L-inf attack; valid: "
                                 f"{', '.join(linf)} (the others: PerturbationRobustness)")
        check_attack_args(eps=self.eps[0], alpha=pgd_alpha, steps=pgd_steps)
        self.pgd_steps, self.pgd_alpha, self.random_start = pgd_steps, pgd_alpha, bool(random_start)
        self.pgd_restarts = shared.check_value(_OWNER, integer(1), pgd_restarts, "pgd_restarts")
        self.autoattack_num_samples = shared.check_value(
            _OWNER, integer(1, optional=True), autoattack_num_samples, "autoattack_num_samples")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.dataloader, self.seed, self.progress = dataloader, int(seed), bool(progress)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------ what the loggers get

    def logged(self, key: str, value: Any) -> bool:
        return "_acc" in key or key in _LOGGED

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """Clean and attacked accuracy of ``model`` on the first ``num_samples`` of ``loader``
        (and the minimal-perturbation curve when ``min_eps``)."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        dev = _device_of(model, device)
        readings = self.readings(model)
        attack_fns = self._attack_fns(readings, dev)
        subset = {k: fn for k, fn in attack_fns.items() if self._on_subset(k)}
        with shared.progress_bar(self.progress, "adversarial eval") as progress:
            masks = correct_masks(model, batches, {k: fn for k, fn in attack_fns.items()
                                                   if k not in subset}, device=device, progress=progress)
        first = _first(batches, self.autoattack_num_samples) if subset else []
        if subset:  # AutoAttack on the first autoattack_num_samples points only
            with shared.progress_bar(self.progress, "autoattack") as progress:
                on_first = correct_masks(model, first, subset, device=device, progress=progress)
            on_first.pop("clean")  # those points' clean accuracy; "clean" counts them all
            masks.update(on_first)
        masks.update(worst_case(masks))
        results: dict[str, Any] = self._with_primary_keys(accuracies(masks), readings)
        results["adversarial_num_samples"] = results.pop("num_samples")
        if subset:
            results["autoattack_num_samples"] = float(sum(int(y.shape[0]) for _, y in first))
        results["adversarial_eps"] = [
            {"key": r.key, "eps": r.eps, "space": r.space, "pixel_eps": list(r.pixel_eps)}
            for r in readings
        ]
        if self.min_eps:
            results.update(self._min_eps(model, batches, device, dev, masks, readings))
        results["adversarial_time_s"] = time.perf_counter() - start
        return results

    def _min_eps(self, model: nn.Module, batches: list, device: Any, dev: torch.device,
                 masks: Mapping[str, Tensor], readings: Sequence[Reading]) -> dict[str, Any]:
        """eps* of every point in the primary reading, and the curve and scalars from it;
        eps* never exceeds an eps of that reading at which an attack fooled the point."""
        space = self.eps_space[0]
        scale = self._scale(model, space)
        eps_max = self.min_eps_max if self.min_eps_max is not None else 2 * max(self.eps)
        scale_t = None if scale == (1.0,) else torch.tensor(scale, device=dev).view(-1, 1, 1)
        stars = []
        with shared.progress_bar(self.progress, "minimal eps") as progress:
            for done, (x, y) in enumerate(batches, start=1):
                if device is not None:
                    x, y = x.to(device), y.to(device)
                stars.append(minimal_eps(model, x, y, eps_max=eps_max, scale=scale_t).cpu())
                progress(done, len(batches))
        searched = torch.cat(stars)
        fooled_at = [(r.eps, _fooled(masks[f"{name}@{r.key}"], len(searched)))
                     for r in readings if r.space == space for name in self.attacks]
        bounded = bounded_by_attacks(searched, fooled_at)
        return {**min_eps_summary(bounded, eps_max), "min_eps_space": space,
                "min_eps_bounded": int((bounded < searched).sum())}

    def readings(self, model: nn.Module) -> list[Reading]:
        """Every (eps, reading) to attack at, primary first; the pixel box of each."""
        out = []
        for space in self.eps_space:
            scale = self._scale(model, space)
            for eps in self.eps:
                out.append(Reading(eps, space, tuple(eps * s for s in scale)))
        return out

    def _scale(self, model: nn.Module, space: str) -> tuple[float, ...]:
        """Pixel units per eps unit, per channel: 1 (pixel) or the input std (normalized)."""
        if space == "pixel":
            return (1.0,)
        std = self.std if self.std is not None else _model_std(model)
        if std is None:
            raise ValueError(
                f"{_OWNER}: eps_space='normalized' needs the model's input std: pass std=(...) "
                "or normalize inside the model with robusthp.models.normalize.Normalize"
            )
        return std

    def _attack_fns(self, readings: Sequence[Reading], device: torch.device) -> dict[str, Callable[..., Tensor]]:
        return {
            f"{name}@{r.key}": bind(name, **self._settings(name, r.pixel_box(device), device))
            for r in readings for name in self.attacks
        }

    def _on_subset(self, attack_key: str) -> bool:
        return attack_key.startswith("autoattack@") and self.autoattack_num_samples is not None

    def _settings(self, name: str, eps: float | Tensor, device: torch.device) -> dict[str, Any]:
        if name == "autoattack":
            return {"eps": eps, "norm": "Linf", "seed": self.seed}
        if name != "pgd":
            return {"eps": eps}
        alpha = self.pgd_alpha if self.pgd_alpha is not None else default_alpha(eps, self.pgd_steps)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        return {
            "eps": eps, "alpha": alpha, "steps": self.pgd_steps,
            "random_start": self.random_start, "generator": generator,
            "restarts": self.pgd_restarts,
        }

    def _with_primary_keys(self, accs: Mapping[str, float], readings: Sequence[Reading]) -> dict[str, Any]:
        """Every ``<attack>_acc@<key>``, and the plain keys = the primary (first) reading."""
        results = dict(accs)
        for name in [*self.attacks, "worst"]:
            results[acc_key(name)] = accs[acc_key(f"{name}@{readings[0].key}")]
        return results

class AdversarialRobustness(_AdversarialRobustnessLogic, *shared.callback_bases()):
    """FGSM/PGD robust accuracy at the end of fit and/or test, for either Lightning namespace.

    Args:
        eps: L-inf radius, or several (the first is primary), in the units of
            ``eps_space``. Paper: 0.3 (MNIST, Fashion-MNIST; most likely normalized units,
            see the README), 0.02 (CIFAR-10, pixels).
        attacks: L-inf names from ``robusthp.attacks.ATTACKS``: ``fgsm``, ``pgd`` (the
            default pair, the paper's) and ``autoattack`` (standard version, at the
            reference implementation's settings; a box per channel in the normalized
            reading of a colour dataset).
        pgd_steps: PGD steps (default 40, the paper's). pgd_alpha: step size; None ->
            ``2.5 * eps / pgd_steps`` per eps. random_start: PGD random start (default
            False), drawn from a private generator seeded ``seed``.
        pgd_restarts: PGD runs per point (default 1); the further ones start at random
            points of the eps-ball from the same seeded generator.
        autoattack_num_samples: run AutoAttack on the first N of the evaluated points only
            (default None: all); its accuracy and ``worst_acc`` then count those N
            (``autoattack_num_samples`` in the results).
        num_samples: evaluate on the first N test points (default None: all).
        dataloader: data to attack. Default: the datamodule's ``test_dataloader()`` at fit
            end, the running test's loader at test end; no data at fit end moves the
            attack to the next ``trainer.test`` (see the module docstring).
        batch_to_xy: ``batch -> (x, y)``; default handles tuples and common dict keys.
        on: any of ``"fit_end"`` (``on_train_end``), ``"test_end"`` (``on_test_epoch_end``).
        batch_size: re-batch the samples for the attack (default 1000; None: the loader's
            batches). Only memory and speed depend on it, not the accuracies.
        progress: show a rich progress bar (only when stderr is a terminal).
        eps_space: how eps is read, or several readings (the first is primary):
            ``"pixel"`` (default) or ``"normalized"`` (eps x the input std per channel).
        std: the model's input std per channel, for the normalized reading (default: read
            from the model's ``robusthp.models.normalize.Normalize`` layer).
        min_eps: also find each point's minimal L-inf perturbation eps* and the robustness
            curve acc(eps) (``robusthp.attacks.minimal_eps``), in the primary reading.
        min_eps_max: top of the eps* search, in the primary reading's units (default
            twice the largest eps).

    Defaults are ``robusthp.settings.AdversarialSettings``' (the CLI's too).

    After a run, ``self.results`` holds the metrics (see the module docstring), or
    ``{"adversarial_skipped": reason}`` when it did not run ("diverged", "non-finite
    parameters", "no data").
    """


# ---------------------------------------------------------------- helpers


def _first(batches: Sequence[tuple[Tensor, Tensor]], n: int) -> list[tuple[Tensor, Tensor]]:
    """The first ``n`` points of ``batches``, in the same batches."""
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= int(y.shape[0])
    return out


def _fooled(correct: Tensor, n: int) -> Tensor:
    """``(n,)``: True where the attack fooled the point; points it did not run on: False."""
    fooled = torch.zeros(n, dtype=torch.bool)
    fooled[: correct.numel()] = ~correct
    return fooled



@dataclass(frozen=True)
class Reading:
    """One attack budget: ``eps`` read in ``space``; ``pixel_eps`` is its box per channel."""

    eps: float
    space: str  # "pixel" | "normalized"
    pixel_eps: tuple[float, ...]  # one value per channel (a single value: all channels)

    @property
    def key(self) -> str:
        """The result-key suffix: ``0.3`` (pixels) or ``0.3norm`` (normalized units)."""
        return f"{self.eps:g}" + ("norm" if self.space == "normalized" else "")

    def pixel_box(self, device: torch.device) -> float | Tensor:
        """The eps the attacks take: a float when all channels agree (torchattacks' exact
        arithmetic), else a ``(C, 1, 1)`` tensor (a per-channel box)."""
        if len(set(self.pixel_eps)) == 1:
            return self.pixel_eps[0]
        return torch.tensor(self.pixel_eps, device=device).view(-1, 1, 1)


def _model_std(model: nn.Module) -> tuple[float, ...] | None:
    """The std of the first ``Normalize`` layer inside ``model`` (robusthp's models have one)."""
    for module in model.modules():
        if isinstance(module, Normalize):
            return tuple(float(s) for s in module.std.flatten())
    return None


def _as_std(std: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in ([std] if isinstance(std, (int, float)) else std))
    if not values or not all(s > 0 for s in values):
        raise ValueError(f"{_OWNER}: std must be one number > 0 per channel; got {std!r}")
    return values


def _as_eps_list(eps: float | Sequence[float]) -> list[float]:
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values:
        raise ValueError("eps must be a number or a non-empty sequence of numbers; got []")
    for value in values:
        check_attack_args(eps=value)
    labels = [f"{float(v):g}" for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"eps values must be distinct (as printed with :g); got {labels}")
    return [float(v) for v in values]


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
