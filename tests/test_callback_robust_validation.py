"""RobustValidation in real Trainers of both Lightning namespaces (a user's module and data,
written here), checked against an independent recomputation after training."""

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
from torch.utils.data import DataLoader, TensorDataset

from robusthp.attacks import bind, pgd, robust_accuracy
from robusthp.callbacks.robust_validation import RobustValidation
from robusthp.models.normalize import Normalize

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
NUM_CLASSES = 3
EPS = 0.3

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]


def images(n: int, seed: int) -> TensorDataset:
    """[0, 1] 1x6x6 images, the class a bright quadrant (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 6, 6, generator=g)
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3] += 0.6
    return TensorDataset(x.clamp(0, 1), y)


def train_loader() -> DataLoader:
    return DataLoader(images(96, seed=0), batch_size=16, shuffle=True)


def val_loader() -> DataLoader:
    return DataLoader(images(50, seed=1), batch_size=16)


def user_module(namespace: str, normalize: bool = False):
    pl = importlib.import_module(namespace)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            first = [Normalize([0.5], [0.25])] if normalize else []
            self.net = nn.Sequential(
                *first, nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 36, NUM_CLASSES),
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)

    return pl, Net


def make_trainer(pl, tmp_path: Path, callbacks, max_epochs: int = 3, **kwargs):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="run"), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        **kwargs,
    )


def metric_rows(trainer, name: str) -> list[tuple[int, float]]:
    trainer.logger.save()
    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as f:
        return [(int(r["epoch"]), float(r[name])) for r in csv.DictReader(f) if r.get(name)]


def callback(**kwargs) -> RobustValidation:
    return RobustValidation(**{"eps": EPS, "steps": 5, "num_samples": 40, "progress": False, **kwargs})


def the_subset(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The callback's subset, drawn here by hand: seeded indices into the dataset."""
    x, y = images(50, seed=1).tensors
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


# ---------------------------------------------------------------- in a fit


@pytest.mark.parametrize("namespace, alone", [(NAMESPACES[0], True), (NAMESPACES[-1], False)],
                         ids=["namespace-1 callbacks=cb", "namespace-2 callbacks=[cb]"])
def test_one_value_per_epoch_and_an_independent_recomputation(namespace, alone, tmp_path):
    pl, Net = user_module(namespace)
    cb, model = callback(), Net()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, cb if alone else [cb])  # the sanity check runs too
    trainer.fit(model, train_loader(), val_loader())

    r = cb.results
    assert r["robust_val_epochs"] == [0, 1, 2]  # not the sanity check
    assert len(r["robust_val_acc_per_epoch"]) == len(r["val_clean_acc_per_epoch"]) == 3
    assert r["robust_val_acc"] == r["robust_val_acc_per_epoch"][-1]
    assert r["robust_val_num_samples"] == 40 and r["robust_val_time_s"] > 0
    rows = metric_rows(trainer, "val/robust_acc")
    assert [e for e, _ in rows] == [0, 1, 2]
    assert [v for _, v in rows] == pytest.approx(r["robust_val_acc_per_epoch"])

    # the last validation ran on the final weights: recompute by hand on the same points
    x, y = the_subset()
    model.eval()
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum()) / len(y)
    adv = torch.cat([pgd(model, xb, yb, eps=EPS, steps=5) for xb, yb in zip(x.split(16), y.split(16), strict=True)])
    with torch.no_grad():
        robust = int((model(adv).argmax(1) == y).sum()) / len(y)
    assert r["val_clean_acc_per_epoch"][-1] == clean
    assert r["robust_val_acc"] == robust
    assert r["robust_val_acc"] < clean  # the attack did something
    best = max(r["robust_val_acc_per_epoch"])
    assert r["robust_val_best_acc"] == best
    assert r["robust_val_best_epoch"] == r["robust_val_acc_per_epoch"].index(best)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_random_start_matches_robust_accuracy(namespace, tmp_path):
    pl, Net = user_module(namespace)
    cb, model = callback(random_start=True, alpha=0.05, seed=3, batch_size=20), Net()
    make_trainer(pl, tmp_path, [cb], max_epochs=2).fit(model, train_loader(), val_loader())
    x, y = the_subset(seed=3)
    gen = torch.Generator().manual_seed(3)
    attack = bind("pgd", eps=EPS, alpha=0.05, steps=5, random_start=True, generator=gen)
    accs = robust_accuracy(model, list(zip(x.split(20), y.split(20), strict=True)), {"pgd": attack})
    assert cb.results["robust_val_acc"] == accs["pgd_acc"]
    assert cb.results["val_clean_acc_per_epoch"][-1] == accs["clean_acc"]


def test_eps_zero_is_the_clean_accuracy(tmp_path):
    pl, Net = user_module("lightning.pytorch")
    cb = callback(eps=0.0)
    make_trainer(pl, tmp_path, [cb], max_epochs=2).fit(Net(), train_loader(), val_loader())
    assert cb.results["robust_val_acc_per_epoch"] == cb.results["val_clean_acc_per_epoch"]
    assert 0 < cb.results["robust_val_acc"] <= 1


def test_every_n_epochs_and_validation_off(tmp_path):
    pl, Net = user_module("pytorch_lightning")
    cb = callback(every_n_epochs=2)
    make_trainer(pl, tmp_path / "a", [cb], max_epochs=4).fit(Net(), train_loader(), val_loader())
    assert cb.results["robust_val_epochs"] == [1, 3]
    off = callback()
    make_trainer(pl, tmp_path / "b", [off], max_epochs=1, limit_val_batches=0).fit(
        Net(), train_loader(), val_loader())
    assert off.results == {}
    none = callback()
    make_trainer(pl, tmp_path / "c", [none], max_epochs=1).fit(Net(), train_loader())  # no val loader
    assert none.results == {}


def test_not_during_trainer_validate(tmp_path):
    pl, Net = user_module("lightning.pytorch")
    cb = callback()
    make_trainer(pl, tmp_path, [cb]).validate(Net(), val_loader(), verbose=False)
    assert cb.results == {}


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_training_is_unchanged(namespace, tmp_path):
    """Dropout, BatchNorm, a shuffled loader and a random start: any draw from the global
    RNG, flag or .grad left behind would change the weights."""
    pl, Net = user_module(namespace)
    finals, rngs = [], []
    for i, callbacks in enumerate([[], [callback(random_start=True)]]):
        pl.seed_everything(5, verbose=False)
        model = Net()
        make_trainer(pl, tmp_path / str(i), callbacks).fit(model, train_loader(), val_loader())
        finals.append([t.detach().clone() for t in model.state_dict().values()])
        rngs.append((torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()))
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(rngs[0][0], rngs[1][0]) and rngs[0][1] == rngs[1][1]
    assert np.array_equal(rngs[0][2], rngs[1][2])


def test_evaluate_leaves_flags_grads_and_rngs():
    _, Net = user_module("lightning.pytorch")
    model, cb = Net(), callback(random_start=True)
    model.train()
    model.net[1].eval()
    flags = [m.training for m in model.modules()]
    model.net[5].weight.grad = torch.ones_like(model.net[5].weight)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    x, y = the_subset()
    with torch.no_grad():  # as in the hook
        accs = cb.evaluate(model, [(x, y)])
    assert 0 <= accs["pgd_acc"] <= accs["clean_acc"]
    assert [m.training for m in model.modules()] == flags
    for p, before in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------- eps readings


def test_normalized_eps_is_eps_times_std(tmp_path):
    pl, Net = user_module("lightning.pytorch", normalize=True)
    cb, model = callback(eps=0.4, eps_space="normalized"), Net()
    assert cb.reading(model).pixel_eps == pytest.approx((0.1,))  # 0.4 x std 0.25
    make_trainer(pl, tmp_path, [cb], max_epochs=1).fit(model, train_loader(), val_loader())
    x, y = the_subset()
    accs = robust_accuracy(model, list(zip(x.split(16), y.split(16), strict=True)),
                           {"pgd": bind("pgd", eps=0.1, steps=5)})
    assert cb.results["robust_val_acc"] == accs["pgd_acc"]


def test_normalized_eps_without_a_std_fails_at_fit_start(tmp_path):
    pl, Net = user_module("lightning.pytorch")
    cb, model = callback(eps_space="normalized"), Net()
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match="needs the model's input std"):
        trainer.fit(model, train_loader(), val_loader())
    assert trainer.global_step == 0 and cb.results == {}  # before any training
    assert callback(eps_space="normalized", std=[0.5]).reading(model).pixel_eps == (EPS * 0.5,)


# ---------------------------------------------------------------- skips, best epoch, arguments


def test_a_diverged_model_is_skipped_with_one_warning(caplog):
    _, Net = user_module("lightning.pytorch")
    cb, model = callback(), Net()
    model.diverged = True
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=False, current_epoch=0,
                              is_global_zero=True, val_dataloaders=val_loader())
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.robust_validation"):
        cb.on_validation_epoch_end(trainer, model)
        cb.on_validation_epoch_end(trainer, model)
    assert cb.results == {"robust_val_skipped": "diverged"}
    assert len(caplog.records) == 1


def test_best_is_the_first_epoch_reaching_the_maximum():
    cb = callback()
    for epoch, acc in enumerate([0.3, 0.5, 0.5, 0.2]):
        cb._record(epoch, {"pgd_acc": acc, "clean_acc": 0.9, "num_samples": 40.0})
    assert cb.results["robust_val_best_acc"] == 0.5 and cb.results["robust_val_best_epoch"] == 1
    assert cb.results["robust_val_acc"] == 0.2


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"eps": -0.1}, "-0.1"),
        ({"eps": "0.3"}, "'0.3'"),
        ({"eps": [0.1, 0.2]}, "[0.1, 0.2]"),
        ({"eps_space": "pixels"}, "'pixels'"),
        ({"steps": 0}, "0"),
        ({"alpha": 0.0}, "0.0"),
        ({"random_start": "yes"}, "'yes'"),
        ({"num_samples": 0}, "0"),
        ({"batch_size": -3}, "-3"),
        ({"every_n_epochs": 0}, "0"),
        ({"seed": 1.5}, "1.5"),
        ({"std": [0.2, -1.0]}, "[0.2, -1.0]"),
    ],
)
def test_bad_arguments_raise_one_clear_line(kwargs, shown):
    with pytest.raises(ValueError) as info:
        RobustValidation(**{"eps": 0.1, **kwargs})
    message = str(info.value)
    assert message.startswith("RobustValidation: ") and "\n" not in message
    assert message.endswith(shown), message


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_a_resumed_fit_keeps_the_history(namespace, tmp_path):
    pl, Net = user_module(namespace)
    first = callback()
    trainer = make_trainer(pl, tmp_path / "a", [first], max_epochs=2)
    trainer.fit(Net(), train_loader(), val_loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = callback()
    make_trainer(pl, tmp_path / "b", [resumed], max_epochs=3).fit(
        Net(), train_loader(), val_loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.results["robust_val_epochs"] == [0, 1, 2]
    assert resumed.results["robust_val_acc_per_epoch"][:2] == first.results["robust_val_acc_per_epoch"]
