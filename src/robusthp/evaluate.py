"""``python -m robusthp.evaluate PATH [overrides]``: evaluate finished runs again, without training.

    python -m robusthp.evaluate outputs/sweeps/fig2                       # FGSM/PGD and Hessian
    python -m robusthp.evaluate outputs/sweeps/fig2 eval.adversarial.eps_space=normalized
    python -m robusthp.evaluate outputs/sweeps/fig2 eval.hessian.split=test hydra/launcher=parallel

Every run below PATH (a ``results.json`` with status ``ok`` beside its ``model.pt``; others
are listed as skipped, with the reason) is rebuilt from its recorded config with the
overrides on top, its weights loaded from ``model.pt``, and evaluated by the same callbacks
as at the end of training (``experiment.build_callbacks``), run at the end of a
``trainer.test`` on the run's own data settings (the same test subset and training split).
Only what the overrides name runs: ``eval.adversarial.*`` the attacks, ``eval.hessian.*``
the Hessian, both kinds or none (or ``eval=default``) both; ``eval=none`` starts from
neither. A section the overrides name is switched on unless its ``enabled`` is given.

Each result goes to ``<run>/evaluations/<name>.json`` (written atomically; ``<name>`` is
the overrides that change results, sorted, e.g. ``eval.adversarial.eps_space=normalized``,
or ``default``); ``results.json`` and ``model.pt`` are never touched. The report adds the
keys an evaluation file has and the run's results.json lacks (``robusthp.report``).

Allowed overrides: ``eval=default|none``, ``eval.adversarial.<key>``, ``eval.hessian.<key>``,
``trainer.accelerator``, ``trainer.progress_bar``, ``trainer.threads``, ``data.root``
(default: ``$ROBUSTHP_DATA_DIR`` if set, else the recorded root), ``data.eval_batch_size``,
and ``hydra/launcher=parallel`` (one process per CPU core, one thread each) or
``hydra/launcher=joblib hydra.launcher.n_jobs=N`` (N processes). Anything else, or a bad
value, is one line ``robusthp: error: ...`` and exit code 2, before torch loads.

Resumable: a run whose evaluation file says ``ok`` with the same fingerprint (the run's
fingerprint and the effective evaluation settings) is skipped. A run that fails is recorded
as ``failed`` in its file (its traceback in ``<name>.log`` beside it) and the others go on;
the exit code is then 1. One progress line per run, and a summary line at the end.

From Python: ``evaluate_runs(path, overrides, n_jobs=1)`` returns one dict per run found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robusthp.config import ConfigError, settings_from_config
from robusthp.config_store import MAX_NAME, UNNAMED_KEYS, bounded_name, group_options
from robusthp.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    code_version,
    find_results,
    fingerprint,
    read_results,
    write_json_atomic,
)
from robusthp.settings import (
    AdversarialSettings,
    FunctionSettings,
    HessianSettings,
    InvarianceSettings,
    PerturbationSettings,
    RunSettings,
    UniversalSettings,
)

# torch and Lightning (~8 s to import) load only where a run is evaluated: a bad override
# is refused, and a fully evaluated sweep skipped, without them.

__all__ = ["EVALUATIONS_DIR", "MODEL_FILE", "EvalRequest", "evaluate_runs", "main",
           "parse_overrides"]

log = logging.getLogger(__name__)

EVALUATIONS_DIR = "evaluations"
MODEL_FILE = "model.pt"
SECTIONS = {"adversarial": AdversarialSettings, "hessian": HessianSettings,
            "perturbation": PerturbationSettings, "function": FunctionSettings,
            "invariance": InvarianceSettings, "universal": UniversalSettings}
# what eval=default (or no eval.<section> override) evaluates: the sections a run has on
DEFAULT_SECTIONS = tuple(name for name, section in SECTIONS.items() if section().enabled)
# settings that change how, not what, is computed: left out of the file name and fingerprint
ENV_KEYS = ("trainer.accelerator", "trainer.progress_bar", "trainer.threads", "data.root",
            "data.eval_batch_size")
LAUNCHERS = ("parallel", "joblib", "basic")  # hydra/launcher=...; basic: sequential
ALLOWED = ("eval=default|none, eval.adversarial.<key>, eval.hessian.<key>, "
           "eval.perturbation.<key>, eval.function.<key>, eval.invariance.<key>, "
           "eval.universal.<key>, "
           + ", ".join(ENV_KEYS) + ", hydra/launcher=parallel|joblib, hydra.launcher.n_jobs")


# ---------------------------------------------------------------------------- overrides


@dataclass(frozen=True)
class EvalRequest:
    """What the overrides ask for, checked (torch-free).

    overrides: as given (``+`` stripped), in order. updates: config key -> value, applied
    on each run's recorded config. sections: the evaluations to run (of ``SECTIONS``:
    "hessian"). n_jobs: processes (None: not given). name: the evaluation file's stem."""

    overrides: tuple[str, ...]
    updates: dict[str, Any] = field(default_factory=dict)
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    n_jobs: int | None = None
    name: str = "default"


def _section_keys(section: str) -> dict[str, str]:
    """``{"eps": "eval.adversarial.eps", ...}``: the config keys of an eval section."""
    prefix = f"eval.{section}."
    keys = (f.metadata.get("key") or "" for f in fields(SECTIONS[section]))
    return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}


def _parse_one(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value) as Hydra parses it; one value only."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(text)
    except HydraException as err:
        raise ConfigError(f"cannot parse override {text!r}: {str(err).splitlines()[0]}") from None
    if override.is_delete():
        raise ConfigError(f"robusthp.evaluate cannot delete keys: {text}")
    if override.is_sweep_override():
        raise ConfigError(f"robusthp.evaluate takes one value per key, not a sweep: {text} "
                          f"(a list is written key=[a,b])")
    return override.key_or_group, override.value()


def _check_key(key: str, value: Any) -> None:
    """Refuse, in one line, a key robusthp.evaluate cannot change."""
    if key == "eval":
        options = group_options("eval")
        if value not in options:
            raise ConfigError(f"unknown eval {value!r}; choose one of: {', '.join(options)}")
        return
    if key == "hydra/launcher":
        if value not in LAUNCHERS:
            raise ConfigError(f"unknown hydra/launcher {value!r}; robusthp.evaluate takes: "
                              f"{', '.join(LAUNCHERS)}")
        return
    if key in ENV_KEYS or key == "hydra.launcher.n_jobs":
        return
    parts = key.split(".")
    if parts[0] == "eval" and len(parts) == 3 and parts[1] in SECTIONS:
        known = _section_keys(parts[1])
        if parts[2] not in known:
            raise ConfigError(f"unknown key {key}; eval.{parts[1]} takes: {', '.join(known)}")
        return
    if key == "eval.validate":
        raise ConfigError("eval.validate is per-epoch validation during training; robusthp."
                          f"evaluate re-evaluates finished models; allowed: {ALLOWED}")
    raise ConfigError(f"robusthp.evaluate cannot override {key} (it evaluates the trained "
                      f"model; change it by training again); allowed: {ALLOWED}")


def _n_jobs(launcher: str | None, n_jobs: Any) -> int | None:
    if n_jobs is not None and launcher not in ("joblib", "parallel"):
        raise ConfigError("hydra.launcher.n_jobs needs hydra/launcher=joblib")
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
            raise ConfigError(f"hydra.launcher.n_jobs must be a non-zero integer (joblib's: -1 "
                              f"is one per CPU core), got {n_jobs!r}")
        return n_jobs
    if launcher == "parallel":  # the sweeps' parallel launcher: its n_jobs (one per core)
        path = resources.files("robusthp.conf").joinpath("hydra/launcher/parallel.yaml")
        return int(OmegaConf.create(path.read_text()).n_jobs)
    return -1 if launcher == "joblib" else (1 if launcher == "basic" else None)


def _file_name(named: Iterable[str]) -> str:
    """A readable, filesystem-safe name for these overrides (``default`` for none)."""
    name = "__".join(sorted(named)).replace("/", "-")
    name = "".join(c for c in name if c not in "[]{}()'\" ")
    name = "".join(c if c.isalnum() or c in "._=,@+-" else "-" for c in name) or "default"
    return bounded_name(name, MAX_NAME)


def parse_overrides(overrides: Sequence[str]) -> EvalRequest:
    """Check the overrides (raises ``ConfigError``, one line) and say what they ask for."""
    given, updates, seen = [], {}, {}
    choice, launcher, n_jobs = None, None, None
    for text in overrides:
        key, value = _parse_one(text)
        _check_key(key, value)
        if key in seen:
            raise ConfigError(f"{key} is given twice: {seen[key]} and {text}")
        seen[key] = text
        given.append(text.lstrip("+"))
        if key == "eval":
            choice = value
        elif key == "hydra/launcher":
            launcher = value
        elif key == "hydra.launcher.n_jobs":
            n_jobs = value
        else:
            updates[key] = value
    named_sections = {k.split(".")[1] for k in updates if k.startswith("eval.")}
    if choice == "none":
        sections = named_sections
    elif choice == "default" or not named_sections:
        sections = set(DEFAULT_SECTIONS) | named_sections
    else:
        sections = named_sections
    for section in SECTIONS:  # a chosen section runs unless switched off; the others do not
        enabled = f"eval.{section}.enabled"
        updates[enabled] = updates.get(enabled, True) if section in sections else False
    chosen = tuple(s for s in SECTIONS if updates[f"eval.{s}.enabled"] is True)
    if not chosen:
        raise ConfigError(f"nothing to evaluate: {' '.join(overrides) or '(no overrides)'} "
                          "switches off every evaluation")
    named = [o for o in given if o.split("=", 1)[0] not in (*ENV_KEYS, "hydra/launcher",
                                                            "hydra.launcher.n_jobs")]
    return EvalRequest(tuple(given), updates, chosen, _n_jobs(launcher, n_jobs), _file_name(named))


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One run to evaluate (picklable: it travels to joblib's workers)."""

    run_dir: str
    config: dict[str, Any]  # the recorded config with the overrides applied
    request: EvalRequest
    fingerprint: str
    run_fingerprint: str


def run_config(record: dict, request: EvalRequest) -> dict[str, Any]:
    """The run's recorded (resolved) config with the overrides on top, resolved."""
    cfg = OmegaConf.create(record.get("config") or {})
    root = os.environ.get("ROBUSTHP_DATA_DIR")
    if root and "data.root" not in request.updates:  # the data of this machine
        OmegaConf.update(cfg, "data.root", root, force_add=True)
    for key, value in request.updates.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return OmegaConf.to_container(cfg, resolve=True)


def run_settings(config: dict) -> RunSettings:
    """``settings_from_config`` of a plain config dict (torch-free; ``ConfigError``)."""
    return settings_from_config(OmegaConf.create(config))


def eval_fingerprint(run_fingerprint: str, settings: RunSettings, request: EvalRequest) -> str:
    """The run's fingerprint and the effective settings of the evaluations that run."""
    chosen = {s: asdict(getattr(settings, s)) for s in request.sections}
    text = json.dumps({"run": run_fingerprint, "eval": chosen}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / EVALUATIONS_DIR / f"{name}.json"


def _skip_reason(run_dir: Path, record: dict | None) -> str | None:
    if record is None:
        return "results.json unreadable"
    if record.get("status") != "ok":
        return f"status {record.get('status')}"
    if not (run_dir / MODEL_FILE).is_file():
        return f"no {MODEL_FILE} (trained without checkpointing, or by an older robusthp)"
    if not record.get("config"):
        return "results.json records no config"
    return None


def plan(path: str | Path, request: EvalRequest) -> tuple[list[Job], list[dict]]:
    """The runs below ``path`` to evaluate, and those skipped (their report rows).

    Raises ``ConfigError`` when the overrides give a bad value for any run; a run whose own
    recorded config no longer validates is evaluated as failed, not refused."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no such file or directory: {path}")
    jobs, skipped = [], []
    for results in find_results(path):
        run_dir, record = results.parent, read_results(results)
        reason = _skip_reason(run_dir, record)
        if reason is not None:
            skipped.append(_row(run_dir, "skipped", reason))
            continue
        config = run_config(record, request)
        run_stamp = record.get("fingerprint") or fingerprint(record["config"], UNNAMED_KEYS)
        try:
            settings = run_settings(config)
        except ConfigError as err:
            try:
                run_settings(run_config(record, EvalRequest(())))
            except ConfigError:  # the record itself: this run fails, the others go on
                settings = None
            else:  # the overrides: the same one line as robusthp.run's
                raise err from None
        stamp = "unknown" if settings is None else eval_fingerprint(run_stamp, settings, request)
        previous = read_results(eval_path(run_dir, request.name))
        if previous and previous.get("status") == "ok" and previous.get("fingerprint") == stamp:
            skipped.append(_row(run_dir, "skipped", "already evaluated",
                                eval_path(run_dir, request.name)))
            continue
        jobs.append(Job(str(run_dir), config, request, stamp, run_stamp))
    if not jobs and not skipped:
        raise ConfigError(f"no {RESULTS_FILE} below {path}")
    return jobs, skipped


def _row(run_dir: Path | str, status: str, reason: str | None, file: Path | None = None,
         seconds: float = 0.0, metrics: dict | None = None) -> dict[str, Any]:
    """What ``evaluate_runs`` returns per run."""
    return {"run_dir": str(run_dir), "status": status, "reason": reason,
            "file": None if file is None else str(file), "seconds": seconds,
            "metrics": metrics or {}}


# ---------------------------------------------------------------------------- evaluating


def _measure(settings: RunSettings, run_dir: Path) -> tuple[dict, dict, dict]:
    """Load ``model.pt``, run the run's evaluation callbacks at the end of a ``trainer.test``
    on its data; (metrics, timings_s, env) as ``run_experiment`` records them."""
    import pytorch_lightning as pl
    import torch

    from robusthp import experiment
    from robusthp.data import ImageDataModule
    from robusthp.lit_module import ClassifierModule

    t = settings.train
    callbacks = experiment.build_callbacks(settings, on="test_end")  # run in trainer.test
    if t.progress_bar:
        callbacks.append(pl.callbacks.RichProgressBar(leave=True))
    # not "GPU available: ..." once per run (Lightning's rank-zero messages go to the
    # logger of whichever namespace imported last: robusthp.callbacks imports both)
    with _quiet("pytorch_lightning", "lightning.pytorch"):
        trainer = pl.Trainer(
            accelerator=t.accelerator, devices=1, precision=t.precision, callbacks=callbacks,
            logger=False, enable_progress_bar=t.progress_bar, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=run_dir / EVALUATIONS_DIR,
        )
    model = experiment.build_model_for(settings)
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    channels_last = experiment.resolve_channels_last(t.channels_last, trainer.strategy.root_device)
    if channels_last:  # as in training: the same layout, the same float rounding
        model = experiment.to_channels_last(model)
    module = ClassifierModule(model, settings.sgd, check_every=t.check_every)
    data = ImageDataModule(replace(settings.data, channels_last=channels_last))
    trainer.test(module, datamodule=data, verbose=False)
    record: dict[str, Any] = {"metrics": {}, "timings_s": {}}
    experiment.collect_results(callbacks, record)
    return record["metrics"], record["timings_s"], experiment.run_env(trainer)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """These loggers at WARNING inside the block (their levels restored after)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _finite(value: Any) -> Any:
    import math

    return None if isinstance(value, float) and not math.isfinite(value) else value


def evaluate_job(job: Job) -> dict[str, Any]:
    """Evaluate one run and write its evaluation file; never raises for the run's errors."""
    started, started_at = time.perf_counter(), time.time()
    run_dir, name = Path(job.run_dir), job.request.name
    out, log_file = eval_path(run_dir, name), eval_path(run_dir, name).with_suffix(".log")
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "status": "failed", "error": None,
        "overrides": list(job.request.overrides), "evaluations": list(job.request.sections),
        "fingerprint": job.fingerprint, "run_fingerprint": job.run_fingerprint,
        "metrics": {}, "timings_s": {}, "eval_settings": {}, "env": {},
    }
    previous_threads = None
    try:
        settings = run_settings(job.config)
        record["eval_settings"] = {s: asdict(getattr(settings, s)) for s in job.request.sections}
        previous_threads = _set_threads(settings.train.threads)
        metrics, timings, record["env"] = _measure(settings, run_dir)
        record["metrics"] = {k: _finite(v) for k, v in metrics.items()}
        record["timings_s"] = timings
        record["status"], record["error"] = _status(metrics)
        log_file.unlink(missing_ok=True)
    except Exception as err:  # recorded: the other runs go on
        record["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(traceback.format_exc())
    finally:
        _set_threads(previous_threads)
    record["timings_s"]["total"] = time.perf_counter() - started
    record["timestamps"] = {"start": started_at, "end": time.time()}
    record["env"] = record["env"] or {"code_version": code_version()}
    write_json_atomic(out, record)
    reason = record["error"] if record["status"] == "failed" else None
    return _row(run_dir, record["status"], reason, out, record["timings_s"]["total"],
                record["metrics"])


def _set_threads(threads: int | None) -> int | None:
    """Set torch's thread count (None: leave it); returns the previous one, to restore."""
    if threads is None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _status(metrics: dict) -> tuple[str, str | None]:
    """``ok``, or ``skipped`` when every evaluation skipped the model (its reasons)."""
    skips = {k: v for k, v in metrics.items() if "_skipped" in k}
    if skips and len(skips) == len(metrics):
        return "skipped", "; ".join(f"{k}: {v}" for k, v in skips.items())
    return "ok", None


# ---------------------------------------------------------------------------- the API


def evaluate_runs(path: str | Path, overrides: Sequence[str] = (), n_jobs: int = 1,
                  echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate every finished run below ``path`` with ``overrides`` (see the module doc).

    ``n_jobs``: processes (joblib, as ``hydra/launcher=joblib``; -1: one per CPU core);
    the launcher overrides win. ``echo``: called with each progress line (default: logged).
    Returns one dict per run found (``run_dir``, ``status`` ok | failed | skipped,
    ``reason``, ``file``, ``seconds``, ``metrics``), skipped runs first. Raises
    ``ConfigError`` (one line) for a bad override, before any run is evaluated."""
    echo = echo or log.info
    started = time.perf_counter()
    request = parse_overrides(overrides)
    jobs, rows = plan(path, request)
    total, done = len(jobs) + len(rows), 0
    for row in rows:
        done += 1
        echo(f"[{done}/{total}] {row['run_dir']} skipped ({row['reason']})")
    n_jobs = request.n_jobs if request.n_jobs is not None else n_jobs
    for row in _run_all(jobs, n_jobs):
        done += 1
        rows.append(row)
        why = f" ({row['reason']})" if row["status"] != "ok" and row["reason"] else ""
        echo(f"[{done}/{total}] {row['run_dir']} {row['status']}{why} {row['seconds']:.1f} s")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped")}
    echo(f"{total} run{'' if total == 1 else 's'}: {counts['ok']} evaluated, {counts['failed']} failed, "
         f"{counts['skipped']} skipped in {time.perf_counter() - started:.1f} s")
    return rows


def _run_all(jobs: list[Job], n_jobs: int) -> Iterable[dict[str, Any]]:
    """Each job's row as it finishes: in this process, or spread over joblib's processes
    (loky: each worker's OpenMP/BLAS threads = cores / n_jobs, one with n_jobs=-1)."""
    if n_jobs == 1 or len(jobs) <= 1:
        yield from (evaluate_job(job) for job in jobs)
        return
    from joblib import Parallel, delayed

    quiet = [replace(j, config={**j.config, "trainer": {**j.config.get("trainer", {}),
                                                        "progress_bar": False}}) for j in jobs]
    yield from Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
        delayed(evaluate_job)(job) for job in quiet
    )


# ---------------------------------------------------------------------------- the CLI


USAGE = "usage: python -m robusthp.evaluate SWEEP_OR_RUN_DIR [override ...]"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    if not argv or argv[0].startswith("-"):
        print(f"{USAGE}\nrobusthp: error: give the directory of a run or a sweep", file=sys.stderr)
        sys.exit(2)
    try:
        rows = evaluate_runs(argv[0], argv[1:], echo=lambda line: print(line, flush=True))
    except ConfigError as err:
        print(f"robusthp: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if any(r["status"] == "failed" for r in rows) else 0)


if __name__ == "__main__":
    main()
