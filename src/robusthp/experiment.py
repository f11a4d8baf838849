"""One natural-training run end to end, from plain settings objects (no Hydra here).

``run_experiment`` builds data, model, optimizer regime and the evaluation
callbacks in a fixed order, trains, evaluates, and writes ``results.json``
atomically in the run directory: ``ok``, ``diverged`` (non-finite loss; the run
stops, a sweep goes on) or ``failed`` (any other error, recorded, not raised).
Long runs checkpoint every epoch and resume from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import traceback
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from robusthp.catalog import get_spec
from robusthp.data import ImageDataModule
from robusthp.lit_module import ClassifierModule
from robusthp.models import build_model
from robusthp.results import RESULTS_FILE, SCHEMA_VERSION, code_version, write_json_atomic
from robusthp.settings import (  # re-exported: the settings a run is built from
    AdversarialSettings,
    DataSettings,
    HessianSettings,
    RunSettings,
    SGDSettings,
    TrainSettings,
)

__all__ = ["AdversarialSettings", "DataSettings", "HessianSettings", "RunSettings",
           "SGDSettings", "TrainSettings", "build_callbacks", "build_loggers", "build_model_for",
           "collect_results", "run_env", "run_experiment"]

log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Drop Lightning's "💡 Tip: try our cloud product" lines from run logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdverts())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # we log per epoch


def build_model_for(settings: RunSettings) -> torch.nn.Module:
    """The run's model, freshly initialised (normalization from the dataset's spec)."""
    spec = get_spec(settings.data.dataset)
    return build_model(
        settings.model, in_channels=spec.in_channels, num_classes=spec.num_classes,
        image_size=spec.image_size, mean=spec.mean, std=spec.std, **settings.model_kwargs,
    )


def build_callbacks(settings: RunSettings, on: str = "fit_end") -> list[pl.Callback]:
    """The evaluation callbacks this run asked for, run at ``on`` (``fit_end`` in training,
    ``test_end`` for a re-evaluation); imported lazily: they are optional."""
    callbacks: list[pl.Callback] = []
    adv, hes = settings.adversarial, settings.hessian
    if adv.enabled:
        from robusthp.callbacks import AdversarialRobustness

        callbacks.append(
            AdversarialRobustness(
                eps=list(adv.eps) if len(adv.eps) > 1 else adv.eps[0], attacks=adv.attacks,
                pgd_steps=adv.pgd_steps, pgd_alpha=adv.pgd_alpha, random_start=adv.random_start,
                pgd_restarts=adv.pgd_restarts, autoattack_num_samples=adv.autoattack_num_samples,
                num_samples=adv.num_samples, batch_size=adv.batch_size, seed=settings.train.seed,
                progress=settings.train.progress_bar, eps_space=adv.eps_space, on=on,
                min_eps=adv.min_eps, min_eps_max=adv.min_eps_max,
            )
        )
    if hes.enabled:
        from robusthp.callbacks import HessianEigenvalues

        callbacks.append(
            HessianEigenvalues(
                top_n=hes.top_n, backend=hes.backend, num_samples=hes.num_samples,
                max_iter=hes.max_iter, tol=hes.tol, batch_size=hes.batch_size,
                seed=settings.train.seed, progress=settings.train.progress_bar, split=hes.split, on=on,
                trace=hes.trace, trace_tol=hes.trace_tol, trace_max_iter=hes.trace_max_iter,
                density=hes.density, density_vectors=hes.density_vectors,
                density_iter=hes.density_iter, per_layer=hes.per_layer,
            )
        )
    return callbacks + _study_callbacks(settings, on)


def _study_callbacks(settings: RunSettings, on: str) -> list[pl.Callback]:
    """Ma et al. 2023's evaluations: perturbations beyond L-inf, and the function's measures."""
    callbacks: list[pl.Callback] = []
    pert, fn, common = settings.perturbation, settings.function, {
        "seed": settings.train.seed, "progress": settings.train.progress_bar, "on": on}
    if pert.enabled:
        from robusthp.callbacks import PerturbationRobustness

        callbacks.append(PerturbationRobustness(
            noise_var=pert.noise_var, bands=pert.bands, band_var=pert.band_var, l2_eps=pert.l2_eps,
            l2_steps=pert.l2_steps, autoattack=pert.autoattack, linf_eps=pert.linf_eps,
            dataset=settings.data.dataset, num_samples=pert.num_samples,
            attack_num_samples=pert.attack_num_samples,
            batch_size=pert.batch_size, **common,
        ))
    if fn.enabled:
        from robusthp.callbacks import FunctionMeasures

        callbacks.append(FunctionMeasures(
            power_iters=fn.power_iters, tol=fn.tol, num_samples=fn.num_samples,
            batch_size=fn.batch_size, **common,
        ))
    return callbacks + _invariance_callbacks(settings, common) + _training_callbacks(settings, common["on"])


def adv_train_pixel_eps(settings: RunSettings) -> tuple[float, ...] | None:
    """Adversarial training's budget in [0, 1] pixels, one value per channel (``normalized``:
    eps x the dataset's std, as the evaluation reads it); None for natural training."""
    return _adv_train_pixels(settings, settings.adv_train.eps)


def adv_train_pixel_alpha(settings: RunSettings) -> tuple[float, ...] | None:
    """Adversarial training's step in pixels per channel (read as eps is); None: natural."""
    return _adv_train_pixels(settings, settings.adv_train.alpha)


def _adv_train_pixels(settings: RunSettings, value: float | None) -> tuple[float, ...] | None:
    at = settings.adv_train
    if not at.enabled:
        return None
    if at.eps_space == "pixel":
        return (value,)
    return tuple(value * s for s in get_spec(settings.data.dataset).std)


def _training_callbacks(settings: RunSettings, on: str) -> list[pl.Callback]:
    """What is measured during training (per epoch): gradient statistics and robust
    validation accuracy. Only in a training run (``on="fit_end"``), not a re-evaluation."""
    callbacks: list[pl.Callback] = []
    gs, rv, progress = settings.grad_stats, settings.robust_val, settings.train.progress_bar
    if on != "fit_end":
        return callbacks
    if gs.enabled:
        from robusthp.callbacks import GradientStatistics

        callbacks.append(GradientStatistics(
            num_samples=gs.num_samples, batch_size=gs.batch_size or settings.data.batch_size,
            every_n_epochs=gs.every_n_epochs, chunk_size=gs.chunk_size, seed=settings.train.seed,
            progress=progress,
        ))
    if rv.enabled:
        from robusthp.callbacks import RobustValidation

        callbacks.append(RobustValidation(
            eps=rv.eps, eps_space=rv.eps_space, steps=rv.steps, alpha=rv.alpha,
            random_start=rv.random_start, num_samples=rv.num_samples,
            batch_size=settings.data.eval_batch_size, every_n_epochs=rv.every_n_epochs,
            seed=settings.train.seed, progress=progress,
        ))
    return callbacks


def _invariance_callbacks(settings: RunSettings, common: dict[str, Any]) -> list[pl.Callback]:
    """Kamath et al.'s rotation study: the invariance profile and SVD-Universal."""
    callbacks: list[pl.Callback] = []
    inv, uap = settings.invariance, settings.universal
    if inv.enabled:
        from robusthp.callbacks import InvarianceProfile

        callbacks.append(InvarianceProfile(
            thetas=inv.thetas, angles=inv.angles, num_samples=inv.num_samples,
            batch_size=inv.batch_size, **common,
        ))
    if uap.enabled:
        from robusthp.callbacks import UniversalPerturbation

        callbacks.append(UniversalPerturbation(
            attacks=uap.attacks, n=uap.n, norms=uap.norms, num_samples=uap.num_samples,
            invariant=uap.invariant, delta_degrees=uap.delta_degrees, batch_size=uap.batch_size,
            **{k: v for k, v in common.items() if k != "seed"},
        ))
    return callbacks


class _ResumeCheckpoint(pl.callbacks.Checkpoint):
    """``checkpoints/last.ckpt`` at the end of every epoch but the last, to resume a killed run.

    Written atomically, after the module's epoch end (Lightning calls ``Checkpoint``
    callbacks last), so the saved scheduler has stepped. Not after the last epoch:
    resuming from a finished fit would skip ``on_train_end``, where the evaluation
    callbacks run, so a run killed during its evaluation redoes its last epoch and then
    evaluates. The finished model is kept as ``model.pt`` instead.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= trainer.max_epochs or trainer.should_stop:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # optimizer + loops too: resuming needs them
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def build_loggers(loggers: dict[str, dict[str, Any]], out_dir: Path) -> list:
    """Lightning's loggers by robusthp name (``settings.LOGGERS``), each writing below
    ``out_dir``. The CSV logger's ``version_N`` counts the (resumed) fits of a run."""
    made = []
    for name, options in loggers.items():
        options = dict(options)
        if name == "csv":
            made.append(pl.loggers.CSVLogger(out_dir, **options))
        elif name == "tensorboard":
            made.append(pl.loggers.TensorBoardLogger(out_dir, **options))
        elif name == "wandb":
            made.append(pl.loggers.WandbLogger(save_dir=str(out_dir), **options))
        elif name == "mlflow":
            if options.get("tracking_uri") is None:  # a local file store in the run dir; mlflow
                options["save_dir"] = str(out_dir / "mlruns")  # >= 3 asks for this opt-in to it:
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            made.append(pl.loggers.MLFlowLogger(**options))
        else:
            raise ValueError(f"unknown logger {name!r}")
    return made


def _finish_loggers(trainer: pl.Trainer | None) -> None:
    """End a W&B run (Lightning leaves it open), so that the next run of a sweep in this
    process starts its own instead of appending to this one."""
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, pl.loggers.WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def _build_trainer(settings: RunSettings, out_dir: Path, callbacks: list) -> pl.Trainer:
    t = settings.train
    callbacks = list(callbacks)
    if t.checkpoint:
        callbacks.append(_ResumeCheckpoint(out_dir / "checkpoints" / "last.ckpt"))
    if t.progress_bar:
        callbacks.append(pl.callbacks.RichProgressBar(leave=True))
    return pl.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,
        callbacks=callbacks,
        logger=build_loggers(t.loggers, out_dir),
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=t.checkpoint,
        log_every_n_steps=t.check_every,
        num_sanity_val_steps=0,
        limit_val_batches=None if t.validate else 0,
        deterministic=False,
        default_root_dir=out_dir,
    )


def run_env(trainer: pl.Trainer | None) -> dict[str, Any]:
    device = str(trainer.strategy.root_device) if trainer is not None else None
    return {
        "torch": str(torch.__version__), "lightning": str(pl.__version__), "python": platform.python_version(),
        "device": device, "threads": torch.get_num_threads(), "code_version": code_version(),
        "hostname": platform.node(),
    }


def _finite_or_none(value: Any) -> Any:
    """A metric JSON can hold: non-finite floats (also inside per-epoch lists) become null."""
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value if not isinstance(value, float) or math.isfinite(value) else None


def run_experiment(settings: RunSettings, out_dir: str | Path, config: dict | None = None,
                   fingerprint: str | None = None) -> dict:
    """Train and evaluate one cell; write and return its results record (never raises for
    a training failure: the record says ``failed`` and carries the error).

    ``config`` (the resolved config) and its ``fingerprint`` are recorded; a resume
    checkpoint left by a run of another fingerprint is not resumed from."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "status": "failed", "error": None, "cell": settings.cell(),
        "metrics": {}, "timings_s": {}, "steps": 0, "wall_time_s": None,
        "sgd": asdict(settings.sgd), "config": config or {}, "fingerprint": fingerprint,
        "adv_train": asdict(settings.adv_train),  # resolved: eps, steps, alpha as trained
    }
    trainer = None
    try:
        trainer, module, callbacks = _train(settings, out_dir, record, fingerprint)
        record["status"] = "diverged" if module.diverged else "ok"
        if module.diverged:  # the callbacks skipped it, and say so
            collect_results(callbacks, record)
        else:
            _evaluate(trainer, module, callbacks, record)
    except Exception as err:  # recorded so that a sweep goes on and loses nothing
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        (out_dir / "error.log").write_text(traceback.format_exc())
        log.error("run failed: %s (traceback in %s)", record["error"], out_dir / "error.log")
    _finish_loggers(trainer)
    record.setdefault("timestamps", {})["end"] = time.time()  # evaluation done
    record["wall_time_s"] = time.perf_counter() - started
    record["timings_s"]["total"] = record["wall_time_s"]
    record["env"] = run_env(trainer)
    record["rank"] = trainer.global_rank if trainer is not None else 0
    record["metrics"] = {k: _finite_or_none(v) for k, v in record["metrics"].items()}
    if trainer is None or trainer.is_global_zero:  # under DDP every rank runs this function
        write_json_atomic(out_dir / RESULTS_FILE, record)
        if record["status"] != "failed":  # finished: the resume checkpoint is no longer needed
            (out_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)  # (model.pt stays)
    return record


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file in the same folder and a rename: a kill or a
    full disk leaves the old file or none, never a truncated one that would load as garbage."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D parameters and buffers (conv filters) in channels_last; any
    other rank keeps its layout (``Module.to(memory_format=...)`` refuses the 5-D filters of
    a P4 conv)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """``None`` (config ``auto``): channels_last on CPU, where it makes these small convnets
    1.1-1.9x faster (benchmarks/model_step.py); NCHW elsewhere, where fp32 small convs gain
    little from it (set it to true for AMP on tensor cores)."""
    return device.type == "cpu" if choice is None else bool(choice)


def _resume_path(settings: RunSettings, out_dir: Path, fingerprint: str | None) -> str | None:
    """``checkpoints/last.ckpt`` if it was written by a run of this fingerprint."""
    last, stamp = out_dir / "checkpoints" / "last.ckpt", out_dir / "checkpoints" / "fingerprint"
    if not settings.train.checkpoint:
        return None
    if last.is_file() and fingerprint is not None:
        if not stamp.is_file() or stamp.read_text().strip() != fingerprint:
            log.warning("not resuming from %s: written by a run of another config", last)
            last.unlink()
    if fingerprint is not None:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint + "\n")
    if not last.is_file() or not _readable_checkpoint(last):
        return None
    log.info("resuming from %s", last)
    return str(last)


def _readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` loads; a damaged one is moved aside (named in a warning) so that the
    run trains from scratch instead of failing on it at every attempt."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception as err:  # truncated, zeroed, not a checkpoint: all unreadable alike
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        log.warning("checkpoint %s is unreadable (%s: %s); moved to %s, training from scratch",
                    path, type(err).__name__, str(err).splitlines()[0][:120] if str(err) else "",
                    aside.name)
        return False


def _train(settings: RunSettings, out_dir: Path, record: dict, fingerprint: str | None = None):
    if settings.train.threads is not None:
        torch.set_num_threads(settings.train.threads)
    pl.seed_everything(settings.train.seed, workers=True, verbose=False)
    model = build_model_for(settings)
    callbacks = build_callbacks(settings)
    trainer = _build_trainer(settings, out_dir, callbacks)
    channels_last = resolve_channels_last(settings.train.channels_last, trainer.strategy.root_device)
    record["channels_last"] = channels_last
    if channels_last:
        model = to_channels_last(model)
    module = ClassifierModule(model, settings.sgd, check_every=settings.train.check_every,
                              adv_train=settings.adv_train, adv_eps=adv_train_pixel_eps(settings),
                              adv_alpha=adv_train_pixel_alpha(settings), seed=settings.train.seed)
    datamodule = ImageDataModule(replace(settings.data, channels_last=channels_last))
    datamodule.prepare_data()  # a missing dataset fails here, before training starts
    ckpt_path = _resume_path(settings, out_dir, fingerprint)
    t0, started_at = time.perf_counter(), time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # the evaluation callbacks run inside fit (on_train_end); their time is reported apart
    eval_s = sum(
        v for cb in callbacks for k, v in (getattr(cb, "results", None) or {}).items()
        if k.endswith("_time_s")
    )
    record["timings_s"]["train"] = time.perf_counter() - t0 - eval_s
    record["timestamps"] = {"train_start": started_at, "train_end": started_at + record["timings_s"]["train"]}
    record["steps"] = int(trainer.global_step)
    if settings.train.checkpoint and not module.diverged:
        save_atomic(module.model.state_dict(), out_dir / "model.pt")  # the trained weights
    record["metrics"]["train_loss"] = module.last_metrics.get("train/loss")
    record["metrics"]["train_acc"] = module.last_metrics.get("train/acc")
    record["metrics"]["val_acc"] = module.last_metrics.get("val/acc")
    record["data_sizes"] = datamodule.split_sizes()
    return trainer, module, callbacks


def _evaluate(trainer: pl.Trainer, module: ClassifierModule, callbacks: list, record: dict) -> None:
    t0 = time.perf_counter()
    trainer.test(module, datamodule=trainer.datamodule, verbose=False)
    record["timings_s"]["test"] = time.perf_counter() - t0
    record["metrics"]["test_acc"] = module.last_metrics.get("test/acc")
    collect_results(callbacks, record)


def collect_results(callbacks: list, record: dict) -> None:
    """The evaluation callbacks' results into the record: timings apart, the rest metrics."""
    for cb in callbacks:
        results = dict(getattr(cb, "results", {}) or {})
        for key in list(results):
            if key.endswith("_time_s"):
                record["timings_s"][key[: -len("_time_s")]] = results.pop(key)
        record["metrics"].update(results)
