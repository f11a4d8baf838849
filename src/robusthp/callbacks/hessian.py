"""``HessianEigenvalues``: the principal curvature of the training loss, for any Lightning project.

    trainer = pl.Trainer(callbacks=[HessianEigenvalues(top_n=1)])   # either Lightning namespace
    trainer.fit(model, datamodule=dm)                               # logs hessian/top_eig

Which loss (``split=``, ``eval.hessian.split`` in the CLI): "train" (the default) measures
the training loss, as the paper's "loss landscape of training"; "test" measures the test
loss, as HessianFlow's code does (Yao et al. compute their Hessians on test batches).
With split="test" every result key gets the suffix ``@test`` (``hessian_top_eig@test``,
``hessian_converged@test``, ..., logger key ``hessian/top_eig@test``; its time is
``hessian@test_time_s``, i.e. ``timings_s["hessian@test"]`` in results.json), so both
splits can sit side by side in one results.json; ``hessian_split`` (``hessian_split@test``)
records the split.

The logic lives in a Lightning-free mixin; the public class also subclasses the ``Callback``
class of every installed Lightning namespace. Hooks, skip rules (global rank zero only, no
evaluation of an interrupted fit or of a diverged model), data rules, the RNG guard, the
progress bar and the common argument checks are shared with ``AdversarialRobustness``
(``_lightning.py``); the keyword defaults are ``robusthp.settings.HessianSettings``' (the
CLI's too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from robusthp.callbacks import _lightning as shared
from robusthp.hessian import (
    HessianResult,
    backends,
    hessian_density,
    hessian_trace,
    layer_top_eigenvalues,
    top_eigenvalues,
)
from robusthp.settings import HESSIAN_SPLITS, HessianSettings, boolean, integer, one_of, tolerance

log = logging.getLogger(__name__)

_OWNER = "HessianEigenvalues"
# sources that need no warning: the user's, or made for evaluation (unshuffled, unaugmented)
_STABLE = ("dataloader=", "the datamodule's eval_train_dataloader()",
           "the datamodule's test_dataloader()", "trainer.test_dataloaders")

_UNSTABLE_LOADER_WARNING = (
    "HessianEigenvalues: using %s, whose shuffling or augmentation makes the Hessian's data "
    "subset vary between runs; pass dataloader= (training split, unshuffled, unaugmented) "
    "or give the datamodule an eval_train_dataloader()"
)


class _HessianLogic(shared.StageHooks):
    """Top eigenvalues of the training-loss (or test-loss) Hessian at the end of fit and/or test.

    Args:
        top_n: how many of the largest eigenvalues (default 1: the paper uses the top one).
        backend: "pyhessian" (the default: PyHessian's power iteration, the method of Yao et
            al. that the study names; largest-magnitude eigenvalues) or "lanczos" (robusthp's
            Lanczos: 1.2-2.3x fewer Hessian-vector products for the same accuracy on
            trained MNIST nets, and far more accurate at the same tol; algebraically
            largest). See ``robusthp.hessian`` and benchmarks/hessian.py.
        split: "train" (default) or "test": the data whose loss is measured (see
            ``dataloader``); "test" suffixes every result and logger key with ``@test``
            (see the module docstring).
        num_samples: the first N samples of the split the loss is averaged over. 4096 by
            default: PyHessian's authors (Yao et al., arXiv 1912.07145) report that the top
            eigenvalue on CIFAR-10 is stable from about 4096 points on, while each
            Hessian-vector product costs about two training steps per sample, so the whole
            split (None) multiplies the cost by ~10-15 for little change.
        max_iter, tol, seed: passed to ``top_eigenvalues`` (defaults 100, 1e-3 relative, 0;
            seed: the start vector, from a private generator).
        batch_size: re-batch the samples for the products (default 1024; None: the
            loader's batches). Larger batches are faster, smaller ones need less memory;
            the loss, hence the eigenvalues, is the same up to float rounding.
        dataloader: the data to use, whatever the split (it wins). By default, with
            split="train", at either stage, the first of: the datamodule's
            ``eval_train_dataloader()`` (robusthp's: training split, unshuffled,
            unaugmented); the loader of the fit (``trainer.train_dataloader``, whatever
            was given to ``fit``: plain loader, datamodule or the module's own hook; the
            first of several; kept from the last fit for a later ``trainer.test``, where
            Lightning no longer holds it); the datamodule's ``train_dataloader()``. All but
            the first warn that shuffling or augmentation makes the subset vary; never the
            test data. With split="test", as ``AdversarialRobustness``: at fit end the
            datamodule's ``test_dataloader()``, at test end the loaders the running test
            runs on (``trainer.test_dataloaders``, the first of several); never the
            training data. None at all at fit end: one warning and the measurement moves to
            the next ``trainer.test``; none there either: one warning,
            ``results == {"hessian_skipped": "no data"}`` (``hessian_skipped@test``).
        batch_to_xy: batch -> (x, y) for batches that are not (x, y, ...) tuples or dicts
            with x/y, input/target, image/label or images/labels keys.
        on: stages to measure at, among "fit_end" and "test_end" (or one string).
        progress: show a progress bar of Hessian-vector products (only when stderr is a
            terminal) and log the result.
        loss_fn: mean-reduced loss(logits, y); default cross-entropy (the training loss).
        reuse_graph: False (default): each Hessian-vector product runs batch by batch and
            frees each batch's graph, so memory is bounded by ``batch_size`` (C1 on 1,024
            CIFAR images: 0.17x the peak memory, 1.3x the time per product;
            benchmarks/hessian_memory.py). True: keep the graph of all ``num_samples``
            samples across products (faster when it fits in memory).
        trace: also tr H by Hutchinson's estimator (``robusthp.hessian.hessian_trace``) on
            the same samples, until its standard error is ``trace_tol`` of it (relative,
            default 0.05) or ``trace_max_iter`` vectors (default 100).
        density: also the eigenvalue density by stochastic Lanczos quadrature
            (``hessian_density``, Ghorbani et al. 2019): ``density_vectors`` start vectors
            of ``density_iter`` Lanczos steps each (defaults 1 and 20; PyHessian's are 1 and
            100, 5x the cost for the same outliers: ``robusthp.settings``).
        per_layer: also the top eigenvalue of each module's diagonal Hessian block
            (``layer_top_eigenvalues``: Lanczos to ``max_iter`` and ``tol``).

    Defaults are ``robusthp.settings.HessianSettings``'. The LightningModule's
    ``forward(x)`` must return logits. Logs ``hessian/top_eig``, ``hessian/eig_1..top_n``,
    ``hessian/num_hvp`` and ``hessian/seconds`` to the trainer's loggers, and keeps
    ``self.results`` (hessian_top_eig, hessian_eigs (a list), hessian_backend,
    hessian_num_hvp, hessian_converged, hessian_time_s, hessian_num_samples, hessian_split;
    with ``trace``: hessian_trace, hessian_trace_se, hessian_trace_num_hvp,
    hessian_trace_converged, hessian_trace_time_s, logged as ``hessian/trace`` and
    ``hessian/trace_se``; with ``density``: hessian_density, a dict of per-vector "nodes"
    and "weights" lists and "dim" (``robusthp.hessian.smoothed_density`` draws it),
    hessian_density_num_hvp, hessian_density_time_s; with ``per_layer``:
    hessian_layer_top_eig, a dict module name -> value, logged as
    ``hessian/layer_top_eig/<name>``, hessian_layer_num_hvp, hessian_layer_time_s; each suffixed
    ``@test`` with split="test", the time as ``hessian@test_time_s``). Computed on global
    rank zero only; an interrupted fit is not measured, nor is a diverged model (its
    ``diverged`` attribute or non-finite parameters: one warning, ``results ==
    {"hessian_skipped": "diverged"}``). Leaves module modes, ``.grad`` and the global RNGs
    (torch's CPU, Python's, NumPy's) as found.
    """

    owner, skip_key, _log = _OWNER, "hessian_skipped", log

    def __init__(
        self,
        top_n: int = HessianSettings.top_n,
        backend: str = HessianSettings.backend,
        num_samples: int | None = HessianSettings.num_samples,
        max_iter: int = HessianSettings.max_iter,
        tol: float = HessianSettings.tol,
        seed: int = 0,
        batch_size: int | None = HessianSettings.batch_size,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        progress: bool = True,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reuse_graph: bool = False,
        split: str = HessianSettings.split,
        trace: bool = HessianSettings.trace,
        trace_tol: float = HessianSettings.trace_tol,
        trace_max_iter: int = HessianSettings.trace_max_iter,
        density: bool = HessianSettings.density,
        density_vectors: int = HessianSettings.density_vectors,
        density_iter: int = HessianSettings.density_iter,
        per_layer: bool = HessianSettings.per_layer,
    ):
        super().__init__()
        if backend not in backends():
            raise ValueError(
                f"{_OWNER}: unknown backend {backend!r}; valid: {', '.join(backends())}"
            )
        self.top_n = shared.check_value(_OWNER, integer(1), top_n, "top_n")
        self.max_iter = shared.check_value(_OWNER, integer(1), max_iter, "max_iter")
        self.tol = shared.check_value(_OWNER, tolerance, tol, "tol")
        self.trace, self.density, self.per_layer = (
            shared.check_value(_OWNER, boolean, value, name)
            for value, name in ((trace, "trace"), (density, "density"), (per_layer, "per_layer"))
        )
        self.trace_tol = shared.check_value(_OWNER, tolerance, trace_tol, "trace_tol")
        self.trace_max_iter = shared.check_value(
            _OWNER, integer(2), trace_max_iter, "trace_max_iter")
        self.density_vectors = shared.check_value(
            _OWNER, integer(1), density_vectors, "density_vectors")
        self.density_iter = shared.check_value(_OWNER, integer(1), density_iter, "density_iter")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.split = shared.check_value(_OWNER, one_of(*HESSIAN_SPLITS), split, "split")
        self.suffix = "" if self.split == "train" else f"@{self.split}"  # on every result key
        self.skip_key = self.skip_key + self.suffix
        self.backend, self.seed, self.dataloader = backend, seed, dataloader
        self.progress, self.loss_fn, self.reuse_graph = progress, loss_fn, reuse_graph
        self.results: dict[str, Any] = {}
        self._fit_loaders: Any = None  # what the last fit trained on (on_train_end)

    # ----------------------------------------------------------------- Lightning hooks

    def on_train_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        # Lightning forgets the fit's loader once fit ends: keep it for on="test_end"
        self._fit_loaders = getattr(trainer, "train_dataloader", None)
        super().on_train_end(trainer, pl_module)

    def data_sources(self, trainer: Any, stage: str) -> list[shared.Source]:
        """The split's data only (see ``dataloader`` above): training data, the same at
        both stages; or test data, as ``AdversarialRobustness`` finds it."""
        if self.dataloader is not None:
            return shared.given(self.dataloader)
        if self.split == "test":
            if stage == "fit_end":
                return [shared.datamodule_source(trainer, "test_dataloader")]
            return [shared.trainer_source(trainer, "test_dataloaders")]

        def fit_loaders() -> Any:
            now = getattr(trainer, "train_dataloader", None)
            return shared.first_loader(now if now is not None else self._fit_loaders)

        return [
            shared.datamodule_source(trainer, "eval_train_dataloader"),
            ("the loader given to fit", fit_loaders),
            shared.datamodule_source(trainer, "train_dataloader"),
        ]

    def run_stage(
        self, trainer: Any, pl_module: torch.nn.Module, stage: str, loader: Iterable[Any], source: str
    ) -> None:
        """``StageHooks`` calls it at a chosen stage, with the data it found."""
        self.measure(trainer, pl_module, loader, source)

    # ----------------------------------------------------------------- logic

    def measure(
        self, trainer: Any, pl_module: torch.nn.Module, loader: Iterable[Any], source: str = "dataloader="
    ) -> HessianResult | None:
        """Compute, log and store the eigenvalues on ``loader`` now (global rank zero only)."""
        if not getattr(trainer, "is_global_zero", True):
            return None
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        if source not in _STABLE:
            log.warning(_UNSTABLE_LOADER_WARNING, source)
        result = self._compute(pl_module, batches)
        num_samples = sum(len(y) for _, y in batches)
        metrics = {"hessian/top_eig": result.top}
        metrics.update({f"hessian/eig_{k}": v for k, v in enumerate(result.eigenvalues, 1)})
        metrics.update({"hessian/num_hvp": result.num_hvp, "hessian/seconds": result.seconds})
        spectrum, more, timings = self._spectrum(pl_module, batches)
        metrics.update(more)
        shared.log_to_loggers(trainer, {k + self.suffix: v for k, v in metrics.items()})
        results = {
            "hessian_top_eig": result.top,
            "hessian_eigs": list(result.eigenvalues),
            "hessian_backend": result.backend,
            "hessian_num_hvp": result.num_hvp,
            "hessian_converged": result.converged,
            "hessian_num_samples": num_samples,
            "hessian_split": self.split,
        }
        self.results = {k + self.suffix: v for k, v in {**results, **spectrum}.items()}
        # timings (``*_time_s``: robusthp's results.json keeps them in timings_s, not metrics)
        timings["hessian"] = result.seconds
        self.results.update({f"{k}{self.suffix}_time_s": v for k, v in timings.items()})
        if not result.converged:
            log.warning(
                "HessianEigenvalues: %s (%s split) did not reach tol=%g in max_iter=%d "
                "(residuals %s)",
                result.backend,
                self.split,
                self.tol,
                self.max_iter,
                result.residuals,
            )
        if self.progress:
            log.info(
                "Hessian top-%d eigenvalues %s (%s split, %s, %d samples, %d HVPs, %.1f s)",
                self.top_n,
                result.eigenvalues,
                self.split,
                result.backend,
                num_samples,
                result.num_hvp,
                result.seconds,
            )
        return result

    def _spectrum(self, pl_module: torch.nn.Module, batches) -> tuple[dict, dict, dict]:
        """(results, logger metrics, timings) of what is switched on beyond the top
        eigenvalue, on the same samples."""
        results: dict[str, Any] = {}
        metrics: dict[str, float] = {}
        timings: dict[str, float] = {}
        common = {"seed": self.seed, "loss_fn": self.loss_fn, "reuse_graph": self.reuse_graph}
        if self.trace:
            with shared.progress_bar(self.progress, "Hessian trace, HVPs") as progress:
                tr = hessian_trace(pl_module, batches, tol=self.trace_tol,
                                   max_iter=self.trace_max_iter,
                                   on_hvp=lambda n: progress(n, None), **common)
            results.update({"hessian_trace": tr.trace, "hessian_trace_se": tr.se,
                            "hessian_trace_num_hvp": tr.num_hvp,
                            "hessian_trace_converged": tr.converged})
            metrics.update({"hessian/trace": tr.trace, "hessian/trace_se": tr.se})
            timings["hessian_trace"] = tr.seconds
            if not tr.converged:
                log.warning("HessianEigenvalues: the trace's standard error is %.3g of it after "
                            "trace_max_iter=%d vectors (trace_tol=%g)",
                            tr.se / abs(tr.trace) if tr.trace else float("inf"),
                            tr.num_hvp, self.trace_tol)
        if self.density:
            with shared.progress_bar(self.progress, "Hessian density, HVPs") as progress:
                de = hessian_density(pl_module, batches, n_v=self.density_vectors,
                                     iter=self.density_iter, on_hvp=lambda n: progress(n, None),
                                     **common)
            results.update({"hessian_density": de.as_dict(), "hessian_density_num_hvp": de.num_hvp})
            timings["hessian_density"] = de.seconds
        if self.per_layer:
            with shared.progress_bar(self.progress, "Hessian per layer, HVPs") as progress:
                layers = layer_top_eigenvalues(pl_module, batches, max_iter=self.max_iter,
                                               tol=self.tol, on_hvp=lambda n: progress(n, None),
                                               **common)
            results.update({"hessian_layer_top_eig": dict(layers.top_eig),
                            "hessian_layer_num_hvp": layers.num_hvp})
            metrics.update({f"hessian/layer_top_eig/{k}": v for k, v in layers.top_eig.items()})
            timings["hessian_layer"] = layers.seconds
        return results, metrics, timings

    def _compute(self, pl_module: torch.nn.Module, batches) -> HessianResult:
        with shared.progress_bar(self.progress, f"Hessian ({self.backend}), HVPs") as progress:
            return top_eigenvalues(
                pl_module, batches, top_n=self.top_n, backend=self.backend,
                max_iter=self.max_iter, tol=self.tol, seed=self.seed, loss_fn=self.loss_fn,
                reuse_graph=self.reuse_graph, on_hvp=lambda count: progress(count, None),
            )


class HessianEigenvalues(_HessianLogic, *shared.callback_bases()):
    __doc__ = _HessianLogic.__doc__
