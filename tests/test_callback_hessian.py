"""HessianEigenvalues in real Trainers of both Lightning namespaces, on tiny synthetic data."""

from __future__ import annotations

import csv
import importlib
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robusthp.callbacks import HessianEigenvalues
from robusthp.hessian import hessian_density, hessian_trace, layer_top_eigenvalues, top_eigenvalues

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
N_TRAIN, N_USED = 40, 24


def tiny_data(n: int = N_TRAIN, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()  # 3 classes, learnable
    return x, y


def make_classes(ns: str, eval_loader: bool = True):
    pl = importlib.import_module(ns)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch[0], batch[1]
            return F.cross_entropy(self(x), y)

        def test_step(self, batch, _):
            x, y = batch[0], batch[1]
            self.log("test_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def setup(self, stage=None):
            self.train = TensorDataset(*tiny_data())

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=16, shuffle=True)

        def test_dataloader(self):
            return DataLoader(self.train, batch_size=16)

    class DataWithEval(Data):
        def eval_train_dataloader(self):
            return DataLoader(self.train, batch_size=10)  # short last batch

    return pl, Tiny, (DataWithEval if eval_loader else Data)


def trainer(pl, tmp_path, callbacks, logger=True):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(tmp_path) if logger else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def logged(tr) -> dict[str, float]:
    with open(tr.logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("hessian/") and v}


@pytest.mark.parametrize("backend", ["lanczos", "pyhessian"])
@pytest.mark.parametrize("ns", NAMESPACES)
def test_fit_end_logs_and_stores(ns, backend, tmp_path):
    pl, Tiny, Data = make_classes(ns)
    cb = HessianEigenvalues(top_n=2, backend=backend, num_samples=N_USED, progress=False)
    assert isinstance(cb, pl.Callback)
    model, tr = Tiny(), None
    tr = trainer(pl, tmp_path, [cb])
    tr.fit(model, datamodule=Data())
    res = cb.results
    assert set(res) >= {
        "hessian_top_eig",
        "hessian_eigs",
        "hessian_backend",
        "hessian_num_hvp",
        "hessian_converged",
        "hessian_time_s",
    }
    assert res["hessian_backend"] == backend and res["hessian_num_samples"] == N_USED
    assert len(res["hessian_eigs"]) == 2 and res["hessian_top_eig"] == res["hessian_eigs"][0]
    metrics = logged(tr)
    assert metrics["hessian/top_eig"] == pytest.approx(res["hessian_top_eig"], rel=1e-6)
    assert metrics["hessian/eig_2"] == pytest.approx(res["hessian_eigs"][1], rel=1e-6)
    assert metrics["hessian/num_hvp"] == res["hessian_num_hvp"]
    assert "hessian/seconds" in metrics
    # the same numbers as the core on the first N_USED training samples, unshuffled
    x, y = tiny_data()
    direct = top_eigenvalues(model, [(x[:N_USED], y[:N_USED])], top_n=2, backend=backend)
    assert res["hessian_top_eig"] == pytest.approx(direct.top, rel=1e-4)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_dict_batches_user_batch_to_xy_alone_at_test_end(ns, tmp_path):
    pl, Tiny, _ = make_classes(ns)

    class Dicts(Dataset):
        def __init__(self):
            self.x, self.y = tiny_data()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"pixels": self.x[i], "cls": self.y[i]}

    loader = DataLoader(Dicts(), batch_size=7)
    cb = HessianEigenvalues(
        backend="lanczos",
        num_samples=None,
        dataloader=loader,
        batch_to_xy=lambda b: (b["pixels"], b["cls"]),
        on="test_end",
        batch_size=32,
        progress=False,
    )
    model = Tiny()
    tr = trainer(pl, tmp_path, cb)  # a single callback, not in a list
    tr.test(model, dataloaders=DataLoader(TensorDataset(*tiny_data(8)), batch_size=4))
    assert cb.results["hessian_num_samples"] == N_TRAIN
    assert logged(tr)["hessian/top_eig"] == pytest.approx(cb.results["hessian_top_eig"], rel=1e-6)
    x, y = tiny_data()
    assert cb.results["hessian_top_eig"] == pytest.approx(
        top_eigenvalues(model, [(x, y)], backend="lanczos").top, rel=1e-4
    )


def test_train_dataloader_fallback_warns(tmp_path, caplog):
    pl, Tiny, Data = make_classes("pytorch_lightning", eval_loader=False)
    cb = HessianEigenvalues(backend="lanczos", num_samples=16, progress=True)
    with caplog.at_level(logging.INFO, logger="robusthp.callbacks.hessian"):
        trainer(pl, tmp_path, [cb], logger=False).fit(Tiny(), datamodule=Data())
    assert "eval_train_dataloader" in caplog.text
    assert "Hessian top-1 eigenvalues" in caplog.text
    assert cb.results["hessian_num_samples"] == 16


def test_fit_without_datamodule_uses_running_train_loader(tmp_path, caplog):
    pl, Tiny, _ = make_classes("lightning.pytorch")
    cb = HessianEigenvalues(backend="lanczos", num_samples=16, progress=False)
    loader = DataLoader(TensorDataset(*tiny_data()), batch_size=8)
    trainer(pl, tmp_path, [cb], logger=False).fit(Tiny(), train_dataloaders=loader)
    assert cb.results["hessian_num_samples"] == 16


@pytest.mark.parametrize("backend", ["lanczos", "pyhessian"])
def test_hook_leaves_mode_grads_rng_as_found(backend, tmp_path):
    pl, Tiny, Data = make_classes("pytorch_lightning", eval_loader=False)
    cb = HessianEigenvalues(backend=backend, num_samples=N_USED, progress=False, on="test_end")
    model, dm = Tiny(), Data()
    tr = trainer(pl, tmp_path, [cb], logger=False)
    tr.fit(model, datamodule=dm)  # on="test_end": nothing measured at fit end
    assert cb.results == {}
    model.train()
    model.net[2].eval()
    modes = [m.training for m in model.modules()]
    sentinels = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinels, strict=True):
        p.grad = s
    torch.manual_seed(7)
    states = (torch.get_rng_state(), __import__("random").getstate())
    cb.on_train_end(tr, model)  # not a chosen stage: no-op
    assert cb.results == {}
    cb.on_test_epoch_end(tr, model)  # shuffled train_dataloader: draws from the RNG inside
    assert torch.equal(torch.get_rng_state(), states[0])
    assert __import__("random").getstate() == states[1]
    assert [m.training for m in model.modules()] == modes
    for p, s in zip(model.parameters(), sentinels, strict=True):
        assert p.grad is s and torch.all(s == 3.0)
    assert cb.results["hessian_backend"] == backend


def test_no_training_data_is_a_clear_warning_not_a_crash(tmp_path, caplog):
    """trainer.test alone has no training data: the user's test still runs."""
    pl, Tiny, _ = make_classes("lightning.pytorch")
    cb = HessianEigenvalues(on="test_end", progress=False)
    tr = trainer(pl, tmp_path, [cb], logger=False)
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.hessian"):
        tr.test(Tiny(), dataloaders=DataLoader(TensorDataset(*tiny_data(8)), batch_size=4))
    assert "dataloader=" in caplog.text and "no data at the end of test" in caplog.text
    assert cb.results == {"hessian_skipped": "no data"}


def test_defaults():
    cb = HessianEigenvalues()
    assert (cb.top_n, cb.backend, cb.num_samples, cb.on) == (1, "pyhessian", 4096, ("fit_end",))
    assert cb.split == "train" and cb.suffix == ""
    for ns in NAMESPACES:
        assert isinstance(cb, importlib.import_module(ns).Callback)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_n": 0}, "top_n"),
        ({"backend": "power"}, "lanczos, pyhessian"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0}, "tol"),
        ({"batch_size": 0}, "batch_size"),
        ({"on": ("val_end",)}, "fit_end, test_end"),
        ({"on": ()}, "fit_end, test_end"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HessianEigenvalues(**kwargs)
    with pytest.raises(TypeError, match="batch_to_xy"):
        HessianEigenvalues(batch_to_xy="x")


# ---------------------------------------------------------------------------- split="test"

N_TEST = 30


def held_out():
    return tiny_data(N_TEST, seed=1)  # other points than the training data


def make_split_classes(ns: str):
    """Tiny model and a datamodule whose test split differs from its training split."""
    pl, Tiny, DataWithEval = make_classes(ns)

    class TrainTest(DataWithEval):
        def test_dataloader(self):
            return DataLoader(TensorDataset(*held_out()), batch_size=8)

    return pl, Tiny, TrainTest


@pytest.mark.parametrize("ns", NAMESPACES)
def test_test_split_at_fit_end_is_the_test_loss_beside_the_train_one(ns, tmp_path):
    pl, Tiny, Data = make_split_classes(ns)
    on_train = HessianEigenvalues(backend="lanczos", num_samples=None, progress=False)
    on_test = HessianEigenvalues(backend="lanczos", num_samples=None, progress=False, split="test")
    model = Tiny()
    tr = trainer(pl, tmp_path, [on_train, on_test])
    tr.fit(model, datamodule=Data())
    test_res, train_res = on_test.results, on_train.results
    assert all(k.endswith("@test") or k == "hessian@test_time_s" for k in test_res), test_res
    assert not any("@" in k for k in train_res)
    assert test_res["hessian_split@test"] == "test" and train_res["hessian_split"] == "train"
    assert test_res["hessian_num_samples@test"] == N_TEST
    assert train_res["hessian_num_samples"] == N_TRAIN
    assert {**train_res, **test_res}.keys() == train_res.keys() | test_res.keys()  # no clash
    xt, yt = held_out()
    direct_test = top_eigenvalues(model, [(xt, yt)], backend="lanczos").top
    x, y = tiny_data()
    direct_train = top_eigenvalues(model, [(x, y)], backend="lanczos").top
    assert test_res["hessian_top_eig@test"] == pytest.approx(direct_test, rel=1e-4)
    assert train_res["hessian_top_eig"] == pytest.approx(direct_train, rel=1e-4)
    assert direct_test != pytest.approx(direct_train, rel=1e-2)  # the two losses do differ
    metrics = logged(tr)
    assert metrics["hessian/top_eig@test"] == pytest.approx(test_res["hessian_top_eig@test"], rel=1e-6)
    assert metrics["hessian/top_eig"] == pytest.approx(train_res["hessian_top_eig"], rel=1e-6)
    assert "hessian/num_hvp@test" in metrics and "hessian/seconds@test" in metrics


def test_test_split_at_test_end_uses_the_running_test_loader(tmp_path, caplog):
    pl, Tiny, _ = make_classes("lightning.pytorch")
    cb = HessianEigenvalues(backend="lanczos", num_samples=None, progress=False, split="test",
                            on="test_end")
    model = Tiny()
    with caplog.at_level(logging.WARNING, logger="robusthp.callbacks.hessian"):
        trainer(pl, tmp_path, [cb], logger=False).test(
            model, dataloaders=DataLoader(TensorDataset(*held_out()), batch_size=7))
    assert "shuffling" not in caplog.text  # a test loader is no unstable training loader
    xt, yt = held_out()
    assert cb.results["hessian_top_eig@test"] == pytest.approx(
        top_eigenvalues(model, [(xt, yt)], backend="lanczos").top, rel=1e-4)


def test_test_split_dataloader_still_wins(tmp_path):
    pl, Tiny, Data = make_split_classes("pytorch_lightning")
    given = DataLoader(TensorDataset(*tiny_data(12, seed=2)), batch_size=5)
    cb = HessianEigenvalues(backend="lanczos", num_samples=None, progress=False, split="test",
                            dataloader=given)
    model = Tiny()
    trainer(pl, tmp_path, [cb], logger=False).fit(model, datamodule=Data())
    x, y = tiny_data(12, seed=2)
    assert cb.results["hessian_num_samples@test"] == 12
    assert cb.results["hessian_top_eig@test"] == pytest.approx(
        top_eigenvalues(model, [(x, y)], backend="lanczos").top, rel=1e-4)


def test_test_split_without_test_data_skips_with_a_suffixed_key(tmp_path):
    pl, Tiny, _ = make_classes("lightning.pytorch")
    cb = HessianEigenvalues(progress=False, split="test", on="test_end",
                            dataloader=DataLoader(TensorDataset(*tiny_data(0)), batch_size=4))
    trainer(pl, tmp_path, [cb], logger=False).test(
        Tiny(), dataloaders=DataLoader(TensorDataset(*held_out()), batch_size=4))
    assert cb.results == {"hessian_skipped@test": "no data"}


def test_bad_split_is_one_line_naming_the_choices():
    with pytest.raises(ValueError) as err:
        HessianEigenvalues(split="val")
    assert str(err.value) == "HessianEigenvalues: split must be one of train, test, got 'val'"


# ---------------------------------------------------------------------------- the spectrum

SPECTRUM = {"trace": True, "trace_tol": 0.2, "trace_max_iter": 30, "density": True,
            "density_vectors": 2, "density_iter": 5, "per_layer": True}


def test_spectrum_is_off_by_default():
    cb = HessianEigenvalues()
    assert (cb.trace, cb.density, cb.per_layer) == (False, False, False)
    # the keyword defaults are the settings' (one declaration), the CLI's too
    from robusthp.settings import HessianSettings as S
    assert (cb.trace_tol, cb.trace_max_iter, cb.density_vectors, cb.density_iter) == (
        S.trace_tol, S.trace_max_iter, S.density_vectors, S.density_iter)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_spectrum_results_logs_and_json(ns, tmp_path):
    pl, Tiny, Data = make_classes(ns)
    cb = HessianEigenvalues(backend="lanczos", num_samples=N_USED, progress=False, **SPECTRUM)
    model = Tiny()
    tr = trainer(pl, tmp_path, [cb])
    tr.fit(model, datamodule=Data())
    res = cb.results
    json.loads(json.dumps(res, allow_nan=False))  # what results.json will hold
    assert isinstance(res["hessian_eigs"], list)
    x, y = tiny_data()
    data = [(x[:N_USED], y[:N_USED])]
    direct = hessian_trace(model, data, tol=0.2, max_iter=30)
    assert res["hessian_trace"] == pytest.approx(direct.trace, rel=1e-6)
    assert res["hessian_trace_se"] == pytest.approx(direct.se, rel=1e-6)
    assert res["hessian_trace_num_hvp"] == direct.num_hvp
    assert res["hessian_trace_converged"] is direct.converged
    density = hessian_density(model, data, n_v=2, iter=5)
    assert res["hessian_density"]["dim"] == density.dim
    np.testing.assert_allclose(res["hessian_density"]["nodes"], density.nodes, rtol=1e-6)
    np.testing.assert_allclose(res["hessian_density"]["weights"], density.weights, rtol=1e-6,
                               atol=1e-12)
    layers = layer_top_eigenvalues(model, data)
    assert res["hessian_layer_top_eig"].keys() == layers.top_eig.keys() == {"net.0", "net.3"}
    for name, value in layers.top_eig.items():
        assert res["hessian_layer_top_eig"][name] == pytest.approx(value, rel=1e-4)
    assert {"hessian_trace_time_s", "hessian_density_time_s", "hessian_layer_time_s",
            "hessian_time_s"} <= res.keys()
    metrics = logged(tr)
    assert metrics["hessian/trace"] == pytest.approx(res["hessian_trace"], rel=1e-6)
    assert metrics["hessian/trace_se"] == pytest.approx(res["hessian_trace_se"], rel=1e-6)
    assert metrics["hessian/layer_top_eig/net.3"] == pytest.approx(
        res["hessian_layer_top_eig"]["net.3"], rel=1e-6)


def test_spectrum_keys_of_the_test_split_are_suffixed(tmp_path):
    pl, Tiny, Data = make_split_classes("lightning.pytorch")
    cb = HessianEigenvalues(backend="lanczos", num_samples=None, progress=False, split="test",
                            **SPECTRUM)
    tr = trainer(pl, tmp_path, [cb])
    tr.fit(Tiny(), datamodule=Data())
    res = cb.results
    for key in ("hessian_trace", "hessian_trace_se", "hessian_trace_num_hvp", "hessian_density",
                "hessian_layer_top_eig"):
        assert f"{key}@test" in res and key not in res
    assert {"hessian_trace@test_time_s", "hessian_density@test_time_s"} <= res.keys()
    assert "hessian/trace@test" in logged(tr)


def test_spectrum_settings_reach_the_callback():
    from dataclasses import replace

    from omegaconf import OmegaConf

    from robusthp.config import settings_from_config
    from robusthp.experiment import build_callbacks
    from robusthp.settings import AdversarialSettings, HessianSettings

    settings = settings_from_config(OmegaConf.create({"model": {"name": "stdcnn"},
                                                      "regime": {"name": "lr"}}))
    hessian = HessianSettings(trace=True, trace_tol=0.1, trace_max_iter=7, density=True,
                              density_vectors=3, density_iter=9, per_layer=True)
    settings = replace(settings, adversarial=AdversarialSettings(enabled=False), hessian=hessian)
    (cb,) = [c for c in build_callbacks(settings) if isinstance(c, HessianEigenvalues)]
    assert (cb.trace, cb.trace_tol, cb.trace_max_iter, cb.density, cb.density_vectors,
            cb.density_iter, cb.per_layer) == (True, 0.1, 7, True, 3, 9, True)


@pytest.mark.parametrize("kwargs, match", [
    ({"trace_tol": 0}, "trace_tol"), ({"trace_tol": float("inf")}, "trace_tol"),
    ({"trace_tol": float("nan")}, "trace_tol"), ({"tol": float("inf")}, "tol"),
    ({"trace_max_iter": 1}, "trace_max_iter"), ({"density_vectors": 0}, "density_vectors"),
    ({"density_iter": 0}, "density_iter"), ({"trace": "yes"}, "trace"),
    ({"per_layer": 1}, "per_layer"),
])
def test_bad_spectrum_construction(kwargs, match):
    with pytest.raises(ValueError, match=f"HessianEigenvalues: {match}"):
        HessianEigenvalues(**kwargs)
