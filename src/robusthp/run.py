"""``python -m robusthp.run``: compose the config, train and evaluate one cell, write results.

    python -m robusthp.run dataset=fashion_mnist model=stdcnn regime=lr_bs batch_size=512 momentum=0.5
    python -m robusthp.run -m batch_size=32,64,128 momentum=0,0.2,0.5,0.9

Bad input gets one line on stderr and exit code 2; a run that fails on its own
exits 1 with its error in one line (the traceback is in the run's error.log).
Under ``-m`` a failed cell is recorded in its results.json and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robusthp.config_store import (
    UNNAMED_KEYS,
    group_options,
    job_dir,
    register_resolvers,
    sweep_name,
)
from robusthp.results import (
    RESULTS_FILE,
    code_version,
    config_diff,
    fingerprint,
    is_complete,
    read_results,
)

__all__ = ["check_group_choices", "finished_run", "job_dir", "main", "sweep_name"]

# torch, Lightning and torchvision (~8 s to import here) load inside _main, in the process
# that trains: a parallel sweep's launcher process never pays for them, nor does a skipped run.

log = logging.getLogger(__name__)
GROUPS = ("dataset", "model", "regime", "eval", "line", "experiment", "logger", "adv_train", "at_line")
register_resolvers()


def _fail(message: str, code: int = 2) -> None:
    print(f"robusthp: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_group_choices(argv: list[str]) -> None:
    """Reject ``group=unknown`` overrides in one line (Hydra's own message spans a screen).

    Parsed as Hydra parses them, so sweeps (``a,b``, ``choice(a,b)``, ``glob(lr_*)``) are
    checked element by element; a glob must match at least one choice."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(argv)
    except HydraException:
        return  # not ours to word: Hydra reports malformed overrides itself
    for override in overrides:
        group, value = override.key_or_group, override.value()
        if group not in GROUPS or value is None or override.is_delete():
            continue
        options = group_options(group)
        if isinstance(value, Glob):
            if not value.filter(options):
                _fail(f"{override.input_line} matches no {group}; choose among: {', '.join(options)}")
            continue
        if override.is_sweep_override():
            choices = list(override.sweep_string_iterator())
        elif isinstance(value, list):  # several options of one group at once: logger=[csv,tensorboard]
            choices = [str(v) for v in value]
        else:
            choices = [str(value)]
        for choice in choices:
            if choice not in options:
                _fail(f"unknown {group} {choice!r}; choose one of: {', '.join(options)}")


def route_lightning_logs_to_hydra() -> None:
    """Lightning prints through its own handlers; send its records to Hydra's instead, so
    each line shows once on the console and lands in the run's log file."""
    from robusthp.callbacks._lightning import callback_bases

    callback_bases()  # imports every installed Lightning namespace now: each adds its handler
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


@hydra.main(config_path="pkg://robusthp.conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> dict | None:
    out_dir = HydraConfig.get().runtime.output_dir
    config = OmegaConf.to_container(cfg, resolve=True)
    stamp = fingerprint(config, UNNAMED_KEYS)
    resume = cfg.get("resume", True)
    if not isinstance(resume, bool):  # "maybe" would read as true
        _fail(f"resume must be true or false, got {resume!r}")
    if resume:
        record = finished_run(Path(out_dir), config, stamp)
        if record is not None:
            return record
    from robusthp.config import ConfigError, settings_from_config

    try:  # torch-free: a bad value is refused before torch and Lightning load (seconds)
        settings = settings_from_config(cfg)
    except ConfigError as err:
        _fail(str(err))
    from robusthp.experiment import run_experiment
    from robusthp.summary import print_record

    route_lightning_logs_to_hydra()
    record = run_experiment(settings, out_dir, config=config, fingerprint=stamp)
    if record["status"] == "failed":
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep records it and goes on
            _fail(f"{record['error']} (details: {out_dir}/error.log)", code=1)
    elif record.get("rank", 0) == 0:  # under DDP every rank gets here; one prints
        print_record(record, out_dir)
    return record


def finished_run(out_dir: Path, config: dict, stamp: str) -> dict | None:
    """The finished record in ``out_dir`` if it was made with this config (its fingerprint),
    else None. A record of another config is kept as ``results.superseded-<its fingerprint>
    .json`` (never lost) and the run trains again; another code version only warns."""
    path = out_dir / RESULTS_FILE
    if not is_complete(out_dir):
        return None
    record = read_results(path)
    old_config = record.get("config") or {}
    # from the recorded config when there is one, so that a record written before a rule of
    # ``fingerprint`` changed is judged by today's rule
    old_stamp = fingerprint(old_config, UNNAMED_KEYS) if old_config else record.get("fingerprint")
    if old_stamp != stamp:
        keys = config_diff(old_config, config, UNNAMED_KEYS)
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        log.warning("training %s again: its finished run had another config (%s)", out_dir, shown)
        os.replace(path, out_dir / f"results.superseded-{old_stamp}.json")
        return None
    old_code, code = (record.get("env") or {}).get("code_version"), code_version()
    if old_code != code:
        log.warning("%s was trained by code %s, this is %s: keeping its results", out_dir, old_code, code)
    log.info("skipping %s: finished before (%s)", out_dir, record["status"])
    return record


def main() -> None:
    check_group_choices(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
