"""``python -m robusthp.run``: compose the config, train and evaluate one cell, write results.

    python -m robusthp.run dataset=fashion_mnist model=stdcnn regime=lr_bs batch_size=512 momentum=0.5
    python -m robusthp.run -m batch_size=32,64,128 momentum=0,0.2,0.5,0.9
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from robusthp.config import ConfigError, settings_from_config
from robusthp.experiment import run_experiment
from robusthp.summary import print_record

log = logging.getLogger("robusthp.run")


@hydra.main(config_path="pkg://robusthp.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    try:
        settings = settings_from_config(cfg)
    except ConfigError as err:
        print(f"robusthp: error: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = HydraConfig.get().runtime.output_dir
    config = OmegaConf.to_container(cfg, resolve=True)
    record = run_experiment(settings, out_dir, config=config)
    print_record(record, out_dir)
    return record


if __name__ == "__main__":
    main()
