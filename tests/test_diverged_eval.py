"""A diverged model is not evaluated: no PGD pass, no Hessian products, status "diverged".

Evaluating a NaN model wastes a PGD-40 pass and up to max_iter Hessian-vector products,
and Lanczos' eigh on a NaN tridiagonal can raise, turning a "diverged" run into "failed".
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from robusthp import experiment
from robusthp.callbacks import AdversarialRobustness, HessianEigenvalues
from robusthp.callbacks import adversarial as adversarial_module
from robusthp.callbacks import hessian as hessian_module
from robusthp.data import DataSettings
from robusthp.experiment import (
    AdversarialSettings,
    HessianSettings,
    RunSettings,
    TrainSettings,
    run_experiment,
)
from robusthp.optim import resolve_sgd


@pytest.fixture
def counted(monkeypatch):
    """Counts of the attack passes and Hessian computations the callbacks start."""
    calls = {"attack": 0, "hessian": 0}
    attack, hessian = adversarial_module.correct_masks, hessian_module.top_eigenvalues

    def counting_attack(*args, **kwargs):
        calls["attack"] += 1
        return attack(*args, **kwargs)

    def counting_hessian(*args, **kwargs):
        calls["hessian"] += 1
        return hessian(*args, **kwargs)

    monkeypatch.setattr(adversarial_module, "correct_masks", counting_attack)
    monkeypatch.setattr(hessian_module, "top_eigenvalues", counting_hessian)
    return calls


def _diverging(root, backend: str) -> RunSettings:
    return RunSettings(
        data=DataSettings(dataset="mnist", root=str(root), batch_size=32, val_size=50, download=False),
        model="stdcnn", sgd=resolve_sgd("lr_bs", batch_size=32, lr_bs_ratio=1000),
        train=TrainSettings(epochs=2, check_every=2, progress_bar=False),
        adversarial=AdversarialSettings(enabled=True, eps=(0.1,), pgd_steps=3, num_samples=20),
        hessian=HessianSettings(enabled=True, backend=backend, num_samples=32, max_iter=5),
    )


@pytest.mark.parametrize("backend", ["pyhessian", "lanczos"])
def test_diverged_run_is_not_evaluated(synthetic_root, tmp_path, monkeypatch, counted, caplog, backend):
    built = []
    plain = experiment.build_callbacks
    monkeypatch.setattr(experiment, "build_callbacks", lambda s: built.extend(plain(s)) or built)
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks"):
        record = run_experiment(_diverging(synthetic_root, backend), tmp_path / backend)

    assert record["status"] == "diverged", record["error"]
    assert counted == {"attack": 0, "hessian": 0}
    adv, hes = built
    assert adv.results == {"adversarial_skipped": "diverged"}
    assert hes.results == {"hessian_skipped": "diverged"}
    assert not {"adversarial", "hessian"} & set(record["timings_s"])
    saved = json.loads((tmp_path / backend / "results.json").read_text())
    assert saved["metrics"]["adversarial_skipped"] == saved["metrics"]["hessian_skipped"] == "diverged"
    skips = [r for r in caplog.records
             if r.name.startswith("robusthp.callbacks") and "diverged" in r.getMessage()]
    assert {r.name for r in skips} == {"robusthp.callbacks.adversarial", "robusthp.callbacks.hessian"}
    assert len(skips) == 2  # one line each


class _Foreign(pl.LightningModule):
    """A user's module with no ``diverged`` attribute: its NaN weights tell."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("stage", ["fit_end", "test_end"])
def test_non_finite_parameters_are_not_evaluated(stage, counted, caplog):
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    model = _Foreign()
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("nan")
    trainer = SimpleNamespace(is_global_zero=True, interrupted=False, loggers=[], global_step=0)
    cbs = [
        AdversarialRobustness(eps=0.1, pgd_steps=2, dataloader=[(x, y)], on=stage, progress=False),
        HessianEigenvalues(backend="lanczos", max_iter=3, dataloader=[(x, y)], on=stage, progress=False),
    ]
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks"):
        for cb in cbs:
            hook = cb.on_train_end if stage == "fit_end" else cb.on_test_epoch_end
            hook(trainer, model)
    assert counted == {"attack": 0, "hessian": 0}
    assert cbs[0].results == {"adversarial_skipped": "non-finite parameters"}
    assert cbs[1].results == {"hessian_skipped": "non-finite parameters"}
    assert caplog.text.count("non-finite parameters") == 2


def test_a_finite_model_is_still_evaluated(counted):
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    model = _Foreign()
    model.diverged = False
    trainer = SimpleNamespace(is_global_zero=True, interrupted=False, loggers=[], global_step=0)
    cb = AdversarialRobustness(eps=0.1, pgd_steps=2, dataloader=[(x, y)], progress=False)
    cb.on_train_end(trainer, model)
    assert counted["attack"] == 1 and "pgd_acc" in cb.results
