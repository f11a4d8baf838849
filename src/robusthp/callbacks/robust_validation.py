"""``RobustValidation``: PGD accuracy on validation data after every epoch, for any Lightning project.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks.robust_validation import RobustValidation
    cb = RobustValidation(eps=0.3, steps=10)
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)   # logs val/robust_acc per epoch
    cb.results  # {"robust_val_acc": ..., "robust_val_acc_per_epoch": [...], ...}

Robust overfitting (robust test accuracy peaking and then falling while the training goes
on) shows only when robust accuracy is measured during training: the end-of-fit evaluation
sees the last epoch alone. At the end of every validation epoch of a fit whose epoch is a
multiple of ``every_n_epochs`` (``on_validation_epoch_end``; not the sanity check, not
``trainer.validate``), L-inf PGD (``robusthp.attacks.pgd``, the code the final evaluation
runs) attacks a fixed subset of the validation data, taken once: ``num_samples`` points,
seeded by ``seed`` for map-style datasets, else the loader's first (see
``robusthp.callbacks._lightning.seeded_samples``). Every point counts (clean errors
too), as in ``robusthp.attacks.robust_accuracy``, which computes it.

The hook runs under ``torch.no_grad``: gradients are turned on for the attack only
(``gradients_on``) and the batches are cloned. PGD runs in eval mode and full precision,
with a private generator seeded ``seed`` each epoch (the same random start every epoch, so
epochs compare). ``eps_space="normalized"`` reads eps in units of the model's input
normalization (eps x std_c pixels per channel; std from ``std=`` or the model's
``Normalize`` layer), as ``AdversarialRobustness`` does, whose helpers this uses; a model
without one fails at fit start, not after the first epoch.

Data: ``dataloader=``, else the loaders the validation runs on (``trainer.val_dataloaders``,
the first of several). **Validation off** (no val loader, ``limit_val_batches=0``): the hook
never runs and ``results`` stays empty.

Logged: ``val/robust_acc`` (``pl_module.log``, epoch level: a column of metrics.csv).
``self.results``: ``robust_val_acc`` (last), ``robust_val_acc_per_epoch``,
``val_clean_acc_per_epoch`` (clean accuracy of the same subset), ``robust_val_epochs``
(Lightning's 0-based ``current_epoch``), ``robust_val_best_acc``, ``robust_val_best_epoch``
(the first epoch reaching the best), ``robust_val_num_samples``, ``robust_val_time_s``
(total seconds). The history is in the checkpoint state, so a resumed fit keeps it.

Rank zero only; a diverged model is not attacked (one warning,
``results["robust_val_skipped"] = reason``, earlier epochs kept). The model's train/eval
flags, parameters' ``.grad`` and the global RNGs are left as found.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks import bind, check_attack_args, robust_accuracy
from robusthp.callbacks import _lightning as shared
from robusthp.callbacks.adversarial import Reading, _as_std, _device_of, _model_std
from robusthp.settings import EPS_SPACES, boolean, integer, one_of
from robusthp.side_effects import gradients_on

log = logging.getLogger(__name__)

_OWNER = "RobustValidation"
LOG_NAME = "val/robust_acc"
DEFAULT_NUM_SAMPLES = 500
DEFAULT_BATCH_SIZE = 500  # attack batch when the validation loader's size is unknown

Batches = list[tuple[Tensor, Tensor]]


class _RobustValidationLogic(shared.EpochHistory):
    """Lightning-free logic; ``RobustValidation`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "robust_val_skipped", log

    def __init__(
        self,
        eps: float,
        eps_space: str = "pixel",
        steps: int = 10,
        alpha: float | None = None,
        random_start: bool = False,
        num_samples: int | None = DEFAULT_NUM_SAMPLES,
        batch_size: int | None = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        progress: bool = True,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise ValueError(f"{_OWNER}: eps must be one number >= 0; got {eps!r}")
        try:
            check_attack_args(eps=eps, alpha=alpha, steps=steps)
        except ValueError as err:
            raise ValueError(f"{_OWNER}: {err}") from None
        check = functools.partial(shared.check_value, _OWNER)  # check(check_fn, value, key)
        self.eps, self.steps = float(eps), steps
        self.alpha = None if alpha is None else float(alpha)
        self.eps_space = check(one_of(*EPS_SPACES), eps_space, "eps_space")
        self.random_start = check(boolean, random_start, "random_start")
        self.num_samples = check(integer(1, optional=True), num_samples, "num_samples")
        self.batch_size = check(integer(1, optional=True), batch_size, "batch_size")
        self.every_n_epochs = check(integer(1), every_n_epochs, "every_n_epochs")
        self.seed = check(integer(), seed, "seed")
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise TypeError(f"{_OWNER}: batch_to_xy must be callable(batch) -> (x, y); got {batch_to_xy!r}")
        try:
            self.std = None if std is None else _as_std(std)
        except ValueError as err:  # its message names AdversarialRobustness
            raise ValueError(str(err).replace("AdversarialRobustness", _OWNER)) from None
        self.batch_to_xy = batch_to_xy or shared.chunk_batch_to_xy
        self.dataloader, self.progress = dataloader, bool(progress)
        self._batches: Batches | None = None  # the subset, taken once
        self._start_history("robust", "clean", "epochs")

    # ------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self.reading(pl_module)  # a normalized eps without a std fails now, not after epoch 1

    def on_validation_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if not self._due(trainer):
            return
        epoch = int(trainer.current_epoch)
        reason = shared.skip_reason(pl_module)
        if reason is not None:
            self._skip(f"not attacked at epoch {epoch}: the model has {reason}", reason)
            return
        start = time.perf_counter()
        batches = self._subset(trainer)
        if batches is None:
            return
        accs = self.evaluate(pl_module, batches)
        self._time_s += time.perf_counter() - start
        self._record(epoch, accs)
        pl_module.log(LOG_NAME, accs["pgd_acc"], on_step=False, on_epoch=True,
                      rank_zero_only=True, batch_size=1)
        log.info("robust validation (epoch %d): clean %.4f, pgd %.4f", epoch,
                 accs["clean_acc"], accs["pgd_acc"])

    # ------------------------------------------------------------ the evaluation

    def reading(self, model: nn.Module) -> Reading:
        """eps in ``eps_space`` and its pixel box per channel (``AdversarialRobustness``'s)."""
        if self.eps_space == "pixel":
            return Reading(self.eps, "pixel", (self.eps,))
        std = self.std if self.std is not None else _model_std(model)
        if std is None:
            raise ValueError(
                f"{_OWNER}: eps_space='normalized' needs the model's input std: pass std=(...) "
                "or normalize inside the model with robusthp.models.normalize.Normalize"
            )
        return Reading(self.eps, "normalized", tuple(self.eps * s for s in std))

    def evaluate(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        """``{"clean_acc", "pgd_acc", "num_samples"}`` of ``model`` on ``batches`` (moved to
        the model's device), by ``robust_accuracy`` with PGD at this callback's settings."""
        device = _device_of(model, None)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        attack = bind("pgd", eps=self.reading(model).pixel_box(device), alpha=self.alpha,
                      steps=self.steps, random_start=self.random_start, generator=generator)
        with gradients_on(), shared.progress_bar(self.progress, "robust validation") as progress:
            moved = [(x.to(device).clone(), y.to(device).clone()) for x, y in batches]
            return robust_accuracy(model, moved, {"pgd": attack}, progress=progress)

    def _due(self, trainer: Any) -> bool:
        fitting = getattr(getattr(trainer, "state", None), "fn", None) == "fit"
        if not fitting or getattr(trainer, "sanity_checking", False):
            return False
        if (int(trainer.current_epoch) + 1) % self.every_n_epochs:
            return False
        return shared.should_run(trainer, "validation_epoch_end")

    def _subset(self, trainer: Any) -> Batches | None:
        if self._batches is not None:
            return self._batches
        sources = (shared.given(self.dataloader) if self.dataloader is not None
                   else [shared.trainer_source(trainer, "val_dataloaders")])
        loader, source = shared.find_loader(sources)
        if loader is not None:
            try:
                with gradients_on():  # plain tensors, not inference ones
                    x, y = shared.seeded_samples(loader, self.num_samples, self.seed, self.batch_to_xy)
            except shared.NoSamples:
                source = f"{source} yielded no samples"
            else:
                size = self.batch_size or shared.loader_batch_size(loader) or DEFAULT_BATCH_SIZE
                self._batches = list(zip(x.split(size), y.split(size), strict=True))
                return self._batches
        self._skip(f"no validation data ({source}): pass dataloader=", "no data")
        return None

    def _record(self, epoch: int, accs: dict[str, float]) -> None:
        h = self._history
        h["robust"].append(accs["pgd_acc"])
        h["clean"].append(accs["clean_acc"])
        h["epochs"].append(epoch)
        best = max(range(len(h["robust"])), key=lambda i: (h["robust"][i], -i))  # first best
        self.results.pop(self.skip_key, None)
        self.results.update({
            "robust_val_acc": accs["pgd_acc"],
            "robust_val_acc_per_epoch": list(h["robust"]),
            "val_clean_acc_per_epoch": list(h["clean"]),
            "robust_val_epochs": list(h["epochs"]),
            "robust_val_best_acc": h["robust"][best],
            "robust_val_best_epoch": h["epochs"][best],
            "robust_val_num_samples": int(accs["num_samples"]),
            "robust_val_time_s": self._time_s,
        })



class RobustValidation(_RobustValidationLogic, *shared.callback_bases()):
    """PGD accuracy on a fixed validation subset after every n-th epoch of a fit, for either
    Lightning namespace (module docstring: keys, data, when it runs).

    Args:
        eps: the L-inf radius, in the units of ``eps_space``.
        eps_space: ``"pixel"`` ([0, 1] pixels) or ``"normalized"`` (eps x the input std).
        steps: PGD steps (default 10: cheap enough for every epoch; the final evaluation
            uses its own, 40 by default).
        alpha: step size in pixels, as ``AdversarialRobustness``'s ``pgd_alpha``; None:
            ``2.5 * eps / steps`` (per channel when normalized).
        random_start: PGD's random start, from a generator seeded ``seed`` every epoch.
        num_samples: validation points attacked (default 500; None: all of the loader).
        batch_size: the attack's batches (default None: the validation loader's, else 500).
        every_n_epochs: attack after epochs n, 2n, ... (default 1).
        seed: the subset's draw and the random start.
        progress: show a progress bar (only when stderr is a terminal).
        dataloader, batch_to_xy: the data (default: the fit's validation loader) and
            ``batch -> (x, y)``.
        std: the model's input std per channel for ``eps_space="normalized"`` (default:
            its ``Normalize`` layer's).
    """

