"""``AdversarialRobustness``: FGSM/PGD accuracy of any LightningModule, as a callback.

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

Result keys. One eps: ``clean_acc``, ``fgsm_acc``, ``pgd_acc``. Several eps: also
``fgsm_acc@<eps>``/``pgd_acc@<eps>`` for each eps (``f"{eps:g}"``, e.g. ``pgd_acc@0.1``),
and the plain keys hold the FIRST eps (the primary one, so readers of ``pgd_acc`` work
whatever the list). Loggers get every accuracy key prefixed ``adv/``; ``self.results``
also holds ``adversarial_time_s`` and ``adversarial_num_samples``.

Leaves the model's train/eval flags, parameters' ``.grad`` and the global RNGs (torch's
CPU, Python's, NumPy's) as it found them: the data loader's draws are undone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks import (
    acc_key,
    bind,
    check_attack_args,
    default_alpha,
    get_attack,
    robust_accuracy,
)
from robusthp.callbacks import _lightning as shared
from robusthp.settings import AdversarialSettings, names
from robusthp.side_effects import gradients_on

log = logging.getLogger(__name__)

LOG_PREFIX = "adv/"
_OWNER = "AdversarialRobustness"


class _AdversarialRobustnessLogic(shared.StageHooks):
    """Lightning-free logic; ``AdversarialRobustness`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "adversarial_skipped", log

    def __init__(
        self,
        eps: float | Sequence[float],
        attacks: str | Sequence[str] = AdversarialSettings.attacks,
        pgd_steps: int = AdversarialSettings.pgd_steps,
        pgd_alpha: float | None = AdversarialSettings.pgd_alpha,
        random_start: bool = AdversarialSettings.random_start,
        num_samples: int | None = AdversarialSettings.num_samples,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        seed: int = 0,
        batch_size: int | None = AdversarialSettings.batch_size,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.eps = _as_eps_list(eps)
        self.attacks = shared.check_value(_OWNER, names, attacks, "attacks")
        for name in self.attacks:
            get_attack(name)  # unknown names raise, listing the valid ones
        check_attack_args(eps=self.eps[0], alpha=pgd_alpha, steps=pgd_steps)
        self.pgd_steps, self.pgd_alpha, self.random_start = pgd_steps, pgd_alpha, bool(random_start)
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.dataloader, self.seed, self.progress = dataloader, int(seed), bool(progress)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------ Lightning hooks

    def data_sources(self, trainer: Any, stage: str) -> list[shared.Source]:
        """Test data only (see the module docstring): at fit end the datamodule's, at test
        end the running test's."""
        if self.dataloader is not None:
            return shared.given(self.dataloader)
        if stage == "fit_end":
            return [shared.datamodule_source(trainer, "test_dataloader")]
        return [shared.trainer_source(trainer, "test_dataloaders")]

    def run_stage(
        self, trainer: Any, pl_module: nn.Module, stage: str, loader: Iterable[Any], source: str
    ) -> None:
        """Evaluate, log and store now (``StageHooks`` calls it at a chosen stage)."""
        with gradients_on():  # test hooks run under inference mode
            self.results = self.evaluate(pl_module, loader, device=pl_module.device)
        shared.log_to_loggers(trainer, {LOG_PREFIX + k: v for k, v in self.results.items() if "_acc" in k})
        log.info("adversarial robustness (%s, data: %s): %s", stage, source, self.results)

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, float]:
        """Clean and attacked accuracy of ``model`` on the first ``num_samples`` of ``loader``."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        attack_fns = self._attack_fns(_device_of(model, device))
        with shared.progress_bar(self.progress, "adversarial eval") as progress:
            accs = robust_accuracy(model, batches, attack_fns, device=device, progress=progress)
        results = self._with_primary_keys(accs)
        results["adversarial_num_samples"] = results.pop("num_samples")
        results["adversarial_time_s"] = time.perf_counter() - start
        return results

    def _attack_fns(self, device: torch.device) -> dict[str, Callable[..., Tensor]]:
        several = len(self.eps) > 1
        fns = {}
        for eps in self.eps:
            for name in self.attacks:
                key = f"{name}@{eps:g}" if several else name
                fns[key] = bind(name, **self._settings(name, eps, device))
        return fns

    def _settings(self, name: str, eps: float, device: torch.device) -> dict[str, Any]:
        if name != "pgd":
            return {"eps": eps}
        alpha = self.pgd_alpha if self.pgd_alpha is not None else default_alpha(eps, self.pgd_steps)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        return {
            "eps": eps, "alpha": alpha, "steps": self.pgd_steps,
            "random_start": self.random_start, "generator": generator,
        }

    def _with_primary_keys(self, accs: Mapping[str, float]) -> dict[str, float]:
        results = dict(accs)
        if len(self.eps) > 1:  # plain keys = the first (primary) eps
            for name in self.attacks:
                results[acc_key(name)] = accs[acc_key(f"{name}@{self.eps[0]:g}")]
        return results


class AdversarialRobustness(_AdversarialRobustnessLogic, *shared.callback_bases()):
    """FGSM/PGD robust accuracy at the end of fit and/or test, for either Lightning namespace.

    Args:
        eps: L-inf radius in ``[0, 1]`` pixel units, or several (the first is primary).
            Paper: 0.3 (MNIST, Fashion-MNIST), 0.02 (CIFAR-10).
        attacks: names from ``robusthp.attacks.ATTACKS`` (default fgsm and pgd).
        pgd_steps: PGD steps (default 40, the paper's). pgd_alpha: step size; None ->
            ``2.5 * eps / pgd_steps`` per eps. random_start: PGD random start (default
            False), drawn from a private generator seeded ``seed``.
        num_samples: evaluate on the first N test points (default None: all).
        dataloader: data to attack. Default: the datamodule's ``test_dataloader()`` at fit
            end, the running test's loader at test end; no data at fit end moves the
            attack to the next ``trainer.test`` (see the module docstring).
        batch_to_xy: ``batch -> (x, y)``; default handles tuples and common dict keys.
        on: any of ``"fit_end"`` (``on_train_end``), ``"test_end"`` (``on_test_epoch_end``).
        batch_size: re-batch the samples for the attack (default 1000; None: the loader's
            batches). Only memory and speed depend on it, not the accuracies.
        progress: show a rich progress bar (only when stderr is a terminal).

    Defaults are ``robusthp.settings.AdversarialSettings``' (the CLI's too).

    After a run, ``self.results`` holds the metrics (see the module docstring), or
    ``{"adversarial_skipped": reason}`` when it did not run ("diverged", "non-finite
    parameters", "no data").
    """


# ---------------------------------------------------------------- helpers


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
