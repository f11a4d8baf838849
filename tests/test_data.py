import pytest
import torch

from robusthp.data import DataNotFoundError, TensorBatches, load_tensors, random_crop_flip
from robusthp.data.datasets import split_indices


@pytest.mark.parametrize("name,shape", [("mnist", (1, 28, 28)), ("fashion_mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_synthetic_files_decode_to_uint8_nchw(synthetic_root, name, shape):
    x, y = load_tensors(name, synthetic_root, train=True, download=False)
    assert x.dtype == torch.uint8 and x.shape[1:] == shape
    assert y.dtype == torch.int64 and len(y) == len(x) and 0 <= y.min() and y.max() <= 9
    xt, _ = load_tensors(name, synthetic_root, train=False, download=False)
    assert len(xt) != len(x)  # train and test files are different


def test_cifar_channel_order_matches_pickle(synthetic_root):
    import pickle

    with open(synthetic_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)
    x, y = load_tensors("cifar10", synthetic_root, train=True, download=False)
    first = torch.as_tensor(raw["data"][0]).reshape(3, 32, 32)
    assert torch.equal(x[0], first) and y[0] == raw["labels"][0]


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_tensors("mnist", tmp_path / "nowhere", train=True, download=False)
    msg = str(err.value)
    assert "nowhere" in msg and "MNIST/raw" in msg and "\n" not in msg


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(100, 10, seed=3)
    tr2, va2 = split_indices(100, 10, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(set(tr.tolist()) | set(va.tolist())) == 100 and len(va) == 10
    assert not torch.equal(split_indices(100, 10, seed=4)[1], va)


def _batches(**kw):
    x = torch.arange(10, dtype=torch.uint8).repeat_interleave(4).reshape(10, 1, 2, 2)
    y = torch.arange(10)
    return TensorBatches(x, y, **kw)


def test_batches_cover_the_split_once_in_floats():
    loader = _batches(batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.max() <= 1 and torch.allclose(x[:, 0, 0, 0] * 255, torch.arange(10.0))


def test_shuffle_depends_on_epoch_and_seed_only():
    loader = _batches(batch_size=3, shuffle=True, seed=1)
    loader.set_epoch(0)
    e0 = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    e1 = torch.cat([y for _, y in loader])
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), e0)
    assert not torch.equal(e0, e1) and sorted(e0.tolist()) == list(range(10))


def test_epoch_is_read_when_a_pass_starts_from_the_source():
    epoch = [0]
    loader = _batches(batch_size=3, shuffle=True, seed=1, epoch_source=lambda: epoch[0])
    by_epoch = {}
    for e in (0, 1):
        ref = _batches(batch_size=3, shuffle=True, seed=1)
        ref.set_epoch(e)
        by_epoch[e] = torch.cat([y for _, y in ref])
    passes = iter(loader), iter(loader)  # created, not started: nothing is read yet
    epoch[0] = 1
    assert torch.equal(torch.cat([y for _, y in passes[0]]), by_epoch[1])
    epoch[0] = 0
    assert torch.equal(torch.cat([y for _, y in passes[1]]), by_epoch[0])
    loader.set_epoch(1)  # a source, when given, wins over set_epoch (Lightning calls both)
    epoch[0] = 0
    assert torch.equal(torch.cat([y for _, y in loader]), by_epoch[0])


def test_catalog_is_the_one_dataset_table():
    from robusthp import catalog, settings
    from robusthp.data import DATASETS, DatasetSpec, DataSettings, get_spec

    assert DATASETS is catalog.DATASETS and DatasetSpec is catalog.DatasetSpec
    assert get_spec is catalog.get_spec and DataSettings is settings.DataSettings
    with pytest.raises(ValueError, match="unknown dataset 'nope'; choose one of: cifar10, fashion_mnist, mnist"):
        get_spec("nope")


def test_every_catalog_dataset_has_a_torchvision_class(monkeypatch, tmp_path):
    from robusthp import catalog
    from robusthp.data.datasets import _TORCHVISION, torchvision_class

    assert set(catalog.DATASETS) <= set(_TORCHVISION)
    monkeypatch.setitem(catalog.DATASETS, "new_set", catalog.DATASETS["mnist"].__class__(
        "new_set", "New", 1, 28, 10, (0.5,), (0.5,), val_size=10, augment=False, eps=0.1, layout="x"))
    with pytest.raises(ValueError, match="'new_set' is in robusthp.catalog.DATASETS but has no torchvision"):
        torchvision_class("new_set")
    with pytest.raises(ValueError, match="no torchvision class"):
        load_tensors("new_set", tmp_path, train=True, download=False)


def test_global_batch_is_split_across_ranks():
    ranks = [_batches(batch_size=4, shuffle=True, rank=r, world_size=2) for r in range(2)]
    single = [y for _, y in _batches(batch_size=4, shuffle=True)]
    for step, global_y in enumerate(single):
        parts = [list(r)[step][1] for r in ranks]
        assert sorted(torch.cat(parts).tolist()) == sorted(global_y.tolist())
    with pytest.raises(ValueError, match="does not divide"):
        _batches(batch_size=5, world_size=2)


def _crop_flip_candidates(image: torch.Tensor, pad: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every (2*pad+1)^2 * 2 image a crop + horizontal flip may give, by offset and flip."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    out = {}
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[:, oy : oy + h, ox : ox + w]
            out[oy, ox, False], out[oy, ox, True] = crop, crop.flip(-1)
    return out


def test_random_crop_flip_is_a_zero_padded_crop_then_maybe_a_horizontal_flip():
    g = torch.Generator().manual_seed(0)
    pad, n = 2, 200
    x = torch.randint(1, 255, (n, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_crop_flip(x, g, pad=pad)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = []
    for i in range(n):
        candidates = _crop_flip_candidates(x[i], pad)
        # the 50 candidates of these random pixels are all different, so a match names one
        assert len({tuple(c.flatten().tolist()) for c in candidates.values()}) == len(candidates)
        matches = [key for key, c in candidates.items() if torch.equal(out[i], c)]
        assert len(matches) == 1, f"image {i} is no crop (+ horizontal flip) of its padded input"
        seen.append(matches[0])
    flips = {flip for _, _, flip in seen}
    offsets = {(oy, ox) for oy, ox, _ in seen}
    assert flips == {False, True}
    assert len(offsets) >= 20  # per-sample offsets (200 draws of 25: all but a few appear)
    # the same generator state gives the same crops and flips
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), pad=pad), out)


@pytest.mark.parametrize("bad,key", [(dict(steps_per_call=0), "trainer.steps_per_call"),
                                     (dict(train_subset=0), "data.train_subset"),
                                     (dict(eval_batch_size=0), "data.eval_batch_size"),
                                     (dict(dataset="nope"), "unknown dataset")])
def test_data_settings_are_checked_where_they_are_defined(bad, key):
    from robusthp.data import DataSettings

    with pytest.raises(ValueError, match=key):
        DataSettings(**bad)
