"""Gradient statistics: the core against a dense float64 loop, and the callback in real
Trainers of both Lightning namespaces (the module and data written here, as a user would)."""

from __future__ import annotations

import csv
import importlib
import logging
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.callbacks._lightning import seeded_samples, whole_batches
from robusthp.callbacks.gradient_stats import GradientStatistics
from robusthp.gradient_stats import STAT_KEYS, gradient_statistics

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
NUM_CLASSES = 3

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def tiny_net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(3 * 6 * 6, NUM_CLASSES),
    ).to(dtype)
    net[1].running_mean.uniform_(-0.2, 0.2)  # non-trivial eval-mode BatchNorm
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def images(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """[0, 1] 1x6x6 images, the class a bright quadrant (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 6, 6, generator=g)
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3] += 0.6
    return x.clamp(0, 1).to(dtype), y


# ---------------------------------------------------------------- the core


def dense_statistics(model: nn.Module, batches) -> dict[str, float]:
    """The five statistics from every g_i, one backward pass per example, eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    per_batch = []
    for x, y in batches:
        rows = []
        for xi, yi in zip(x, y, strict=True):
            loss = nn.functional.cross_entropy(model(xi[None]), yi[None])
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
        per_batch.append(torch.stack(rows))  # (m_b, P)
    g = torch.cat(per_batch)  # (N, P)
    g_mean = g.mean(0)
    batch_means = torch.stack([b.mean(0) for b in per_batch])  # (B, P)
    return {
        "grad_norm": float(batch_means.norm(dim=1).mean()),
        "grad_example_norm": float(g.norm(dim=1).mean()),
        "grad_mean_norm": float(g_mean.norm()),
        "grad_var": float((g - g_mean).square().sum(1).mean()),
        "grad_batch_var": float((batch_means - batch_means.mean(0)).square().sum(1).mean())
        if len(per_batch) > 1 else math.nan,
    }


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_core_matches_a_dense_loop(chunk_size):
    """Unequal batches (so Ḡ is not ḡ), chunks that split batches, float64 throughout."""
    model = tiny_net(torch.float64).train()
    x, y = images(17, seed=1, dtype=torch.float64)
    batches = [(x[:6], y[:6]), (x[6:12], y[6:12]), (x[12:], y[12:])]
    got = gradient_statistics(model, batches, chunk_size=chunk_size)
    assert model.training and model[4].training  # flags restored
    assert all(p.grad is None for p in model.parameters())  # never written
    want = dense_statistics(tiny_net(torch.float64), batches)
    assert set(got) == set(STAT_KEYS)
    for key in STAT_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-14), key
    assert got["grad_var"] > 0 and got["grad_batch_var"] > 0
    assert got["grad_example_norm"] >= got["grad_norm"] >= got["grad_mean_norm"] - 1e-12


def test_core_float32_model_close_to_dense():
    model = tiny_net()
    x, y = images(12, seed=2)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    got = gradient_statistics(model, batches)
    want = dense_statistics(tiny_net(), batches)
    for key in STAT_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_one_batch_has_no_batch_variance_and_no_batches_raise():
    x, y = images(5, seed=3, dtype=torch.float64)
    stats = gradient_statistics(tiny_net(torch.float64), [(x, y)])
    assert math.isnan(stats["grad_batch_var"])
    assert stats["grad_norm"] == pytest.approx(stats["grad_mean_norm"], rel=1e-12)  # G_1 = ḡ
    with pytest.raises(ValueError, match="no batches"):
        gradient_statistics(tiny_net(), [])
    with pytest.raises(ValueError, match="no examples"):
        gradient_statistics(tiny_net(), [(x[:0].float(), y[:0])])


def test_identical_examples_have_zero_variance():
    x, y = images(1, seed=4, dtype=torch.float64)
    batches = [(x.repeat(4, 1, 1, 1), y.repeat(4))] * 3
    stats = gradient_statistics(tiny_net(torch.float64), batches)
    assert stats["grad_var"] == pytest.approx(0.0, abs=1e-20 + 1e-12 * stats["grad_mean_norm"] ** 2)
    assert stats["grad_batch_var"] == pytest.approx(0.0, abs=1e-20 + 1e-12 * stats["grad_mean_norm"] ** 2)
    assert stats["grad_example_norm"] == pytest.approx(stats["grad_mean_norm"], rel=1e-10)


# ---------------------------------------------------------------- subset helpers


def test_seeded_subset_is_seeded_and_whole_batches():
    x, y = images(50, seed=5)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    rng = torch.get_rng_state()
    a, b = (seeded_samples(loader, 20, 0, lambda t: t) for _ in range(2))
    c = seeded_samples(loader, 20, 1, lambda t: t)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:20]
    assert torch.equal(a[0], x[idx]) and torch.equal(a[1], y[idx])
    assert [len(bt[1]) for bt in whole_batches(*a, batch_size=8)] == [8, 8]  # the 4 dropped
    assert [len(bt[1]) for bt in whole_batches(*a, batch_size=32)] == [20]  # the only batch


class Augmenting(TensorDataset):
    """Draws from all three global RNGs per item, as an augmentation would."""

    def __getitem__(self, i):
        torch.rand(1), random.random(), np.random.rand()
        return super().__getitem__(i)


def test_seeded_subset_leaves_global_rngs_and_reads_other_loaders():
    x, y = images(30, seed=7)

    def stream():  # no .dataset: its first points, drawing as it goes
        for i in range(0, 30, 10):
            torch.rand(1), random.random(), np.random.rand()
            yield x[i : i + 10], y[i : i + 10]

    random.seed(1)
    np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    seeded_samples(DataLoader(Augmenting(x, y), batch_size=8), 12, 0, lambda t: t)
    first = seeded_samples(stream(), 15, 0, lambda t: t)
    assert torch.equal(first[0], x[:15]) and torch.equal(first[1], y[:15])
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


# ---------------------------------------------------------------- the callback in a Trainer


def user_module(namespace: str, perturb: float | None = None, draw: bool = False):
    """A user's LightningModule; with ``perturb``, a ``train_inputs`` hook that adds it to x
    (and, with ``draw``, draws from the global RNGs and writes ``.grad``: side effects
    the callback must undo)."""
    pl = importlib.import_module(namespace)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()
            self.hook_calls: list[tuple[bool, bool]] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    if perturb is None:
        return pl, Net

    class AdversarialNet(Net):
        def train_inputs(self, x, y):
            self.hook_calls.append((self.training, torch.is_grad_enabled()))
            self.eval()  # an attack's habit: the callback must restore the flags
            if draw:  # and writes .grad, as an attack using backward() would
                torch.rand(3), random.random(), np.random.rand()
                nn.functional.cross_entropy(self(x), y).backward()
            return x + perturb

    return pl, AdversarialNet


def train_loader() -> DataLoader:
    return DataLoader(TensorDataset(*images(64, seed=0)), batch_size=16, shuffle=True)


def make_trainer(pl, tmp_path: Path, callbacks, max_epochs: int = 3):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="run"), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )


def metric_rows(trainer, name: str) -> list[tuple[int, float]]:
    """(epoch, value) of every metrics.csv row where ``name`` is set."""
    trainer.logger.save()
    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as f:
        return [(int(r["epoch"]), float(r[name])) for r in csv.DictReader(f) if r.get(name)]


def stats_callback(**kwargs) -> GradientStatistics:
    return GradientStatistics(**{"num_samples": 40, "progress": False, **kwargs})


@pytest.mark.parametrize("alone", [True, False], ids=["callbacks=cb", "callbacks=[cb]"])
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fit_logs_every_epoch(namespace, alone, tmp_path):
    pl, Net = user_module(namespace)
    cb, model = stats_callback(), Net()
    assert isinstance(cb, pl.Callback)
    trainer = make_trainer(pl, tmp_path, cb if alone else [cb])
    trainer.fit(model, train_loader())

    r = cb.results
    assert r["grad_stats_epochs"] == [0, 1, 2]
    assert r["grad_stats_batch_size"] == 16 and r["grad_stats_num_samples"] == 32  # 40 -> 2 whole batches
    assert r["grad_stats_time_s"] > 0
    for key in STAT_KEYS:
        assert len(r[f"{key}_per_epoch"]) == 3 and r[f"{key}_per_epoch"][-1] == r[key]
        rows = metric_rows(trainer, "grad/" + key[len("grad_"):])
        assert [epoch for epoch, _ in rows] == [0, 1, 2]
        assert [v for _, v in rows] == pytest.approx(r[f"{key}_per_epoch"], rel=1e-6)
    # the last epoch's values are those of the trained model on the same subset
    x, y = seeded_samples(train_loader(), 32, 0, lambda b: b)
    again = gradient_statistics(model, list(zip(x.split(16), y.split(16), strict=True)))
    for key in STAT_KEYS:
        assert r[key] == pytest.approx(again[key], rel=1e-5), key


def test_every_n_epochs_and_num_batches(tmp_path):
    pl, Net = user_module("lightning.pytorch")
    cb = stats_callback(every_n_epochs=2, num_batches=3, batch_size=8)
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=4)
    trainer.fit(Net(), train_loader())
    assert cb.results["grad_stats_epochs"] == [1, 3]
    assert len(cb.results["grad_var_per_epoch"]) == 2
    assert cb.results["grad_stats_num_samples"] == 24 and cb.results["grad_stats_batch_size"] == 8


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_train_inputs_hook_is_used(namespace, tmp_path):
    """Same weights (the hook is not used in training here), a perturbed input: another
    grad_norm, and exactly the one of the perturbed subset."""
    pl, Net = user_module(namespace)
    _, Perturbed = user_module(namespace, perturb=0.7)
    plain, perturbed = stats_callback(), stats_callback()
    pl.seed_everything(0, verbose=False)
    make_trainer(pl, tmp_path / "a", [plain]).fit(Net(), train_loader())
    pl.seed_everything(0, verbose=False)
    model = Perturbed()
    make_trainer(pl, tmp_path / "b", [perturbed]).fit(model, train_loader())
    assert set(model.hook_calls) == {(True, True)}  # in the training flags, gradients on
    assert len(model.hook_calls) == 3 * 2  # every epoch, every batch
    assert abs(perturbed.results["grad_norm"] / plain.results["grad_norm"] - 1) > 0.05
    x, y = seeded_samples(train_loader(), 32, 0, lambda b: b)
    again = gradient_statistics(model, [(xb + 0.7, yb) for xb, yb in zip(x.split(16), y.split(16), strict=True)])
    assert perturbed.results["grad_norm"] == pytest.approx(again["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_training_is_unchanged(namespace, tmp_path):
    """Dropout, BatchNorm, a shuffled loader and a hook that draws from the global RNGs:
    any draw, flag or .grad left behind would change the weights."""
    pl, Net = user_module(namespace, perturb=0.1, draw=True)
    finals, rngs = [], []
    for i, callbacks in enumerate([[], [stats_callback()]]):
        pl.seed_everything(3, verbose=False)
        model = Net()
        make_trainer(pl, tmp_path / str(i), callbacks).fit(model, train_loader())
        finals.append([p.detach().clone() for p in model.state_dict().values()])
        rngs.append((torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()))
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(rngs[0][0], rngs[1][0]) and rngs[0][1] == rngs[1][1]
    assert np.array_equal(rngs[0][2], rngs[1][2])


def test_measure_leaves_flags_grads_and_rngs():
    _, Net = user_module("lightning.pytorch", perturb=0.2, draw=True)
    model = Net()
    model.train()
    model.net[1].eval()
    flags = [m.training for m in model.modules()]
    model.net[5].weight.grad = torch.ones_like(model.net[5].weight)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    x, y = images(16, seed=6)
    stats = stats_callback().measure(model, [(x[:8], y[:8]), (x[8:], y[8:])])
    assert all(math.isfinite(v) for v in stats.values())
    assert [m.training for m in model.modules()] == flags
    for p, before in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_a_diverged_model_is_skipped(caplog):
    _, Net = user_module("lightning.pytorch")
    cb, model = stats_callback(), Net()
    model.diverged = True
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=True, train_dataloader=train_loader())
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.gradient_stats"):
        cb.on_train_epoch_end(trainer, model)
        cb.on_train_epoch_end(trainer, model)
    assert cb.results == {"grad_stats_skipped": "diverged"}
    assert len(caplog.records) == 1  # once, not every epoch
    other_rank = SimpleNamespace(current_epoch=0, is_global_zero=False, train_dataloader=train_loader())
    fresh = stats_callback()
    fresh.on_train_epoch_end(other_rank, Net())
    assert fresh.results == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples must be >= 1, got 0"),
        ({"batch_size": -2}, "batch_size must be >= 1, got -2"),
        ({"num_batches": 0}, "num_batches must be >= 1, got 0"),
        ({"every_n_epochs": 0}, "every_n_epochs must be >= 1, got 0"),
        ({"chunk_size": 1.5}, "chunk_size must be an integer, got 1.5"),
        ({"seed": "a"}, "seed must be an integer, got 'a'"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        GradientStatistics(**kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("GradientStatistics: ")


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_a_resumed_fit_keeps_the_history(namespace, tmp_path):
    pl, Net = user_module(namespace)
    first = stats_callback()
    trainer = make_trainer(pl, tmp_path / "a", [first], max_epochs=2)
    trainer.fit(Net(), train_loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = stats_callback()
    make_trainer(pl, tmp_path / "b", [resumed], max_epochs=3).fit(
        Net(), train_loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.results["grad_stats_epochs"] == [0, 1, 2]
    assert resumed.results["grad_norm_per_epoch"][:2] == first.results["grad_norm_per_epoch"]
    assert resumed.results["grad_stats_time_s"] > first.results["grad_stats_time_s"]
