"""``python -m robusthp.run``: compose the config, train and evaluate one cell, write results.

    python -m robusthp.run dataset=fashion_mnist model=stdcnn regime=lr_bs batch_size=512 momentum=0.5
    python -m robusthp.run -m batch_size=32,64,128 momentum=0,0.2,0.5,0.9

Bad input gets one line on stderr and exit code 2; a run that fails on its own
exits 1 with its error in one line (the traceback is in the run's error.log).
Under ``-m`` a failed cell is recorded in its results.json and the sweep goes on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robusthp.config_store import group_options, job_dir, register_resolvers, sweep_name
from robusthp.results import RESULTS_FILE, is_complete, read_results

__all__ = ["check_group_choices", "job_dir", "main", "sweep_name"]

# torch, Lightning and torchvision (~8 s to import here) load inside _main, in the process
# that trains: a parallel sweep's launcher process never pays for them, nor does a skipped run.

log = logging.getLogger(__name__)
GROUPS = ("dataset", "model", "regime", "eval", "line", "experiment")
register_resolvers()


def _fail(message: str, code: int = 2) -> None:
    print(f"robusthp: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_group_choices(argv: list[str]) -> None:
    """Reject ``group=unknown`` overrides in one line (Hydra's own message spans a screen)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key not in GROUPS or value in ("", "null"):
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice not in options:
                _fail(f"unknown {key} {choice!r}; choose one of: {', '.join(options)}")


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
    if cfg.get("resume", True) and is_complete(out_dir):
        record = read_results(Path(out_dir) / RESULTS_FILE)
        log.info("skipping %s: finished before (%s)", out_dir, record["status"])
        return record
    from robusthp.config import ConfigError, settings_from_config

    try:  # torch-free: a bad value is refused before torch and Lightning load (seconds)
        settings = settings_from_config(cfg)
    except ConfigError as err:
        _fail(str(err))
    from robusthp.experiment import run_experiment
    from robusthp.summary import print_record

    route_lightning_logs_to_hydra()
    record = run_experiment(settings, out_dir, config=OmegaConf.to_container(cfg, resolve=True))
    if record["status"] != "failed" and record.get("rank", 0) == 0:
        print_record(record, out_dir)
    elif HydraConfig.get().mode != RunMode.MULTIRUN:
        _fail(f"{record['error']} (details: {out_dir}/error.log)", code=1)
    return record


def main() -> None:
    check_group_choices(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
