"""Which panels a batch-size figure has: one per metric its runs recorded.

Clean accuracy; FGSM and PGD accuracy at every (eps, reading) present, titled with both
(``PGD-40 accuracy, eps 0.3 in pixels``); the plain ``fgsm_acc`` / ``pgd_acc`` panel only
for runs with no suffixed key of that attack (older results); the top Hessian eigenvalue
(train loss, then test loss when recorded); the median minimal eps* per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from robusthp.report.columns import acc_keys

MIN_EPS_SPACES = {"pixel": "pixels", "normalized": "x std"}  # reading -> unit in labels


@dataclass(frozen=True)
class Panel:
    """One panel of a batch-size figure: which column it plots and how it is labelled."""

    metric: str
    title: str
    ylabel: str


PANELS = (
    Panel("test_acc", "Clean test accuracy", "accuracy"),
    Panel("fgsm_acc", "FGSM accuracy", "accuracy under attack"),
    Panel("pgd_acc", "PGD accuracy", "accuracy under attack"),
    Panel("hessian_top_eig", "Top Hessian eigenvalue", "top eigenvalue"),
)
"""The panels of a run with plain keys only (the paper's four)."""

STRONG_PANELS = (
    Panel("autoattack_acc", "AutoAttack accuracy", "accuracy under attack"),
    Panel("worst_acc", "Worst case accuracy", "accuracy under every attack"),
)
"""Drawn where runs recorded them: AutoAttack, and the per-point worst case of all attacks."""

ATTACK_NAMES = {"autoattack": "AutoAttack", "worst": "Worst case"}


def panels_for(runs: pd.DataFrame) -> list[Panel]:
    """The panels for ``runs``, in figure order (panels of metrics with no value included:
    the figure drops them). Call :func:`with_panel_columns` on ``runs`` before plotting."""
    test, fgsm, pgd, hessian = PANELS
    out = [test]
    for plain in (fgsm, pgd):
        out += _attack_panels(runs, plain)
    for plain in STRONG_PANELS:
        if _recorded(runs, plain.metric):
            out += _attack_panels(runs, plain)
    out.append(hessian)
    if "hessian_top_eig@test" in runs.columns:
        out.append(Panel("hessian_top_eig@test", "Top Hessian eigenvalue (test loss)",
                         "top eigenvalue"))
    for space, unit in _min_eps_spaces(runs).items():
        out.append(Panel(min_eps_column(space), f"Median minimal eps* ({space})",
                         f"median eps* ({unit})"))
    return out


def _recorded(runs: pd.DataFrame, metric: str) -> bool:
    attack = metric.removesuffix("_acc")
    return metric in runs.columns or any(k.attack == attack for k in acc_keys(runs.columns))


def _attack_panels(runs: pd.DataFrame, plain: Panel) -> list[Panel]:
    attack = plain.metric.removesuffix("_acc")
    name = _attack_name(runs, attack)
    keys = [k for k in acc_keys(runs.columns) if k.attack == attack]
    out = [Panel(k.key, f"{name} accuracy, {k.eps_text}", plain.ylabel) for k in keys]
    suffixed = runs[[k.key for k in keys]].notna().any(axis=1) if keys else False
    values = runs[plain.metric] if plain.metric in runs.columns else pd.Series(float("nan"), index=runs.index)
    if (values.notna() & ~suffixed).any() or not out:
        title = plain.title if name in (attack.upper(), ATTACK_NAMES.get(attack)) else f"{name} accuracy"
        out.insert(0, Panel(plain.metric, title, plain.ylabel))
    return out


def _attack_name(runs: pd.DataFrame, attack: str) -> str:
    """``PGD-40`` when every run of the figure has the same, known PGD steps (``PGD-40 x5``
    with 5 restarts each); else ``PGD``."""
    if attack != "pgd" or "pgd_steps" not in runs.columns:
        return ATTACK_NAMES.get(attack, attack.upper())
    steps = runs["pgd_steps"].dropna().unique()
    if len(steps) != 1 or not runs["pgd_steps"].notna().all():
        return "PGD"
    restarts = runs["pgd_restarts"].dropna().unique() if "pgd_restarts" in runs.columns else []
    if len(restarts) > 1:  # runs with different restarts: one name would be wrong for some
        return "PGD"
    times = f" x{int(restarts[0])}" if len(restarts) == 1 and int(restarts[0]) > 1 else ""
    return f"PGD-{int(steps[0])}{times}"


def _min_eps_spaces(runs: pd.DataFrame) -> dict[str, str]:
    if "median_min_eps" not in runs.columns or "min_eps_space" not in runs.columns:
        return {}
    spaces = runs.loc[runs["median_min_eps"].notna(), "min_eps_space"].dropna().unique()
    order = [*MIN_EPS_SPACES, *sorted(set(spaces) - set(MIN_EPS_SPACES))]
    return {s: MIN_EPS_SPACES.get(s, s) for s in order if s in set(spaces)}


def min_eps_column(space: str) -> str:
    """The figure's own column of median eps* in one reading (``median_min_eps[pixel]``)."""
    return f"median_min_eps[{space}]"


def with_panel_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``runs`` with the derived columns panels plot: median eps* per reading."""
    runs = runs.copy()
    for space in _min_eps_spaces(runs):
        runs[min_eps_column(space)] = runs["median_min_eps"].where(runs["min_eps_space"] == space)
    return runs
