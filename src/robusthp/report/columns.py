"""The columns a sweep adds to the fixed ones: accuracy at each eps, eps*, flags; their order.

A results.json (schema of issue 13) names each accuracy by attack, budget and how the budget
is read: ``fgsm_acc@0.3`` is eps 0.3 in [0, 1] pixels, ``pgd_acc@0.3norm`` eps 0.3 in units
of the model's input normalization (per channel eps x std). The plain ``fgsm_acc`` /
``pgd_acc`` are the first eps of the first reading (an older run's only budget). Columns
that only some sweeps have come after :data:`~robusthp.report.table.COLUMNS` in the order of
:func:`extra_columns`: accuracy keys by (attack, reading, eps), the eps* results, the Hessian
of the test split, then the flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

ATTACK_ORDER = ("fgsm", "pgd")  # then any other attack by name
READINGS = {"": "pixel", "norm": "normalized"}  # key suffix -> eps reading, in column order
MIN_EPS_METRICS = ("median_min_eps", "min_eps_auc", "min_eps_above_max")  # numeric, summarized
MIN_EPS_SETTINGS = ("min_eps_max", "min_eps_space")  # per run, written but not summarized
TEST_SPLIT_METRICS = ("hessian_top_eig@test",)  # eval.hessian.split=test
HESSIAN_FLAGS = ("hessian_converged", "hessian_converged@test")
FLAGS = (*HESSIAN_FLAGS, "untrained")  # boolean columns; "untrained" is the report's own
_ACC_KEY = re.compile(r"^(?P<attack>[a-z][a-z0-9]*)_acc@(?P<eps>\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
                      r"(?P<reading>norm)?$")


@dataclass(frozen=True)
class AccKey:
    """An accuracy column, one attack at one budget (``pgd_acc@0.3norm``: pgd, 0.3, normalized)."""

    key: str
    attack: str
    eps: float
    reading: str  # "pixel" or "normalized"

    @property
    def eps_text(self) -> str:
        """``eps 0.3 in pixels`` / ``eps 0.3 normalized (x std)``: the budget as titles write it."""
        where = "in pixels" if self.reading == "pixel" else "normalized (x std)"
        return f"eps {self.eps:g} {where}"

    def sort_key(self) -> tuple:
        rank = ATTACK_ORDER.index(self.attack) if self.attack in ATTACK_ORDER else len(ATTACK_ORDER)
        return rank, self.attack, list(READINGS.values()).index(self.reading), self.eps


def parse_acc_key(key: str) -> AccKey | None:
    """The :class:`AccKey` of a suffixed accuracy key, or None for any other key."""
    match = _ACC_KEY.match(key)
    if match is None or match["attack"] == "clean":
        return None
    eps = float(match["eps"])
    if not math.isfinite(eps):
        return None
    return AccKey(key, match["attack"], eps, READINGS[match["reading"] or ""])


def acc_keys(keys: Iterable[str]) -> list[AccKey]:
    """The suffixed accuracy keys among ``keys``, in column order (attack, reading, eps)."""
    parsed = {k.key: k for k in map(parse_acc_key, keys) if k is not None}
    return sorted(parsed.values(), key=AccKey.sort_key)


def is_extra(key: str) -> bool:
    """A metrics key the table keeps besides the fixed ones (see :func:`extra_columns`)."""
    return (parse_acc_key(key) is not None or key in MIN_EPS_METRICS or key in MIN_EPS_SETTINGS
            or key in TEST_SPLIT_METRICS or key in HESSIAN_FLAGS)


def extra_columns(columns: Iterable[str]) -> list[str]:
    """The extra columns among ``columns``, in results.csv order."""
    columns = list(columns)
    fixed = [*MIN_EPS_METRICS, *MIN_EPS_SETTINGS, *TEST_SPLIT_METRICS, *FLAGS]
    return [k.key for k in acc_keys(columns)] + [c for c in fixed if c in columns]


def extra_metrics(columns: Iterable[str]) -> list[str]:
    """The extra columns that are numeric metrics (summarized over seeds), in order."""
    return [c for c in extra_columns(columns)
            if c not in MIN_EPS_SETTINGS and c not in FLAGS]


def converged_flag(metric: str) -> str | None:
    """The convergence flag of a Hessian metric (``hessian_top_eig@test`` ->
    ``hessian_converged@test``); None for a metric without one."""
    if not metric.startswith("hessian_"):
        return None
    _, at, split = metric.partition("@")
    return "hessian_converged" + (at + split)


def is_accuracy(metric: str) -> bool:
    """An accuracy column (clean or under attack, at any eps): values in [0, 1]."""
    return metric.split("@")[0].endswith("_acc")
