"""``HessianEigenvalues``: the principal curvature of the training loss, for any Lightning project.

    trainer = pl.Trainer(callbacks=[HessianEigenvalues(top_n=1)])   # either Lightning namespace
    trainer.fit(model, datamodule=dm)                               # logs hessian/top_eig

The logic lives in a Lightning-free mixin; the public class also subclasses the ``Callback``
class of every installed Lightning namespace (see ``_lightning.py``).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from robusthp.callbacks._lightning import (
    STAGES,
    callback_bases,
    datamodule_loader,
    default_batch_to_xy,
    log_to_loggers,
    rebatch,
    take_samples,
)
from robusthp.hessian import HessianResult, backends, top_eigenvalues

log = logging.getLogger(__name__)

_UNSTABLE_LOADER_WARNING = (
    "HessianEigenvalues: the datamodule has no eval_train_dataloader(); using "
    "train_dataloader(), whose shuffling or augmentation makes the Hessian's data subset "
    "vary between runs. Add eval_train_dataloader() (training split, unshuffled, "
    "unaugmented) or pass dataloader=."
)


@contextlib.contextmanager
def _global_rng_untouched() -> Iterator[None]:
    """Restore torch's CPU, Python's and NumPy's global RNG states on exit.

    Iterating a DataLoader draws its base seed from torch's global generator (shuffled or
    not), and augmentations in the main process draw more.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"HessianEigenvalues: {name} must be {allowed}, got {value!r}")


class _HessianLogic:
    """Top eigenvalues of the training-loss Hessian at the end of fit and/or test.

    Args:
        top_n: how many of the largest eigenvalues (the paper uses the top one).
        backend: "pyhessian" (the default: PyHessian's power iteration, the method of Yao et
            al. that the study names; largest-magnitude eigenvalues) or "lanczos" (robusthp's
            Lanczos: 1.2-2.3x fewer Hessian-vector products for the same accuracy on
            trained MNIST nets, and far more accurate at the same tol; algebraically
            largest). See ``robusthp.hessian`` and benchmarks/hessian.py.
        num_samples: the first N training samples the loss is averaged over. 4096 by
            default: PyHessian's authors (Yao et al., arXiv 1912.07145) report that the top
            eigenvalue on CIFAR-10 is stable from about 4096 points on, while each
            Hessian-vector product costs about two training steps per sample, so the whole
            split (None) multiplies the cost by ~10-15 for little change.
        max_iter, tol, seed: passed to ``top_eigenvalues`` (tol: relative; seed: the start
            vector, from a private generator).
        batch_size: re-batch the samples for the products (None: the loader's batches).
            Larger batches are faster, smaller ones need less memory.
        dataloader: the data to use; by default the trainer's datamodule's
            ``eval_train_dataloader()`` (robusthp's: training split, unshuffled,
            unaugmented), else its ``train_dataloader()`` (with a warning), else the
            training loader of the running fit.
        batch_to_xy: batch -> (x, y) for batches that are not (x, y, ...) tuples or dicts
            with x/y, input/target, image/label or images/labels keys.
        on: stages to measure at, among "fit_end" and "test_end" (or one string).
        progress: show a progress bar of Hessian-vector products and log the result.
        loss_fn: mean-reduced loss(logits, y); default cross-entropy (the training loss).
        reuse_graph: keep the per-batch gradient graphs across products (faster; set False
            when the graphs of ``num_samples`` samples do not fit in memory).

    The LightningModule's ``forward(x)`` must return logits. Logs ``hessian/top_eig``,
    ``hessian/eig_1..top_n``, ``hessian/num_hvp`` and ``hessian/seconds`` to the trainer's
    loggers, and keeps ``self.results`` (hessian_top_eig, hessian_eigs, hessian_backend,
    hessian_num_hvp, hessian_converged, hessian_time_s, hessian_num_samples). Computed on
    global rank zero only. Leaves module modes, ``.grad`` and the global RNGs as found.
    """

    def __init__(
        self,
        top_n: int = 1,
        backend: str = "pyhessian",
        num_samples: int | None = 4096,
        max_iter: int = 100,
        tol: float = 1e-3,
        seed: int = 0,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
        on: str | Sequence[str] = ("fit_end",),
        progress: bool = True,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reuse_graph: bool = True,
    ):
        super().__init__()
        if backend not in backends():
            raise ValueError(
                f"HessianEigenvalues: unknown backend {backend!r}; valid: {', '.join(backends())}"
            )
        _positive_int("top_n", top_n)
        _positive_int("num_samples", num_samples, allow_none=True)
        _positive_int("max_iter", max_iter)
        _positive_int("batch_size", batch_size, allow_none=True)
        if not tol > 0:
            raise ValueError(f"HessianEigenvalues: tol must be > 0, got {tol!r}")
        stages = (on,) if isinstance(on, str) else tuple(on)
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise ValueError(
                f"HessianEigenvalues: on={on!r} is not allowed; choose among {', '.join(STAGES)}"
            )
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise TypeError("HessianEigenvalues: batch_to_xy must be callable(batch) -> (x, y)")
        self.top_n, self.backend, self.num_samples = top_n, backend, num_samples
        self.max_iter, self.tol, self.seed, self.batch_size = max_iter, tol, seed, batch_size
        self.dataloader, self.batch_to_xy, self.on = dataloader, batch_to_xy, stages
        self.progress, self.loss_fn, self.reuse_graph = progress, loss_fn, reuse_graph
        self.results: dict[str, Any] = {}

    # ----------------------------------------------------------------- Lightning hooks

    def on_train_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        if "fit_end" in self.on and not getattr(trainer, "interrupted", False):
            self.measure(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        if "test_end" in self.on:
            self.measure(trainer, pl_module)

    # ----------------------------------------------------------------- logic

    def measure(self, trainer: Any, pl_module: torch.nn.Module) -> HessianResult | None:
        """Compute, log and store the eigenvalues now (global rank zero only)."""
        if not getattr(trainer, "is_global_zero", True):
            return None
        batches = self._batches(trainer)
        result = self._compute(pl_module, batches)
        num_samples = sum(len(y) for _, y in batches)
        metrics = {"hessian/top_eig": result.top}
        metrics.update({f"hessian/eig_{k}": v for k, v in enumerate(result.eigenvalues, 1)})
        metrics.update({"hessian/num_hvp": result.num_hvp, "hessian/seconds": result.seconds})
        log_to_loggers(trainer, metrics)
        self.results = {
            "hessian_top_eig": result.top,
            "hessian_eigs": list(result.eigenvalues),
            "hessian_backend": result.backend,
            "hessian_num_hvp": result.num_hvp,
            "hessian_converged": result.converged,
            "hessian_time_s": result.seconds,
            "hessian_num_samples": num_samples,
        }
        if not result.converged:
            log.warning(
                "HessianEigenvalues: %s did not reach tol=%g in max_iter=%d (residuals %s)",
                result.backend,
                self.tol,
                self.max_iter,
                result.residuals,
            )
        if self.progress:
            log.info(
                "Hessian top-%d eigenvalues %s (%s, %d samples, %d HVPs, %.1f s)",
                self.top_n,
                result.eigenvalues,
                result.backend,
                num_samples,
                result.num_hvp,
                result.seconds,
            )
        return result

    def _loader(self, trainer: Any) -> Iterable[Any]:
        if self.dataloader is not None:
            return self.dataloader
        loader = datamodule_loader(trainer, ("eval_train_dataloader",))
        if loader is not None:
            return loader
        loader = datamodule_loader(trainer, ("train_dataloader",))
        if loader is None:
            loader = getattr(trainer, "train_dataloader", None)
        if loader is None:
            raise ValueError(
                "HessianEigenvalues: no training data found (no datamodule and no running "
                "fit); pass dataloader= to the callback"
            )
        log.warning(_UNSTABLE_LOADER_WARNING)
        return loader

    def _batches(self, trainer: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        to_xy = self.batch_to_xy or default_batch_to_xy
        with _global_rng_untouched():
            batches = take_samples(self._loader(trainer), self.num_samples, to_xy)
        if self.batch_size is not None:
            batches = rebatch(batches, self.batch_size)
        return batches

    def _compute(self, pl_module: torch.nn.Module, batches) -> HessianResult:
        bar = None
        if self.progress:
            from tqdm import tqdm  # a dependency of Lightning

            bar = tqdm(desc=f"Hessian ({self.backend})", unit="HVP", leave=False)
        try:
            return top_eigenvalues(
                pl_module,
                batches,
                top_n=self.top_n,
                backend=self.backend,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self.seed,
                loss_fn=self.loss_fn,
                reuse_graph=self.reuse_graph,
                on_hvp=None if bar is None else (lambda _count: bar.update(1)),
            )
        finally:
            if bar is not None:
                bar.close()


class HessianEigenvalues(_HessianLogic, *callback_bases()):
    __doc__ = _HessianLogic.__doc__
