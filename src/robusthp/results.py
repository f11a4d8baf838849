"""The ``results.json`` every run leaves behind: schema, atomic writes, reading back.

Written by ``robusthp.run``, read by ``robusthp.report`` and by the sweep resume
logic. Pure Python (no torch, Lightning or Hydra) so anything can read results.

Layout of one file::

    {
      "schema": 1,
      "status": "ok" | "diverged" | "failed",
      "error": null | "one line",
      "cell": {"dataset", "model", "regime", "batch_size", "momentum", "lr", "seed", "epochs",
               "rotation", "adv_train" (none | pgd | fgsm)},
      "metrics": {"test_acc", "val_acc", "train_loss", "clean_acc", "fgsm_acc", "pgd_acc",
                  "hessian_top_eig", ...  (absent when not computed; several eps add
                  "fgsm_acc@<eps>" / "pgd_acc@<eps>")},
      "timings_s": {"train", "adversarial", "hessian", "total"},
      "steps": int, "wall_time_s": float,
      "config": {... the resolved Hydra config ...},
      "fingerprint": "sha256 of the config without the keys that cannot change results",
      "env": {"torch", "lightning", "device", "code_version", "python"}
    }
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robusthp.settings import HESSIAN_SPECTRUM_KEYS, AdversarialSettings, HessianSettings

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
COMPLETE_STATUSES = ("ok", "diverged")  # a sweep re-run skips these; "failed" is redone
CELL_KEYS = ("dataset", "model", "regime", "batch_size", "momentum", "lr", "seed", "epochs", "rotation",
             "adv_train")
# a cell key a run recorded before it existed: its only value then (no rotation, natural training)
CELL_DEFAULTS = {"rotation": 0.0, "adv_train": "none"}


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that a kill leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_results(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed results file, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a finished run (``ok`` or ``diverged``)."""
    data = read_results(Path(run_dir) / RESULTS_FILE)
    return data is not None and data.get("status") in COMPLETE_STATUSES


def find_results(*roots: str | os.PathLike) -> Iterator[Path]:
    """Every results file below the given directories, sorted."""
    for root in roots:
        root = Path(root)
        if root.is_file() and root.name == RESULTS_FILE:
            yield root
        else:
            yield from sorted(root.rglob(RESULTS_FILE))


# ---------------------------------------------------------------------------- resume


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"data": {"root": r}}`` -> ``{"data.root": r}`` (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


NEUTRAL_VALUES = {"data.rotation": 0.0,
                  "eval.adversarial.pgd_restarts": AdversarialSettings.pgd_restarts,
                  "eval.adversarial.autoattack_num_samples": None,
                  **{f"eval.hessian.{k}": getattr(HessianSettings, k) for k in HESSIAN_SPECTRUM_KEYS}}
"""Keys added after runs were recorded, with the value that does what those runs did (no
rotation; one PGD run per point, AutoAttack on all points where it runs at all; no Hessian
spectrum beyond the top eigenvalues, whose switches are off and whose
parameters mean nothing then): a config at that value is the same run as one recorded
without the key."""

NEUTRAL_SECTIONS = {"adv_train": ("method", "none")}
"""Sections added after runs were recorded, with the (key, value) that switches them off
(natural training): a config whose section is off is the same run as one recorded
without the section, whatever its other keys say."""


def _kept(config: dict, exclude: tuple[str, ...]) -> dict[str, Any]:
    """The flattened config without the ``exclude`` keys and the sections they name,
    without every switched-off evaluation (``eval.<section>`` with ``enabled: false``: it
    computes nothing, so a run recorded before such a section existed is the same run) or
    section off by its ``NEUTRAL_SECTIONS`` value, and
    without the keys at their ``NEUTRAL_VALUES``."""
    flat = flatten(config)
    off = tuple(k[: -len("enabled")] for k, v in flat.items()
                if k.startswith("eval.") and k.endswith(".enabled") and v is False)
    off += tuple(f"{section}." for section, (key, value) in NEUTRAL_SECTIONS.items()
                 if flat.get(f"{section}.{key}") == value)
    return {k: v for k, v in flat.items()
            if not any(k == e or k.startswith(e + ".") for e in exclude) and not k.startswith(off)
            and not (k in NEUTRAL_VALUES and v == NEUTRAL_VALUES[k])}


def fingerprint(config: dict, exclude: tuple[str, ...] = ()) -> str:
    """A short hash of a resolved config, without the ``exclude`` keys (those that cannot
    change results): equal fingerprints, the same run."""
    text = json.dumps(_kept(config, exclude), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MISSING = "<absent>"


def config_diff(old: dict, new: dict, exclude: tuple[str, ...] = ()) -> list[str]:
    """The keys whose values differ between two resolved configs (missing counts as differing)."""
    a, b = _kept(old, exclude), _kept(new, exclude)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, MISSING) != b.get(k, MISSING))


def code_version() -> str | None:
    """The git commit of the robusthp checkout (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
