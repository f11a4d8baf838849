"""Both callbacks in a project that is not robusthp's, fed the ways Lightning users feed data.

The module, data and datamodules are written here as a user would. What must hold: the
callbacks never break the user's ``fit`` (no data at its end: one warning, and the
evaluation moves to ``trainer.test``), and ``fit`` then ``test`` with plain loaders logs
``adv/pgd_acc`` and ``hessian/top_eig`` in both Lightning namespaces.
"""

from __future__ import annotations

import csv
import importlib
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.callbacks import AdversarialRobustness, HessianEigenvalues
from robusthp.callbacks import _lightning as shared

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
NUM_CLASSES = 3

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def images(n: int, seed: int) -> TensorDataset:
    """Synthetic [0, 1] 1x6x6 images, the class a bright quadrant (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 6, 6, generator=g)
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3] += 0.6
    return TensorDataset(x.clamp(0, 1), y)


def train_loader() -> DataLoader:
    return DataLoader(images(64, seed=0), batch_size=16, shuffle=True)


def held_out_loader(n: int = 40) -> DataLoader:
    return DataLoader(images(n, seed=1), batch_size=16)


def user_module(namespace: str):
    pl = importlib.import_module(namespace)

    class TinyCNN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, NUM_CLASSES)
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return pl, TinyCNN


def make_trainer(pl, tmp_path: Path, callbacks):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="run"), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )


def logged(trainer) -> dict[str, float]:
    """Every non-empty value of the CSVLogger's metrics.csv, the last one winning."""
    trainer.logger.save()
    out = {}
    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def adversarial(**kwargs) -> AdversarialRobustness:
    return AdversarialRobustness(**{"eps": 0.1, "pgd_steps": 3, "progress": False, **kwargs})


def hessian(**kwargs) -> HessianEigenvalues:
    return HessianEigenvalues(**{"backend": "lanczos", "max_iter": 10, "num_samples": 32,
                                 "progress": False, **kwargs})


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("robusthp.callbacks") and r.levelno == logging.WARNING]


# ---------------------------------------------------------------- plain loaders to fit and test


@pytest.mark.parametrize("alone", [True, False], ids=["callbacks=cb", "callbacks=[cb]"])
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_adversarial_plain_loaders_fit_then_test(namespace, alone, tmp_path, caplog):
    """The B-style check: no data at fit end is one warning, not a crash, and trainer.test
    (whose on= the user never asked for) evaluates on the test loaders."""
    pl, TinyCNN = user_module(namespace)
    cb, model = adversarial(), TinyCNN()
    trainer = make_trainer(pl, tmp_path, cb if alone else [cb])
    with caplog.at_level(logging.INFO, logger="robusthp.callbacks"):
        trainer.fit(model, train_loader())
    [warning] = warnings_of(caplog)
    assert "trainer.test" in warning and "\n" not in warning
    assert cb.results == {}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robusthp.callbacks"):
        [test_metrics] = trainer.test(model, held_out_loader(), verbose=False)
    assert "test_acc" in test_metrics  # the user's own test ran
    assert warnings_of(caplog) == []
    assert cb.results["adversarial_num_samples"] == 40
    metrics = logged(trainer)
    assert metrics["adv/pgd_acc"] == pytest.approx(cb.results["pgd_acc"])
    assert {"adv/clean_acc", "adv/fgsm_acc"} <= set(metrics)

    before = dict(cb.results)
    trainer.test(model, held_out_loader(), verbose=False)  # once moved to a test, not every test
    assert cb.results == before


@pytest.mark.parametrize("alone", [True, False], ids=["callbacks=cb", "callbacks=[cb]"])
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_hessian_plain_loaders_fit_then_test(namespace, alone, tmp_path, caplog):
    """The loader given to fit is the Hessian's data (with the shuffling warning)."""
    pl, TinyCNN = user_module(namespace)
    cb, model = hessian(), TinyCNN()
    trainer = make_trainer(pl, tmp_path, cb if alone else [cb])
    with caplog.at_level(logging.INFO, logger="robusthp.callbacks"):
        trainer.fit(model, train_loader())
    [warning] = [w for w in warnings_of(caplog) if "did not reach tol" not in w]
    assert "vary" in warning and "dataloader=" in warning
    assert cb.results["hessian_num_samples"] == 32
    trainer.test(model, held_out_loader(), verbose=False)
    assert logged(trainer)["hessian/top_eig"] == pytest.approx(cb.results["hessian_top_eig"], rel=1e-6)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_both_callbacks_plain_loaders(namespace, tmp_path):
    pl, TinyCNN = user_module(namespace)
    adv, hes = adversarial(attacks="pgd"), hessian()
    trainer = make_trainer(pl, tmp_path, [adv, hes])
    model = TinyCNN()
    trainer.fit(model, train_dataloaders=train_loader())
    trainer.test(model, dataloaders=held_out_loader())
    assert {"adv/pgd_acc", "hessian/top_eig"} <= set(logged(trainer))


def test_hessian_at_test_end_uses_the_fits_training_loader(tmp_path):
    """Lightning drops ``trainer.train_dataloader`` after fit; the callback keeps it."""
    pl, TinyCNN = user_module("lightning.pytorch")
    cb, model = hessian(on="test_end", num_samples=None), TinyCNN()
    trainer = make_trainer(pl, tmp_path, cb)
    trainer.fit(model, train_loader())
    assert cb.results == {}
    trainer.test(model, held_out_loader(8), verbose=False)
    assert cb.results["hessian_num_samples"] == 64  # the training set, not the 8 test points


def test_hessian_without_training_data_warns_at_test(tmp_path, caplog):
    pl, TinyCNN = user_module("lightning.pytorch")
    cb = hessian(on="test_end")
    trainer = make_trainer(pl, tmp_path, cb)
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks"):
        [test_metrics] = trainer.test(TinyCNN(), held_out_loader(), verbose=False)
    assert "test_acc" in test_metrics
    [warning] = warnings_of(caplog)
    assert "dataloader=" in warning
    assert cb.results == {"hessian_skipped": "no data"}


# ---------------------------------------------------------------- datamodules


def user_datamodules(namespace: str):
    pl = importlib.import_module(namespace)

    class StagedData(pl.LightningDataModule):
        """Builds each split in its own stage, as Lightning's docs show: at the end of
        fit, ``test_dataloader()`` fails (setup("test") has not run)."""

        def setup(self, stage):
            if stage == "fit":
                self.train_set = images(64, seed=0)
            if stage == "test":
                self.test_set = images(40, seed=1)

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=16, shuffle=True)

        def test_dataloader(self):
            return DataLoader(self.test_set, batch_size=16)

    class TrainOnly(pl.LightningDataModule):
        """No test_dataloader(): Lightning's placeholder raises if called."""

        def train_dataloader(self):
            return train_loader()

    return StagedData, TrainOnly


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_staged_datamodule_moves_the_evaluation_to_test(namespace, tmp_path, caplog):
    pl, TinyCNN = user_module(namespace)
    StagedData, _ = user_datamodules(namespace)
    cb, model, data = adversarial(), TinyCNN(), StagedData()
    trainer = make_trainer(pl, tmp_path, cb)
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks"):
        trainer.fit(model, datamodule=data)
    [warning] = warnings_of(caplog)
    assert "test_dataloader()" in warning and "trainer.test" in warning
    trainer.test(model, datamodule=data, verbose=False)
    assert cb.results["adversarial_num_samples"] == 40
    assert "adv/pgd_acc" in logged(trainer)


def test_datamodule_without_test_dataloader(tmp_path, caplog):
    pl, TinyCNN = user_module("lightning.pytorch")
    _, TrainOnly = user_datamodules("lightning.pytorch")
    cb, model = adversarial(), TinyCNN()
    trainer = make_trainer(pl, tmp_path, [cb])
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks"):
        trainer.fit(model, datamodule=TrainOnly())
    [warning] = warnings_of(caplog)
    assert "must be implemented" not in warning  # Lightning's placeholder is "none", not a failure
    trainer.test(model, dataloaders=held_out_loader(24), verbose=False)
    assert cb.results["adversarial_num_samples"] == 24


def test_test_end_attacks_the_loaders_of_the_running_test(tmp_path):
    """fit(datamodule=dm) then test(dataloaders=X): Lightning keeps dm attached, but the
    test runs on X, so the attack does too."""
    pl, TinyCNN = user_module("lightning.pytorch")
    StagedData, _ = user_datamodules("lightning.pytorch")
    cb, model = adversarial(on="test_end"), TinyCNN()
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.fit(model, datamodule=StagedData())
    trainer.test(model, dataloaders=held_out_loader(24), verbose=False)
    assert cb.results["adversarial_num_samples"] == 24


def test_dataloader_given_to_the_callback_wins(tmp_path):
    pl, TinyCNN = user_module("lightning.pytorch")
    cb, model = adversarial(dataloader=held_out_loader(8)), TinyCNN()
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.fit(model, train_loader())  # evaluated at fit end: no warning, no deferral
    assert cb.results["adversarial_num_samples"] == 8


def test_first_loader_unwraps_combined_loaders():
    from lightning.pytorch.utilities import CombinedLoader as LightningCombined
    from pytorch_lightning.utilities import CombinedLoader as PLCombined

    a, b = train_loader(), held_out_loader()
    for combined in (LightningCombined, PLCombined):
        assert shared.first_loader(combined([a, b])) is a
        assert shared.first_loader(combined({"x": a})) is a
        assert shared.first_loader([combined({"x": a})]) is a
