"""What every robusthp callback needs to serve *any* Lightning project, in one place.

Users write ``import pytorch_lightning as pl`` or ``import lightning.pytorch as pl``;
``pytorch_lightning`` and ``lightning.pytorch`` are distinct copies of Lightning (neither
re-exports the other's classes), and a Trainer accepts only callbacks that subclass the
``Callback`` of its own namespace (tests/test_callback_*.py run both). So each public
callback is one class that subclasses a Lightning-free logic mixin *and* every
``Callback`` class that imports here.

All robusthp callbacks share from here, so they cannot drift apart: the hooks of the
after-training ones and when they skip (``StageHooks``: not on other ranks, not after an
interrupted fit, not on a diverged model; no data at fit end moves the evaluation to
``trainer.test``), the test-data evaluation most of them are (``TestDataEvaluation``:
under autograd, logged), the per-epoch ones' state (``EpochHistory``) and seeded subsets
(``seeded_samples``, ``whole_batches``), where data comes from (``find_loader``), how
samples are taken without touching the global RNGs (``gather_batches``), the progress
bar (``progress_bar``) and the checks of common arguments (``check_common``). Nothing in
this module imports Hydra.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate

from robusthp.settings import Check, integer
from robusthp.side_effects import gradients_on

log = logging.getLogger(__name__)

_NAMESPACES = ("pytorch_lightning", "lightning.pytorch")

BatchToXY = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
ProgressFn = Callable[[int, int | None], None]  # progress(done, total or None)
Source = tuple[str, Callable[[], Any]]  # (its name for messages, () -> a loader or None)

# When a robusthp callback may run (its ``on=``), and the Lightning hook it runs in.
# "fit_end" is on_train_end: the module is still on its device and gradients are on
# (on_fit_end comes after the teardown moved it to the CPU). "test_end" is
# on_test_epoch_end, under inference mode, which the callbacks turn off for themselves.
STAGES = {"fit_end": "on_train_end", "test_end": "on_test_epoch_end"}


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` class of every installed Lightning namespace."""
    bases = []
    for name in _NAMESPACES:
        try:
            bases.append(importlib.import_module(name).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError("robusthp.callbacks needs pytorch-lightning or lightning installed")
    return tuple(bases)


# ---------------------------------------------------------------------------- hooks


class NoSamples(ValueError):
    """The loader yielded no samples: missing data, as when there is no loader at all."""


def should_run(trainer: Any, stage: str) -> bool:
    """The skip rules of every robusthp callback: only global rank zero computes, and an
    interrupted fit (Ctrl-C, an exception) is not evaluated at its end."""
    if not getattr(trainer, "is_global_zero", True):
        return False
    return not (stage == "fit_end" and getattr(trainer, "interrupted", False))


def skip_reason(pl_module: torch.nn.Module) -> str | None:
    """Why a model is not worth evaluating, or None: it ``diverged`` (robusthp's
    ClassifierModule sets that on a non-finite loss) or has non-finite parameters (any
    other module). Attacking or taking Hessian products of NaNs measures nothing, costs
    a full pass, and Lanczos' eigh on a NaN tridiagonal can even raise."""
    if bool(getattr(pl_module, "diverged", False)):
        return "diverged"
    finite = [torch.isfinite(p.detach()).all() for p in pl_module.parameters()
              if p.device.type != "meta"]
    if finite and not bool(torch.stack(finite).all()):  # one device sync, not one per tensor
        return "non-finite parameters"
    return None


class StageHooks:
    """The Lightning hooks of ``STAGES`` and the rules every callback follows in them.

    A hook evaluates when its stage is in ``self.on`` and ``should_run`` allows it; then:

    * a diverged model (``skip_reason``) is not evaluated: one warning, and
      ``self.results = {self.skip_key: reason}``;
    * the data is the first of ``data_sources(trainer, stage)`` that gives a loader;
    * none at the end of fit: one warning, and the evaluation moves to the end of the next
      ``trainer.test`` (even when ``on`` lacks "test_end"): a callback must never break
      the user's fit, whose script may give its test data to ``trainer.test`` only;
    * none at the end of test: one warning, ``self.results = {self.skip_key: "no data"}``.

    Subclasses set ``owner``, ``skip_key``, ``on`` and ``results`` and define
    ``data_sources`` and ``run_stage``.
    """

    owner: str
    skip_key: str
    _log = log  # subclasses: their own module's logger, so users can filter per callback
    on: tuple[str, ...]
    results: dict[str, Any]
    _moved_to_test = False  # no data at the end of the last fit: evaluate at test end

    def on_train_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        self._moved_to_test = False
        if "fit_end" in self.on and should_run(trainer, "fit_end"):
            self._stage(trainer, pl_module, "fit_end")

    def on_test_epoch_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        if ("test_end" in self.on or self._moved_to_test) and should_run(trainer, "test_end"):
            self._moved_to_test = False  # once, not at every later test
            self._stage(trainer, pl_module, "test_end")

    def _stage(self, trainer: Any, pl_module: torch.nn.Module, stage: str) -> None:
        reason = skip_reason(pl_module)
        if reason is not None:
            self._log.warning("%s: not evaluated at %s: the model has %s", self.owner, stage, reason)
            self.results = {self.skip_key: reason}
            return
        loader, source = find_loader(self.data_sources(trainer, stage))
        if loader is not None:
            try:
                self.run_stage(trainer, pl_module, stage, loader, source)
                return
            except NoSamples:  # an empty loader is missing data too
                source = f"{source} yielded no samples"
        if stage == "fit_end":
            self._log.warning(
                "%s: no data at the end of fit (%s); will evaluate at trainer.test instead "
                "(pass dataloader= to evaluate at fit end)", self.owner, source,
            )
            self._moved_to_test = True
        else:
            self._log.warning(
                "%s: no data at the end of test (%s); not evaluated: pass dataloader= to the "
                "callback", self.owner, source,
            )
            self.results = {self.skip_key: "no data"}

    def data_sources(self, trainer: Any, stage: str) -> list[Source]:
        """Where this callback's data may come from at ``stage``, in order."""
        raise NotImplementedError

    def run_stage(
        self, trainer: Any, pl_module: torch.nn.Module, stage: str, loader: Iterable[Any], source: str
    ) -> None:
        """Evaluate ``pl_module`` on ``loader``; log and store the results."""
        raise NotImplementedError


class TestDataEvaluation(StageHooks):
    """``StageHooks`` for a callback that evaluates the trained model on test data
    (``sources_of_test_data``): ``self.evaluate(model, loader, device=)`` under autograd
    when ``needs_grad`` (test hooks run under inference mode; attacks need gradients), the
    scalar results ``logged(key, value)`` picks sent to the loggers as ``log_prefix + key``,
    one info line headed ``title``. Subclasses set ``dataloader``, ``log_prefix`` and
    ``title`` and define ``evaluate``."""

    dataloader: Iterable[Any] | None
    log_prefix: str
    title: str
    needs_grad = True

    def data_sources(self, trainer: Any, stage: str) -> list[Source]:
        """Test data only (``sources_of_test_data``)."""
        return sources_of_test_data(self.dataloader, trainer, stage)

    def logged(self, key: str, value: Any) -> bool:
        """Whether result ``key`` goes to the loggers (default: every number)."""
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def summary(self) -> dict[str, Any]:
        """What the info line shows (default: all results)."""
        return self.results

    def run_stage(
        self, trainer: Any, pl_module: torch.nn.Module, stage: str, loader: Iterable[Any], source: str
    ) -> None:
        """Evaluate, log and store now (``StageHooks`` calls it at a chosen stage)."""
        with gradients_on() if self.needs_grad else contextlib.nullcontext():
            self.results = self.evaluate(pl_module, loader, device=pl_module.device)
        log_to_loggers(trainer, {self.log_prefix + k: v for k, v in self.results.items()
                                 if self.logged(k, v)})
        self._log.info("%s (%s, data: %s): %s", self.title, stage, source, self.summary())


def log_to_loggers(trainer: Any, metrics: Mapping[str, float]) -> None:
    """Send metrics to every logger of the trainer, on global rank zero only.

    Works in hooks where ``pl_module.log`` is refused (``on_train_end``,
    ``on_fit_end``, ``on_test_end``) as well as elsewhere.
    """
    if not getattr(trainer, "is_global_zero", True):
        return
    clean = {k: float(v) for k, v in metrics.items()}
    for logger in getattr(trainer, "loggers", []) or []:
        logger.log_metrics(clean, step=trainer.global_step)


# ---------------------------------------------------------------------------- arguments


def check_value(owner: str, check: Check, value: Any, key: str) -> Any:
    """``check(value, key)`` from ``robusthp.settings`` (the coerced value), its ValueError
    prefixed with ``owner`` (the callback's name)."""
    try:
        return check(value, key)
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from None


def check_stages(owner: str, on: str | Sequence[str]) -> tuple[str, ...]:
    """``on=`` as a tuple of ``STAGES`` names (one string is one stage)."""
    stages = (on,) if isinstance(on, str) else tuple(on)
    valid = ", ".join(STAGES)
    if not stages:
        raise ValueError(f"{owner}: on= must name at least one stage; valid: {valid}")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"{owner}: unknown stage {bad[0]!r} in on={on!r}; valid: {valid}")
    return stages


def check_common(
    owner: str,
    *,
    on: str | Sequence[str],
    num_samples: int | None,
    batch_size: int | None,
    batch_to_xy: BatchToXY | None,
) -> tuple[tuple[str, ...], int | None, int | None, BatchToXY]:
    """The arguments every callback takes, checked: (stages, num_samples, batch_size,
    batch_to_xy or ``default_batch_to_xy``). num_samples, batch_size: None or >= 1."""
    stages = check_stages(owner, on)
    num_samples = check_value(owner, integer(1, optional=True), num_samples, "num_samples")
    batch_size = check_value(owner, integer(1, optional=True), batch_size, "batch_size")
    if batch_to_xy is not None and not callable(batch_to_xy):
        raise TypeError(f"{owner}: batch_to_xy must be callable(batch) -> (x, y); got {batch_to_xy!r}")
    return stages, num_samples, batch_size, batch_to_xy or default_batch_to_xy


# ---------------------------------------------------------------------------- data


def default_batch_to_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y, ...)`` tuples/lists, or dicts with ``x``/``y``, ``input``/``target``,
    ``image``/``label`` or ``images``/``labels`` keys."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for kx, ky in (("x", "y"), ("input", "target"), ("image", "label"), ("images", "labels")):
            if kx in batch and ky in batch:
                return batch[kx], batch[ky]
    raise TypeError(
        f"cannot split a batch of type {type(batch).__name__} into (inputs, targets); "
        "pass batch_to_xy=callable(batch) -> (x, y) to the callback"
    )


def given(dataloader: Iterable[Any] | None) -> list[Source]:
    """The callback's own ``dataloader=`` as a source (none when not given)."""
    return [] if dataloader is None else [("dataloader=", lambda: dataloader)]


def datamodule_source(trainer: Any, name: str) -> Source:
    """The trainer's datamodule's ``name()`` as a source: None when there is no
    datamodule, no such method, or only Lightning's placeholder (which raises)."""

    def get() -> Any:
        dm = getattr(trainer, "datamodule", None)
        method = getattr(dm, name, None) if dm is not None else None
        if not callable(method) or _lightning_placeholder(dm, name):
            return None
        return first_loader(method())

    return f"the datamodule's {name}()", get


def trainer_source(trainer: Any, attr: str) -> Source:
    """The trainer's ``attr`` (``train_dataloader``, ``test_dataloaders``: the loader(s)
    Lightning runs on, however the user passed them) as a source."""
    return f"trainer.{attr}", lambda: first_loader(getattr(trainer, attr, None))


def sources_of_test_data(dataloader: Any, trainer: Any, stage: str) -> list[Source]:
    """Where a test-data callback's samples come from: ``dataloader=`` if given, else at fit
    end the datamodule's ``test_dataloader()``, at test end the running test's loaders."""
    if dataloader is not None:
        return given(dataloader)
    if stage == "fit_end":
        return [datamodule_source(trainer, "test_dataloader")]
    return [trainer_source(trainer, "test_dataloaders")]


def find_loader(sources: Iterable[Source]) -> tuple[Iterable[Any] | None, str]:
    """The first source's loader that exists: ``(loader, source name)``; else
    ``(None, why)``. A source that raises (a datamodule whose ``test_dataloader()``
    needs ``setup("test")``, say) is unavailable now, not an error: the hook must not break
    the fit, and Lightning reports the same failure itself if the user runs that stage."""
    tried = []
    for name, get in sources:
        try:
            loader = get()
        except Exception as err:  # noqa: BLE001 - any failure means "not available now"
            first_line = (str(err).splitlines() or [""])[0][:200]
            tried.append(f"{name}: failed, {type(err).__name__}: {first_line}")
            continue
        if loader is not None:
            return loader, name
        tried.append(f"{name}: none")
    return None, "; ".join(tried) or "no source"


def first_loader(loaders: Any) -> Iterable[Any] | None:
    """The first loader of what Lightning holds: a loader, a list/tuple/dict of loaders
    or a ``CombinedLoader`` (whose batches are tuples with indices, so it is unwrapped)."""
    while True:
        if _is_combined_loader(loaders):
            loaders = loaders.iterables
        elif isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, Mapping):
            loaders = next(iter(loaders.values()), None)
        else:
            return loaders


def _is_combined_loader(obj: Any) -> bool:
    return type(obj).__name__ == "CombinedLoader" and hasattr(obj, "iterables")


def _lightning_placeholder(obj: Any, name: str) -> bool:
    """Whether ``type(obj).name`` is Lightning's own default (``LightningDataModule``'s
    ``test_dataloader()`` raises "must be implemented"), not the user's method."""
    owner = next((k for k in type(obj).__mro__ if name in vars(k)), None)
    return owner is not None and owner.__module__.split(".")[0] in ("pytorch_lightning", "lightning")


@contextlib.contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Restore torch's CPU, Python's ``random`` and NumPy's global RNG states on exit.

    Iterating a DataLoader draws its base seed from torch's global generator (shuffled or
    not), and augmentations in the main process may draw from any of the three.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def take_samples(
    loader: Iterable[Any],
    num_samples: int | None,
    batch_to_xy: BatchToXY,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_samples`` (x, y) pairs of ``loader`` as batches (all when None)."""
    batches, seen = [], 0
    for batch in loader:
        x, y = batch_to_xy(batch)
        if num_samples is not None:
            x, y = x[: num_samples - seen], y[: num_samples - seen]
        batches.append((x, y))
        seen += len(y)
        if num_samples is not None and seen >= num_samples:
            break
    if seen == 0:
        raise NoSamples("no data to evaluate on: the dataloader yielded no samples")
    return batches


def rebatch(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same samples, in order, in batches of ``batch_size`` (None: as they are)."""
    if batch_size is None:
        return list(batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def gather_batches(
    loader: Iterable[Any],
    num_samples: int | None,
    batch_to_xy: BatchToXY,
    batch_size: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``take_samples`` with the global RNGs left as found, re-batched to ``batch_size``."""
    with global_rng_untouched():
        batches = take_samples(loader, num_samples, batch_to_xy)
    return rebatch(batches, batch_size)


def chunk_batch_to_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``default_batch_to_xy``, and robusthp's ``StepChunks`` batches (a list of
    ``(x, y)`` pairs, one per SGD step) concatenated."""
    if isinstance(batch, list) and batch and all(isinstance(b, (tuple, list)) for b in batch):
        pairs = [default_batch_to_xy(b) for b in batch]
        return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
    return default_batch_to_xy(batch)


def seeded_samples(
    loader: Any, num_samples: int | None, seed: int, batch_to_xy: BatchToXY
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` (x, y) points of ``loader`` (None: all), concatenated, detached
    copies, the global RNGs left as found. A map-style ``loader.dataset``: indices drawn by
    a generator seeded ``seed``, collated by ``loader.collate_fn``; any other loader: the
    first ``num_samples`` it yields. Raises ``NoSamples`` when there are none."""
    dataset = getattr(loader, "dataset", None)
    with global_rng_untouched():
        if _map_style(dataset):
            n = len(dataset)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            order = order[: n if num_samples is None else num_samples]
            if len(order) == 0:
                raise NoSamples("no data: the dataset is empty")
            collate = getattr(loader, "collate_fn", None) or default_collate
            x, y = batch_to_xy(collate([dataset[int(i)] for i in order]))
        else:
            batches = take_samples(loader, num_samples, batch_to_xy)
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return x.detach().clone(), y.detach().clone()


def whole_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` split in batches of ``batch_size``; a last partial batch is dropped
    unless it is the only one (a smaller batch has other mini-batch statistics)."""
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    if len(batches) > 1 and len(batches[-1][1]) < batch_size:
        batches.pop()
    return batches


def loader_batch_size(loader: Any) -> int | None:
    """A loader's batch size: ``batch_size`` (DataLoader, robusthp's torch.TensorBatches), its
    batch sampler's, or robusthp's ``StepChunks``' wrapped batches'; None if unknown."""
    for holder in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "batches", None)):
        size = getattr(holder, "batch_size", None)
        if isinstance(size, int) and size >= 1:
            return size
    return None


def _map_style(dataset: Any) -> bool:
    return (dataset is not None and not isinstance(dataset, IterableDataset)
            and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"))


# ---------------------------------------------------------------------------- per-epoch state


class EpochHistory:
    """The state of a callback that measures during a fit (``GradientStatistics``,
    ``RobustValidation``): its per-epoch history, time spent and results, saved in
    Lightning checkpoints so a resumed fit keeps them; a skip warns once per reason.
    Subclasses set ``owner`` (the name in messages), ``skip_key`` (the results key saying
    why a measurement was skipped) and ``_log``, and call ``_start_history``."""

    owner: str
    skip_key: str
    _log = log  # subclasses: their own module's logger, as in StageHooks

    def _start_history(self, *keys: str) -> None:
        self.results: dict[str, Any] = {}
        self._history: dict[str, list] = {key: [] for key in keys}
        self._time_s = 0.0
        self._warned: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """The per-epoch history, saved in Lightning checkpoints (a resumed fit keeps it)."""
        return {"history": self._history, "time_s": self._time_s, "results": self.results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = {k: list(v) for k, v in state_dict["history"].items()}
        self._time_s = float(state_dict["time_s"])
        self.results = dict(state_dict["results"])

    def _skip(self, message: str, reason: str) -> None:
        if reason not in self._warned:  # once per reason, not every epoch
            self._log.warning("%s: %s", self.owner, message)
            self._warned.add(reason)
        self.results[self.skip_key] = reason


# ---------------------------------------------------------------------------- progress


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[ProgressFn]:
    """A transient rich progress bar on stderr, fed by ``progress(done, total)`` calls
    (total None: unknown). Shown only when ``enabled`` and stderr is a terminal, so logs
    and captured output get no bar; otherwise the updates do nothing."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not (enabled and callable(isatty) and isatty()):
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
