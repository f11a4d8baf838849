"""The columns a sweep adds to the fixed ones: accuracy at each eps, eps*, flags; their order.

A results.json names each accuracy by attack, budget and how the budget
is read: ``fgsm_acc@0.3`` is eps 0.3 in [0, 1] pixels, ``pgd_acc@0.3norm`` eps 0.3 in units
of the model's input normalization (per channel eps x std). The plain ``fgsm_acc`` /
``pgd_acc`` are the first eps of the first reading (an older run's only budget). Columns
that only some sweeps have come after :data:`~robusthp.report.table.COLUMNS` in the order of
:func:`extra_columns`: accuracy keys by (attack, reading, eps), the eps* results, the Hessian
of the test split, the optimizer study's scalars (:data:`STUDY_METRICS`, ``band_drop@<i>``
by band, :data:`STUDY_SETTINGS`), then the flags.

The optimizer study (Ma, Pan, Farahmand 2023) adds accuracy keys of the same form,
``<perturbation>_acc@<budget>``: ``gaussian_acc@<var>`` (noise variance), ``band_acc@<i>``
(DCT band i, 0 = lowest frequencies), ``pgd_l2_acc@<eps>``, ``autoattack_linf_acc@<eps>``,
``autoattack_l2_acc@<eps>`` (all in pixels), and ``perturbation_clean_acc``,
``band_drop@<i>`` and the function measures. The list-valued ``lipschitz_layers`` is never
a column.

The invariance study (Kamath, Deshpande, Subrahmanyam; :mod:`~robusthp.report.invariance`)
adds ``rot_acc@<theta>`` and ``rot_fixed_acc@<angle>`` (accuracy keys, so an angle may be
negative: ``rot_fixed_acc@-30``), the SVD-Universal keys (:class:`UniversalKey`:
``universal_flip@<attack>@<s>``, ``universal_error@...``, their ``_unclamped`` twins,
``universal_sv_ratio@<attack>``, ``universal_invariant_cos@<attack>``,
``universal_invariant_sv_ratio``), after the function measures, and the per-run counts
:data:`INVARIANCE_SETTINGS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

ATTACK_ORDER = ("fgsm", "pgd", "autoattack", "worst", "gaussian", "pgd_l2", "autoattack_l2", "autoattack_linf",
                "band")  # then any other attack by name
READINGS = {"": "pixel", "norm": "normalized"}  # key suffix -> eps reading, in column order
MIN_EPS_METRICS = ("median_min_eps", "min_eps_auc", "min_eps_above_max")  # numeric, summarized
MIN_EPS_SETTINGS = ("min_eps_max", "min_eps_space")  # per run, written but not summarized
TEST_SPLIT_METRICS = ("hessian_top_eig@test",)  # eval.hessian.split=test
TRACE_METRICS = ("hessian_trace", "hessian_trace@test")  # eval.hessian.trace=true
HESSIAN_FLAGS = ("hessian_converged", "hessian_converged@test")
FLAGS = (*HESSIAN_FLAGS, "untrained")  # boolean columns; "untrained" is the report's own
PERTURBATION_CLEAN = "perturbation_clean_acc"  # clean accuracy on the perturbation's points
FUNCTION_METRICS = ("lipschitz_upper", "lipschitz_ma2023", "weight_norm",
                    "input_grad_norm_median", "input_grad_norm_p95", "input_grad_norm_mean")
STUDY_METRICS = (PERTURBATION_CLEAN, *FUNCTION_METRICS)  # numeric, summarized (band drops too)
STUDY_SETTINGS = ("perturbation_num_samples", "perturbation_bands", "function_num_samples")
"""Per-run counts of the optimizer study: written to results.csv, not summarized."""
INVARIANCE_SETTINGS = ("invariance_num_samples", "universal_n", "universal_num_samples")
"""Per-run counts of the invariance study: written to results.csv, not summarized."""
UNIVERSAL_KINDS = ("sv_ratio", "flip", "error", "flip_unclamped", "error_unclamped",
                   "invariant_cos")  # per attack, in column order
UNIVERSAL_ATTACKS = ("gradient", "fgsm", "deepfool")  # then any other by name
UNIVERSAL_INVARIANT_SV = "universal_invariant_sv_ratio"
_ACC_KEY = re.compile(r"^(?P<attack>[a-z][a-z0-9_]*)_acc@(?P<eps>-?\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
                      r"(?P<reading>norm)?$")
_BAND_DROP = re.compile(r"^band_drop@(?P<band>\d+)$")
_UNIVERSAL = re.compile(r"^universal_(?P<kind>flip|error|flip_unclamped|error_unclamped)"
                        r"@(?P<attack>[a-z][a-z0-9_]*)@(?P<norm>\d+(?:\.\d*)?(?:e[-+]?\d+)?)$"
                        r"|^universal_(?P<scalar>sv_ratio|invariant_cos)@(?P<of>[a-z][a-z0-9_]*)$")


@dataclass(frozen=True)
class AccKey:
    """An accuracy column, one attack at one budget (``pgd_acc@0.3norm``: pgd, 0.3, normalized)."""

    key: str
    attack: str
    eps: float
    reading: str  # "pixel" or "normalized"

    @property
    def eps_text(self) -> str:
        """``eps 0.3 in pixels`` / ``eps 0.3 normalized (x std)``: the budget as titles write it
        (``var 0.01 in pixels`` for Gaussian noise, ``band 3`` for band-limited noise)."""
        if self.attack == "band":
            return f"band {self.eps:g}"
        where = "in pixels" if self.reading == "pixel" else "normalized (x std)"
        return f"{'var' if self.attack == 'gaussian' else 'eps'} {self.eps:g} {where}"

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


@dataclass(frozen=True)
class UniversalKey:
    """An SVD-Universal column: ``universal_flip@gradient@4`` is (flip, gradient, L2 norm 4 in
    [0,1] pixels); ``universal_sv_ratio@gradient`` has no norm."""

    key: str
    kind: str  # one of UNIVERSAL_KINDS
    attack: str
    norm: float | None

    def sort_key(self) -> tuple:
        rank = UNIVERSAL_ATTACKS.index(self.attack) if self.attack in UNIVERSAL_ATTACKS \
            else len(UNIVERSAL_ATTACKS)
        return rank, self.attack, UNIVERSAL_KINDS.index(self.kind), self.norm or 0.0


def parse_universal_key(key: str) -> UniversalKey | None:
    """The :class:`UniversalKey` of an SVD-Universal key (not ``universal_invariant_sv_ratio``,
    ``universal_n``, ``universal_num_samples``), or None."""
    match = _UNIVERSAL.match(key)
    if match is None:
        return None
    if match["scalar"]:
        return UniversalKey(key, match["scalar"], match["of"], None)
    norm = float(match["norm"])
    return UniversalKey(key, match["kind"], match["attack"], norm) if math.isfinite(norm) else None


def universal_keys(keys: Iterable[str]) -> list[str]:
    """The SVD-Universal keys among ``keys`` in column order (attack, kind, norm), then
    ``universal_invariant_sv_ratio``."""
    keys = list(keys)
    parsed = sorted((k for k in map(parse_universal_key, keys) if k is not None),
                    key=UniversalKey.sort_key)
    return [k.key for k in parsed] + [k for k in (UNIVERSAL_INVARIANT_SV,) if k in keys]


def band_drop_keys(keys: Iterable[str]) -> list[str]:
    """The ``band_drop@<i>`` keys among ``keys``, by band index (0 = lowest frequencies)."""
    bands = {k: int(m["band"]) for k in keys if (m := _BAND_DROP.match(k)) is not None}
    return sorted(bands, key=bands.__getitem__)


def is_extra(key: str) -> bool:
    """A metrics key the table keeps besides the fixed ones (see :func:`extra_columns`)."""
    return (parse_acc_key(key) is not None or key in MIN_EPS_METRICS or key in MIN_EPS_SETTINGS
            or key in TEST_SPLIT_METRICS or key in TRACE_METRICS or key in HESSIAN_FLAGS
            or key in STUDY_METRICS
            or key in STUDY_SETTINGS or _BAND_DROP.match(key) is not None
            or key in INVARIANCE_SETTINGS or key == UNIVERSAL_INVARIANT_SV
            or parse_universal_key(key) is not None)


def extra_columns(columns: Iterable[str]) -> list[str]:
    """The extra columns among ``columns``, in results.csv order."""
    columns = list(columns)
    before = [*MIN_EPS_METRICS, *MIN_EPS_SETTINGS, *TEST_SPLIT_METRICS, *TRACE_METRICS,
              PERTURBATION_CLEAN]
    return ([k.key for k in acc_keys(columns)] + [c for c in before if c in columns]
            + band_drop_keys(columns) + [c for c in FUNCTION_METRICS if c in columns]
            + universal_keys(columns)
            + [c for c in (*STUDY_SETTINGS, *INVARIANCE_SETTINGS, *FLAGS) if c in columns])


def extra_metrics(columns: Iterable[str]) -> list[str]:
    """The extra columns that are numeric metrics (summarized over seeds), in order."""
    return [c for c in extra_columns(columns)
            if c not in MIN_EPS_SETTINGS and c not in STUDY_SETTINGS
            and c not in INVARIANCE_SETTINGS and c not in FLAGS]


def converged_flag(metric: str) -> str | None:
    """The convergence flag of a Hessian metric (``hessian_top_eig@test`` ->
    ``hessian_converged@test``); None for a metric without one (the trace: an estimate short
    of its tolerance is still unbiased, only noisier, and the flag is the eigenvalues')."""
    if not metric.startswith("hessian_") or metric in TRACE_METRICS:
        return None
    _, at, split = metric.partition("@")
    return "hessian_converged" + (at + split)


def is_accuracy(metric: str) -> bool:
    """An accuracy column (clean or under attack, at any eps): values in [0, 1]."""
    return metric.split("@")[0].endswith("_acc")
