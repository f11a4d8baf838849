"""``GradientStatistics``: gradient norms and variances per epoch, for any Lightning project.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks.gradient_stats import GradientStatistics
    cb = GradientStatistics(num_samples=512)
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results  # {"grad_norm": ..., "grad_var": ..., "grad_norm_per_epoch": [...], ...}

ENGM's premise (Dabouei et al., arXiv 2209.01199): adversarial training has larger gradient
norms and variance than natural training. At the end of every ``every_n_epochs``-th
training epoch (``on_train_epoch_end``: gradients on, no inference mode; measured), the
statistics of ``robusthp.gradient_stats.gradient_statistics`` are computed on the same
mini-batches every epoch: a seeded subset of the training data taken once.

**The inputs the module trains on.** If the LightningModule has a method
``train_inputs(x, y) -> x_used`` (robusthp's ``ClassifierModule`` returns the adversarial
examples under adversarial training, the clean ``x`` otherwise), it is called on each
batch first, in the module's training flags, with gradients on; any Lightning project can
define it. Without it the clean ``x`` is used. It must not draw from state the training
uses other than the global RNGs (torch's CPU and the module's CUDA device, Python's,
NumPy's), which are restored.

Data, the first of: ``dataloader=``; the datamodule's ``eval_train_dataloader()``
(robusthp's: the training split unshuffled, unaugmented); the loader of the fit
(``trainer.train_dataloader``); the datamodule's ``train_dataloader()``. A loader over a
map-style dataset gives ``num_samples`` indices drawn by a generator seeded ``seed``
(collated by the loader's ``collate_fn``); any other loader gives its first
``num_samples`` points (robusthp's unshuffled split is a random draw already). The subset
is re-batched to ``batch_size`` (None: the fit's loader's batch size, the run's) and kept
to whole batches: a last partial batch is dropped unless it is the only one.

Logged each measured epoch with ``pl_module.log`` (epoch level): ``grad/norm``,
``grad/example_norm``, ``grad/mean_norm``, ``grad/var``, ``grad/batch_var`` (a NaN, the
single-batch ``batch_var``, is not logged). ``self.results``: the last epoch's
``grad_norm``, ``grad_example_norm``, ``grad_mean_norm``, ``grad_var``,
``grad_batch_var``; ``<key>_per_epoch`` lists, one value per measured epoch;
``grad_stats_epochs`` (Lightning's 0-based ``current_epoch`` of each);
``grad_stats_num_samples``, ``grad_stats_batch_size``; ``grad_stats_time_s`` (total
seconds). The history is in the callback's checkpoint state, so a resumed fit keeps it.

Rank zero only. A diverged model (``diverged`` attribute or non-finite parameters) is not
measured: one warning, ``results["grad_stats_skipped"] = reason``, earlier epochs kept. The
training is left as found: global RNG states, train/eval flags and parameters' ``.grad``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.callbacks import _lightning as shared
from robusthp.callbacks.adversarial import _device_of
from robusthp.gradient_stats import STAT_KEYS, gradient_statistics
from robusthp.per_example import DEFAULT_CHUNK
from robusthp.settings import integer
from robusthp.side_effects import gradients_on, preserved_grads

log = logging.getLogger(__name__)

_OWNER = "GradientStatistics"
LOG_NAMES = {key: "grad/" + key[len("grad_"):] for key in STAT_KEYS}  # grad_var -> grad/var
DEFAULT_NUM_SAMPLES = 512

Batches = list[tuple[Tensor, Tensor]]


class _GradientStatisticsLogic(shared.EpochHistory):
    """Lightning-free logic; ``GradientStatistics`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "grad_stats_skipped", log

    def __init__(
        self,
        num_samples: int | None = DEFAULT_NUM_SAMPLES,
        batch_size: int | None = None,
        num_batches: int | None = None,
        every_n_epochs: int = 1,
        chunk_size: int = DEFAULT_CHUNK,
        seed: int = 0,
        progress: bool = True,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
    ) -> None:
        super().__init__()
        check = functools.partial(shared.check_value, _OWNER)  # check(check_fn, value, key)
        self.num_samples = check(integer(1, optional=True), num_samples, "num_samples")
        self.batch_size = check(integer(1, optional=True), batch_size, "batch_size")
        self.num_batches = check(integer(1, optional=True), num_batches, "num_batches")
        self.every_n_epochs = check(integer(1), every_n_epochs, "every_n_epochs")
        self.chunk_size = check(integer(1), chunk_size, "chunk_size")
        self.seed = check(integer(), seed, "seed")
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise TypeError(f"{_OWNER}: batch_to_xy must be callable(batch) -> (x, y); got {batch_to_xy!r}")
        self.batch_to_xy = batch_to_xy or shared.chunk_batch_to_xy
        self.dataloader, self.progress = dataloader, bool(progress)
        self._batches: Batches | None = None  # the subset, taken once
        self._start_history(*STAT_KEYS, "epochs")

    # ------------------------------------------------------------ Lightning hooks

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        epoch = int(trainer.current_epoch)
        if (epoch + 1) % self.every_n_epochs or not shared.should_run(trainer, "train_epoch_end"):
            return
        reason = shared.skip_reason(pl_module)
        if reason is not None:
            self._skip(f"not measured at epoch {epoch}: the model has {reason}", reason)
            return
        start = time.perf_counter()
        batches = self._subset(trainer)
        if batches is None:
            return
        stats = self.measure(pl_module, batches)
        self._time_s += time.perf_counter() - start
        self._record(epoch, stats, batches)
        for key, value in stats.items():
            if math.isfinite(value):
                pl_module.log(LOG_NAMES[key], value, on_step=False, on_epoch=True,
                              rank_zero_only=True, batch_size=1)
        log.info("gradient statistics (epoch %d): %s", epoch, stats)

    # ------------------------------------------------------------ the measurement

    def measure(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        """``gradient_statistics`` on the inputs ``model`` trains on (see the module
        docstring), with the training's RNGs, flags and ``.grad`` left as found."""
        device = _device_of(model, None)
        moved = [(x.to(device).clone(), y.to(device).clone()) for x, y in batches]  # the cache stays intact
        with preserved_grads(model):  # a hook may write .grad (an attack using backward)
            inputs = _train_inputs(model, moved)
            with shared.progress_bar(self.progress, "gradient statistics") as progress:
                return gradient_statistics(model, inputs, self.chunk_size, progress=progress)

    def _subset(self, trainer: Any) -> Batches | None:
        if self._batches is not None:
            return self._batches
        batch_size = self.batch_size or shared.loader_batch_size(
            shared.first_loader(getattr(trainer, "train_dataloader", None)))
        if batch_size is None:
            self._skip("the training loader's batch size is unknown: pass batch_size=", "no batch size")
            return None
        loader, source = shared.find_loader(self._sources(trainer))
        if loader is not None:
            wanted = self.num_samples if self.num_batches is None else self.num_batches * batch_size
            try:
                x, y = shared.seeded_samples(loader, wanted, self.seed, self.batch_to_xy)
            except shared.NoSamples:
                source = f"{source} yielded no samples"
            else:
                self._batches = shared.whole_batches(x, y, batch_size)
                log.info("%s: %d samples in %d batches of %d from %s", _OWNER,
                         sum(len(b[1]) for b in self._batches), len(self._batches), batch_size, source)
                return self._batches
        self._skip(f"no training data ({source}): pass dataloader=", "no data")
        return None

    def _sources(self, trainer: Any) -> list[shared.Source]:
        if self.dataloader is not None:
            return shared.given(self.dataloader)
        return [
            shared.datamodule_source(trainer, "eval_train_dataloader"),
            shared.trainer_source(trainer, "train_dataloader"),
            shared.datamodule_source(trainer, "train_dataloader"),
        ]

    def _record(self, epoch: int, stats: dict[str, float], batches: Batches) -> None:
        for key in STAT_KEYS:
            self._history[key].append(stats[key])
        self._history["epochs"].append(epoch)
        self.results.pop(self.skip_key, None)
        self.results.update(stats)
        self.results.update({f"{key}_per_epoch": list(self._history[key]) for key in STAT_KEYS})
        self.results["grad_stats_epochs"] = list(self._history["epochs"])
        self.results["grad_stats_num_samples"] = sum(len(y) for _, y in batches)
        self.results["grad_stats_batch_size"] = len(batches[0][1])
        self.results["grad_stats_time_s"] = self._time_s



class GradientStatistics(_GradientStatisticsLogic, *shared.callback_bases()):
    """Per-epoch gradient norms and variances (ENGM's premise) for either Lightning namespace
    (module docstring: keys, logged names, data, the ``train_inputs`` hook).

    Args:
        num_samples: points of the fixed training subset (default 512; None: all).
        batch_size: mini-batch size of the statistics (default None: the fit's loader's,
            i.e. the run's; the mini-batch norm and variance depend on it).
        num_batches: take this many mini-batches instead (num_samples = num_batches x
            batch_size; it wins over num_samples).
        every_n_epochs: measure at the end of epochs n, 2n, ... (default 1: every epoch).
        chunk_size: examples per vmap call (memory only).
        seed: the subset's draw (a private generator).
        progress: show a progress bar (only when stderr is a terminal).
        dataloader, batch_to_xy: the data (default: the training data, as above) and
            ``batch -> (x, y)`` (default: tuples, common dict keys, robusthp's step chunks).
    """


def _train_inputs(model: nn.Module, batches: Batches) -> Batches:
    """Each batch's inputs through the module's ``train_inputs(x, y)`` hook, if it has one."""
    hook = getattr(model, "train_inputs", None)
    if not callable(hook):
        return batches
    out = []
    with gradients_on(), _rngs_untouched(_device_of(model, None)):
        for x, y in batches:
            with _flags_kept(model):  # each call in the training flags, whatever the last did
                out.append((hook(x, y).detach(), y))
    return out


@contextlib.contextmanager
def _flags_kept(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval flag restored on exit (whatever ``train_inputs`` does)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def _rngs_untouched(device: torch.device) -> Iterator[None]:
    """The global RNGs of ``shared.global_rng_untouched`` and ``device``'s CUDA RNG."""
    cuda = [device] if device.type == "cuda" else []
    with shared.global_rng_untouched(), torch.random.fork_rng(devices=cuda, enabled=bool(cuda)):
        yield
