"""The batch-size figure's panels: AutoAttack and the worst case over attacks appear where
runs recorded them, and PGD's name says its steps and restarts."""

from __future__ import annotations

import pandas as pd

from robusthp.report.panels import panels_for


def frame(**extra) -> pd.DataFrame:
    base = {"test_acc": [0.9, 0.8], "fgsm_acc": [0.3, 0.2], "pgd_acc": [0.1, 0.05],
            "fgsm_acc@0.3norm": [0.3, 0.2], "pgd_acc@0.3norm": [0.1, 0.05],
            "hessian_top_eig": [10.0, 20.0], "pgd_steps": [40.0, 40.0]}
    return pd.DataFrame({**base, **extra})


def titles(runs: pd.DataFrame) -> list[str]:
    return [p.title for p in panels_for(runs)]


def test_no_strong_attack_recorded_no_panel():
    assert titles(frame()) == ["Clean test accuracy", "FGSM accuracy, eps 0.3 normalized (x std)",
                               "PGD-40 accuracy, eps 0.3 normalized (x std)", "Top Hessian eigenvalue"]


def test_autoattack_and_worst_case_panels_after_pgd():
    runs = frame(**{"autoattack_acc": [0.05, 0.0], "autoattack_acc@0.3norm": [0.05, 0.0],
                    "worst_acc": [0.05, 0.0], "worst_acc@0.3norm": [0.05, 0.0]})
    assert titles(runs)[3:6] == ["AutoAttack accuracy, eps 0.3 normalized (x std)",
                                 "Worst case accuracy, eps 0.3 normalized (x std)",
                                 "Top Hessian eigenvalue"]


def test_pgd_named_with_its_restarts():
    assert "PGD-40 x5 accuracy, eps 0.3 normalized (x std)" in titles(frame(pgd_restarts=[5.0, 5.0]))
    assert "PGD-40 accuracy, eps 0.3 normalized (x std)" in titles(frame(pgd_restarts=[1.0, 1.0]))
    assert "PGD accuracy, eps 0.3 normalized (x std)" in titles(frame(pgd_restarts=[1.0, 5.0]))
