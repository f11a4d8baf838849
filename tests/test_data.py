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


def test_global_batch_is_split_across_ranks():
    ranks = [_batches(batch_size=4, shuffle=True, rank=r, world_size=2) for r in range(2)]
    single = [y for _, y in _batches(batch_size=4, shuffle=True)]
    for step, global_y in enumerate(single):
        parts = [list(r)[step][1] for r in ranks]
        assert sorted(torch.cat(parts).tolist()) == sorted(global_y.tolist())
    with pytest.raises(ValueError, match="does not divide"):
        _batches(batch_size=5, world_size=2)


def test_random_crop_flip_keeps_pixels_and_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    # every output pixel is either padding (0) or a pixel of the same image
    for i in range(4):
        assert set(out[i].unique().tolist()) - {0} <= set(x[i].unique().tolist())
    # some images are shifted or flipped, some are not
    same = (out == x).flatten(1).all(1)
    assert 0 < same.sum() < 64
