"""AdversarialRobustness in real Trainers of both Lightning namespaces.

The LightningModule and DataModule are written here (not robusthp's), as any
user project would write them.
"""

from __future__ import annotations

import csv
import importlib
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robusthp.callbacks.adversarial import AdversarialRobustness

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
NUM_CLASSES = 4
ACC_KEYS = {"clean_acc", "fgsm_acc", "pgd_acc"}

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


@pytest.fixture(autouse=True)
def _seeded():
    """Model init and shuffling draw from the global RNG: fix it per test."""
    torch.manual_seed(0)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(NUM_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    x = (protos[y] * 0.6 + 0.2 + 0.15 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1)
    return x, y


class DictDataset(Dataset):
    """Batches as {"pixels": x, "cls": y}: keys default_batch_to_xy does not know."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "cls": self.y[i]}


def user_classes(namespace: str):
    """A user's LightningModule and DataModule in the given namespace."""
    pl = importlib.import_module(namespace)

    class Net(pl.LightningModule):
        def __init__(self, dict_batches: bool = False):
            super().__init__()
            self.dict_batches = dict_batches
            self.net = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 8 * 8, NUM_CLASSES),
            )

        def forward(self, x):
            return self.net(x)

        def _xy(self, batch):
            return (batch["pixels"], batch["cls"]) if self.dict_batches else batch

        def training_step(self, batch, batch_idx):
            x, y = self._xy(batch)
            return nn.functional.cross_entropy(self(x), y)

        def test_step(self, batch, batch_idx):
            x, y = self._xy(batch)
            self.log("test_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    class Data(pl.LightningDataModule):
        def __init__(self, dict_batches: bool = False):
            super().__init__()
            wrap = DictDataset if dict_batches else TensorDataset
            self.train_set = wrap(*synthetic(256, seed=0))
            self.test_set = wrap(*synthetic(64, seed=1))

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=32, shuffle=True)

        def test_dataloader(self):
            return DataLoader(self.test_set, batch_size=32)

    return pl, Net, Data


def make_trainer(pl, tmp_path: Path, callbacks, max_steps: int = 8):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=1, callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="run"),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )


def logged_metrics(trainer) -> dict[str, float]:
    """Every non-empty value of the CSVLogger's metrics.csv, last one wins."""
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    out = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def small_callback(**kwargs) -> AdversarialRobustness:
    settings = {"eps": 0.1, "pgd_steps": 3, "num_samples": 48, "batch_size": 16, "progress": False}
    return AdversarialRobustness(**{**settings, **kwargs})


# ---------------------------------------------------------------- fit


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fit_end_logs_to_logger_and_results(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.fit(Net(), datamodule=Data())

    assert ACC_KEYS <= set(cb.results)
    assert cb.results["adversarial_num_samples"] == 48
    assert cb.results["adversarial_time_s"] > 0
    for key in ACC_KEYS:
        assert 0.0 <= cb.results[key] <= 1.0
    assert cb.results["pgd_acc"] <= cb.results["clean_acc"]
    logged = logged_metrics(trainer)
    for key in ACC_KEYS:
        assert logged[f"adv/{key}"] == pytest.approx(cb.results[key])


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_callback_passed_alone_with_dict_batches(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback(batch_to_xy=lambda b: (b["pixels"], b["cls"]), batch_size=None)
    trainer = make_trainer(pl, tmp_path, cb)  # not in a list
    trainer.fit(Net(dict_batches=True), datamodule=Data(dict_batches=True))
    assert ACC_KEYS <= set(cb.results)
    assert "adv/pgd_acc" in logged_metrics(trainer)


def test_side_effects_of_a_run(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(random_start=True)
    trainer = make_trainer(pl, tmp_path, [cb])
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    first = dict(cb.results)

    module.train()
    module.net[1].eval()
    modes = [m.training for m in module.modules()]
    module.net[5].weight.grad = torch.ones_like(module.net[5].weight)
    module.net[0].weight.grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    rng = torch.get_rng_state()
    cb.on_train_end(trainer, module)  # the hook again, by hand
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in module.modules()] == modes
    for p, before in zip(module.parameters(), grads, strict=True):
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    for key in ACC_KEYS:  # seeded: the same numbers again
        assert cb.results[key] == first[key]


def test_several_eps_keys(tmp_path):
    pl, Net, Data = user_classes("pytorch_lightning")
    cb = small_callback(eps=[0.05, 0.2])
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=2)
    trainer.fit(Net(), datamodule=Data())
    for attack in ("fgsm", "pgd"):
        assert cb.results[f"{attack}_acc"] == cb.results[f"{attack}_acc@0.05"]  # first eps is primary
        assert cb.results[f"{attack}_acc@0.2"] <= cb.results[f"{attack}_acc@0.05"]
    logged = logged_metrics(trainer)
    assert {"adv/pgd_acc@0.05", "adv/pgd_acc@0.2", "adv/pgd_acc", "adv/clean_acc"} <= set(logged)


def test_skips_an_interrupted_fit_and_other_ranks():
    """The skip rules shared with HessianEigenvalues: nothing runs, no data is looked for."""
    _, Net, _ = user_classes("lightning.pytorch")
    cb = small_callback(on=("fit_end", "test_end"))
    module = Net()
    cb.on_train_end(SimpleNamespace(interrupted=True, is_global_zero=True), module)
    cb.on_train_end(SimpleNamespace(interrupted=False, is_global_zero=False), module)
    cb.on_test_epoch_end(SimpleNamespace(interrupted=False, is_global_zero=False), module)
    assert cb.results == {}


def test_global_rngs_left_as_found():
    """A loader that draws from torch's, Python's and NumPy's global RNGs: all restored."""
    _, Net, _ = user_classes("lightning.pytorch")
    x, y = synthetic(32, seed=2)

    def drawing_loader():
        for i in range(0, 32, 16):
            torch.rand(1), random.random(), np.random.rand()
            yield x[i : i + 16], y[i : i + 16]

    cb, model = small_callback(attacks="fgsm", num_samples=None), Net().net
    random.seed(1)
    np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cb.evaluate(model, drawing_loader())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    after = np.random.get_state()
    assert after[0] == states[2][0] and np.array_equal(after[1], states[2][1])
    assert after[2:] == states[2][2:]


def test_no_data_at_fit_end_moves_the_attack_to_test(tmp_path, caplog):
    """Never a crash in the user's fit (tests/test_callbacks_in_any_project.py has more)."""
    pl, Net, Data = user_classes("lightning.pytorch")
    cb, module, data = small_callback(num_samples=None), Net(), Data()
    trainer = make_trainer(pl, tmp_path, [cb], max_steps=1)
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.adversarial"):
        trainer.fit(module, train_dataloaders=data.train_dataloader())
    assert "will evaluate at trainer.test instead" in caplog.text
    assert cb.results == {}
    trainer.test(module, dataloaders=data.test_dataloader())
    assert cb.results["adversarial_num_samples"] == 64


# ---------------------------------------------------------------- test stage


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_test_end_under_inference_mode(namespace, tmp_path):
    pl, Net, Data = user_classes(namespace)
    cb = small_callback(on=("test_end",))
    trainer = make_trainer(pl, tmp_path, [cb])
    module, data = Net(), Data()
    trainer.fit(module, datamodule=data)
    assert cb.results == {}  # not on fit_end
    trainer.test(module, datamodule=data)  # inference_mode=True by default
    assert ACC_KEYS <= set(cb.results)
    assert logged_metrics(trainer)["adv/fgsm_acc"] == pytest.approx(cb.results["fgsm_acc"])


def test_test_end_uses_the_test_loader_without_datamodule(tmp_path):
    pl, Net, Data = user_classes("lightning.pytorch")
    cb = small_callback(on="test_end", num_samples=None)
    trainer = make_trainer(pl, tmp_path, [cb])
    trainer.test(Net(), dataloaders=Data().test_dataloader())
    assert cb.results["adversarial_num_samples"] == 64


# ---------------------------------------------------------------- without Lightning and bad input


def test_evaluate_without_a_trainer():
    pl, Net, _ = user_classes("lightning.pytorch")
    cb = small_callback(attacks="fgsm", num_samples=None, batch_size=None)
    loader = DataLoader(TensorDataset(*synthetic(40, seed=2)), batch_size=16)
    results = cb.evaluate(Net().net, loader)
    primary = f"fgsm_acc@{cb.eps[0]:g}"  # every eps also under its own key
    worst = f"worst_acc@{cb.eps[0]:g}"  # one attack: its own accuracy is the worst case
    assert set(results) == {"clean_acc", "fgsm_acc", primary, "worst_acc", worst, "adversarial_eps",
                            "adversarial_num_samples", "adversarial_time_s"}
    assert results[worst] == results["fgsm_acc"]
    assert results[primary] == results["fgsm_acc"]
    assert results["adversarial_num_samples"] == 40


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"eps": -0.1}, ValueError, "eps must be"),
        ({"eps": [0.1, -0.3]}, ValueError, "eps must be"),
        ({"eps": []}, ValueError, "non-empty"),
        ({"eps": [0.1, 0.1]}, ValueError, "distinct"),
        ({"eps": 0.1, "pgd_steps": 0}, ValueError, "steps must be"),
        ({"eps": 0.1, "pgd_alpha": 0.0}, ValueError, "alpha"),
        ({"eps": 0.1, "attacks": ("fgsm", "cw")}, ValueError, "unknown attack 'cw'; valid: autoattack, band, "
                                                               "fgsm, gaussian, pgd, pgd_l2"),
        ({"eps": 0.1, "attacks": ("fgsm", "gaussian")}, ValueError,
         "attack 'gaussian' is not an L-inf attack; valid: fgsm, pgd, autoattack"),
        ({"eps": 0.1, "attacks": ()}, ValueError, "at least one"),
        ({"eps": 0.1, "on": ("fit_end", "validation_end")}, ValueError, "valid: fit_end, test_end"),
        ({"eps": 0.1, "num_samples": 0}, ValueError, "num_samples"),
        ({"eps": 0.1, "batch_size": -1}, ValueError, "batch_size"),
        ({"eps": 0.1, "batch_to_xy": "x"}, TypeError, "batch_to_xy"),
    ],
)
def test_bad_construction_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdversarialRobustness(**kwargs)
