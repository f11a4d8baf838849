"""What robusthp registers with Hydra: the defaults of every key, the group choices, and
the resolvers that name sweep and run directories.

- ``robusthp_defaults`` (config.yaml's first default) holds every config key declared in
  ``robusthp.settings`` with its default, so the YAMLs only select and override.
- ``dataset=<name>``, ``model=<name>`` and ``regime=<name>`` are one choice per entry of
  ``robusthp.catalog``: a regime's node holds its own keys (``regime.lr`` for ``lr``) with
  the catalog's defaults, nothing else. ``${robusthp_ma2023:<dataset>,<budget>}`` reads a
  budget of Ma et al. 2023 from ``robusthp.catalog.MA2023_BUDGETS`` (its presets use it). ``logger=<name>`` is one per
  ``robusthp.settings.LOGGERS`` entry, with its options; ``adv_train=<method>`` one per
  ``robusthp.settings.ADV_TRAIN_METHODS``, holding every ``adv_train.*`` key.

Importing ``robusthp.conf`` (Hydra does, to find config.yaml) registers all of it. Imports
neither torch nor Lightning: a sweep's launcher process composes without them.
"""

from __future__ import annotations

import hashlib
from dataclasses import MISSING, fields
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from robusthp.catalog import DATASETS, MODELS, REGIMES, perturbation_budgets
from robusthp.settings import ADV_TRAIN_METHODS, LOGGERS, SECTIONS, AdvTrainSettings

GROUPS = ("dataset", "model", "regime", "logger", "adv_train")  # filled from tables, not YAML files
ROOT_DEFAULTS = {"momentum": None, "resume": True}  # None: the regime's own momentum
# Keys that do not change a run's results: left out of sweep and run directory names and
# of a run's fingerprint, so re-running a sweep with them changed (or from another machine,
# whose data lives elsewhere) finds and skips the finished runs.
UNNAMED_KEYS = ("resume", "trainer.progress_bar", "trainer.threads", "data.root", "logger")


def unnamed(key: str) -> bool:
    """Whether ``key`` (or the section it is in, e.g. ``logger.wandb.project``) is unnamed."""
    return any(key == k or key.startswith(k + ".") for k in UNNAMED_KEYS)
MAX_NAME = 120  # a sweep's directory name, in bytes
# a cell's: the file-name limit of common file systems (ext4, xfs, APFS, NTFS), so every name
# that ever worked is unchanged and a resumed sweep finds its cells
MAX_FILE_NAME = 255


def config_fields() -> dict[str, Any]:
    """Config key -> the settings field that declares it (the first one, for shared keys)."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        for f in fields(section):
            key = f.metadata.get("key")
            if key and key not in out:
                out[key] = f
    return out


def _config_default(f) -> Any:
    value = f.metadata.get("config", f.default)
    assert value is not MISSING, f.name
    return list(value) if isinstance(value, tuple) else value


def defaults_tree() -> dict[str, Any]:
    """The nested defaults of every settings key outside the catalog's groups."""
    tree: dict[str, Any] = dict(ROOT_DEFAULTS)
    keys = config_fields()
    for key in sorted(keys, key=lambda k: "." in k):  # top-level keys first, then sections
        f = keys[key]
        *parents, leaf = key.split(".")
        if (parents and parents[0] in GROUPS) or f.metadata.get("group"):
            continue  # a config group's choices hold it
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _config_default(f)
    return tree


def _open(node: dict[str, Any]) -> DictConfig:
    """A node that accepts keys it does not hold: robusthp checks them, in one line."""
    cfg = OmegaConf.create(node)
    OmegaConf.set_struct(cfg, False)
    return cfg


def register() -> None:
    """Store the defaults and one node per catalog entry (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="robusthp_defaults", node=defaults_tree())
    for spec in DATASETS.values():
        cs.store(group="dataset", name=spec.name, node={"name": spec.name, "eps": spec.eps})
    for spec in MODELS.values():
        cs.store(group="model", name=spec.name, node={"name": spec.name, "kwargs": _open({})})
    for spec in REGIMES.values():
        cs.store(group="regime", name=spec.name, node=_open({"name": spec.name, **spec.keys}))
    for name, logger in LOGGERS.items():  # several at once: logger=[csv,tensorboard]
        cs.store(group="logger", name=name, node={name: _open(dict(logger.options))})
    keys = {f.metadata["key"].split(".", 1)[1]: _config_default(f) for f in fields(AdvTrainSettings)}
    for method in ADV_TRAIN_METHODS:  # every adv_train.* key, the method's name set
        cs.store(group="adv_train", name=method, node={**keys, "method": method})


def group_options(group: str) -> list[str]:
    """The choices of a config group: its catalog entries or YAML files."""
    register()
    folder = resources.files("robusthp.conf").joinpath(group)
    names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")} if folder.is_dir() else set()
    stored = ConfigStore.instance().list(group) if group in GROUPS else []
    return sorted(names | {n.removesuffix(".yaml") for n in stored})


# ---------------------------------------------------------------------------- naming


def _named(override: str) -> bool:
    return not unnamed(override.split("=", 1)[0].lstrip("+~"))


def sweep_name(task_overrides: list[str]) -> str:
    """A sweep's directory name from its command-line overrides, the same for the same command
    (sorted; ``experiment=X`` is written ``X``); long names end in a hash of the full name."""
    items = sorted(
        o.split("=", 1)[1] if o.startswith("experiment=") else o
        for o in task_overrides if _named(o)
    )
    return bounded_name("__".join(items).replace("/", "-") or "default", MAX_NAME)


def job_dir(override_dirname: str) -> str:
    """A sweep cell's subdir: its own overrides (``batch_size=32,line=lr_m0``); a name longer
    than a file name may be ends in a hash of the full name."""
    return bounded_name(override_dirname.replace("/", "-") or "default", MAX_FILE_NAME)


def bounded_name(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` bytes (UTF-8), else its first bytes, ``-`` and 8 hex
    digits of its SHA-1: the same name for the same input, distinct for distinct inputs."""
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:8]
    return encoded[: limit - 9].decode("utf-8", "ignore") + "-" + digest


def ma2023_budget(dataset: str, budget: str) -> list[float]:
    """``${robusthp_ma2023:mnist,linf_eps}``: one of Ma et al. 2023's budgets of a dataset."""
    budgets = perturbation_budgets(dataset)
    if budget not in budgets.__dataclass_fields__:
        raise ValueError(f"unknown Ma et al. 2023 budget {budget!r}; choose one of: "
                         f"{', '.join(budgets.__dataclass_fields__)}")
    return list(getattr(budgets, budget))


def register_resolvers() -> None:
    # Cached like Hydra's ${now:}: a sweep's jobs (and joblib's workers) reuse the value the
    # launcher computed, although each job's own hydra.overrides.task differs.
    OmegaConf.register_new_resolver("robusthp_sweep_name", sweep_name, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("robusthp_job_dir", job_dir, replace=True)
    OmegaConf.register_new_resolver("robusthp_ma2023", ma2023_budget, replace=True)
    # experiment= is in the sweep's name, so each cell's name leaves it out
    OmegaConf.register_new_resolver(
        "robusthp_unnamed_keys", lambda: ["experiment", *UNNAMED_KEYS], replace=True
    )
