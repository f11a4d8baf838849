"""Re-evaluations of a run (``python -m robusthp.evaluate``), merged into the run's row.

``<run_dir>/evaluations/<name>.json`` holds the metrics of a later evaluation of the saved
model (more eps, another reading, eps*). Merging never overwrites: the run's own
``results.json`` keys win, and among evaluation files the newest (by modification time,
then name) wins. Files with a status other than ``"ok"`` and unreadable ones add nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robusthp.results import read_results

log = logging.getLogger(__name__)

EVALUATIONS_DIR = "evaluations"


def evaluation_files(run_dir: str | Path) -> list[Path]:
    """The run's evaluation files, newest first (modification time, then name, descending)."""
    folder = Path(run_dir) / EVALUATIONS_DIR
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.json") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def merged_metrics(run_dir: str | Path,
                   metrics: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """``metrics`` plus the keys only the run's ``ok`` evaluation files have (newest first).

    Returns the merged metrics and the evaluation records that added at least one key.
    """
    merged, used = dict(metrics), []
    for path in evaluation_files(run_dir):
        data = read_results(path)
        if data is None:
            log.warning("cannot parse evaluation file %s; ignored", path)
            continue
        if data.get("status") != "ok":
            log.info("evaluation %s has status %r; ignored", path, data.get("status"))
            continue
        new = {k: v for k, v in (data.get("metrics") or {}).items() if k not in merged}
        if new:
            merged |= new
            used.append(data)
    return merged, used


def overridden(used: list[dict], key: str) -> list[str]:
    """The values ``key`` was overridden to (``key=value`` in ``overrides``) by ``used`` records."""
    prefix = f"{key}="
    given = [o.lstrip("+~") for data in used for o in data.get("overrides") or []
             if isinstance(o, str)]
    return [o[len(prefix):] for o in given if o.startswith(prefix)]
