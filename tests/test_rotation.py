"""robusthp.rotation against torchvision and torch.rot90, and the training augmentation
(``data.rotation``: TensorBatches and ImageDataModule)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from robusthp.data import DataSettings, ImageDataModule, TensorBatches
from robusthp.rotation import random_rotation, rotate, rotation_tangents, uniform_angles


def images(n: int = 3, c: int = 2, h: int = 9, w: int = 9, seed: int = 0) -> torch.Tensor:
    """Random float images in (0, 1] (no exact 0, so black fill is told apart)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), generator=g).float() / 255


def torchvision_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    return TF.rotate(x, degrees, interpolation=InterpolationMode.NEAREST, fill=0)


# ---------------------------------------------------------------- rotate


@pytest.mark.parametrize("degrees", [30, -45, 10, 170, 5, -120, 63.5])
@pytest.mark.parametrize("size", [(9, 9), (10, 10), (28, 28)])
def test_rotate_equals_torchvision_nearest_black_fill(degrees, size):
    x = images(h=size[0], w=size[1])
    out = rotate(x, degrees)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torchvision_rotate(x, degrees))


def test_per_image_angles_equal_one_torchvision_call_per_image():
    x = images(n=5, h=12, w=12)
    angles = [0.0, 30.0, -45.0, 100.0, 179.0]
    out = rotate(x, torch.tensor(angles))
    for i, a in enumerate(angles):
        assert torch.equal(out[i : i + 1], torchvision_rotate(x[i : i + 1], a)), f"image {i} ({a} deg)"


@pytest.mark.parametrize("size", [5, 6, 27, 28])  # odd and even
@pytest.mark.parametrize("degrees, k", [(90, 1), (180, 2), (270, 3), (-90, 3)])
def test_quarter_turns_equal_rot90(size, degrees, k):
    x = images(h=size, w=size)
    assert torch.equal(rotate(x, degrees), torch.rot90(x, k, dims=(-2, -1)))


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (6, 9)])
def test_half_turn_of_a_non_square_image_flips_both_axes(shape):
    x = images(h=shape[0], w=shape[1])
    assert torch.equal(rotate(x, 180), x.flip(-1, -2))


def test_bilinear_at_zero_degrees_is_the_identity():
    x = images(h=11, w=7)
    torch.testing.assert_close(rotate(x, 0, mode="bilinear"), x, atol=1e-6, rtol=0)
    assert torch.equal(rotate(x, 0), x)  # nearest: exactly


def test_rotation_keeps_dtype_and_device_in_float64():
    x = images().double()
    out = rotate(x, 37.0)
    assert out.dtype == torch.float64 and torch.equal(out, torchvision_rotate(x, 37.0))


@pytest.mark.parametrize(
    "x, degrees, kwargs, match",
    [
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), 30, {}, "float \\(N, C, H, W\\) batch; got torch.uint8"),
        (torch.zeros(1, 4, 4), 30, {}, "float \\(N, C, H, W\\) batch; got torch.float32 \\(1, 4, 4\\)"),
        (torch.zeros(3, 1, 4, 4), torch.zeros(2), {}, "one angle per image \\(3\\); got shape \\(2,\\)"),
        (torch.zeros(3, 1, 4, 4), torch.zeros(3, 1), {}, "one angle per image"),
        (torch.zeros(2, 1, 4, 4), 30, {"mode": "bicubic"}, "mode must be one of nearest, bilinear; got 'bicubic'"),
    ],
)
def test_bad_input_is_one_clear_value_error(x, degrees, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        rotate(x, degrees, **kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("rotate: ")


# ---------------------------------------------------------------- random angles


def test_uniform_angles_lie_in_the_range_and_are_seeded():
    a = uniform_angles(20_000, 30.0, torch.Generator().manual_seed(5))
    assert a.shape == (20_000,) and a.dtype == torch.float32
    assert a.abs().max() <= 30 and a.min() < -29.5 and a.max() > 29.5
    assert abs(float(a.mean())) < 0.5  # centred
    assert torch.equal(uniform_angles(20_000, 30.0, torch.Generator().manual_seed(5)), a)
    assert not torch.equal(uniform_angles(20_000, 30.0, torch.Generator().manual_seed(6)), a)
    assert torch.equal(uniform_angles(10, 0.0, torch.Generator()), torch.zeros(10))


def test_random_rotation_rotates_each_image_by_its_own_drawn_angle():
    x = images(n=6, h=10, w=10)
    out = random_rotation(x, 90.0, torch.Generator().manual_seed(3))
    angles = uniform_angles(6, 90.0, torch.Generator().manual_seed(3))
    assert torch.equal(out, rotate(x, angles))
    assert random_rotation(x, 0.0) is x


# ---------------------------------------------------------------- tangents


def disc(size: int, radius: float, centre: tuple[float, float] | None = None, width: float = 1.5):
    """A smooth disc (a sigmoid edge ``width`` pixels wide), centred on the canvas by default."""
    c = (size - 1) / 2
    cy, cx = centre if centre is not None else (c, c)
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    cols = torch.arange(size, dtype=torch.float64)[None, :]
    r = ((rows - cy) ** 2 + (cols - cx) ** 2).sqrt()
    return torch.sigmoid((radius - r) / width)[None, None]


@pytest.mark.parametrize("size", [32, 33])
def test_tangents_of_a_centred_disc_vanish_and_others_do_not(size):
    centred = disc(size, size / 4)
    off = disc(size, size / 6, centre=(size / 3, size / 4))
    t_centred, t_off = rotation_tangents(centred), rotation_tangents(off)
    assert t_centred.shape == centred.shape
    # a pixel at radius r moves r * |grad| per radian: for the off-centre disc that is O(1)
    assert t_off.norm() > 1.0
    assert t_centred.norm() < 0.02 * t_off.norm()
    # the tangent is the derivative in the angle: +-1 degree moves the image along it, by
    # 1 degree's worth (central differences: bilinear's blur, even in the angle, cancels)
    moved = (rotate(off, 1.0, mode="bilinear") - rotate(off, -1.0, mode="bilinear")) / 2
    step = math.radians(1.0) * t_off
    cos = torch.nn.functional.cosine_similarity(moved.flatten(), step.flatten(), dim=0)
    assert cos > 0.999
    assert moved.norm() / step.norm() == pytest.approx(1.0, abs=0.01)


def test_tangents_need_a_positive_delta():
    with pytest.raises(ValueError, match="delta_degrees must be > 0; got 0"):
        rotation_tangents(images(), 0)


# ---------------------------------------------------------------- training augmentation


def _image_batches(**kw) -> TensorBatches:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (40, 1, 12, 12), generator=g, dtype=torch.uint8)
    return TensorBatches(x, torch.arange(40), batch_size=16, **kw)


def _cat(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_rotated_batches_are_a_function_of_seed_and_epoch():
    a, b = _image_batches(shuffle=True, seed=1, rotation=45), _image_batches(shuffle=True, seed=1, rotation=45)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, ya = _cat(a)
    xb, yb = _cat(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # a resumed run sees the same batches
    assert torch.equal(_cat(a)[0], xa)  # and a second pass too
    resumed = _image_batches(shuffle=True, seed=1, rotation=45, epoch_source=lambda: 2)
    assert torch.equal(_cat(resumed)[0], xa)


def test_another_epoch_draws_other_rotations():
    loader = _image_batches(rotation=45)  # unshuffled: the same images, in order, each epoch
    x0, y0 = _cat(loader)
    loader.set_epoch(1)
    x1, y1 = _cat(loader)
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)
    per_image_same = [torch.equal(x0[i], x1[i]) for i in range(len(y0))]
    assert sum(per_image_same) <= 2  # nearly every image is rotated differently


def test_rotation_zero_gives_the_exact_unrotated_batches():
    plain, zero = _image_batches(shuffle=True, seed=3), _image_batches(shuffle=True, seed=3, rotation=0)
    for (xp, yp), (xz, yz) in zip(plain, zero, strict=True):
        assert torch.equal(xp, xz) and torch.equal(yp, yz)
    x, _ = _cat(_image_batches())
    assert torch.equal(x, _image_batches().images.float() / 255)


def test_rotated_pixels_are_pixels_of_the_same_image_or_black():
    loader = _image_batches(rotation=180)
    x, y = _cat(loader)
    original = loader.images.float() / 255
    rotated = 0
    for i in range(len(y)):
        allowed = set(original[y[i]].flatten().tolist()) | {0.0}
        assert set(x[i].flatten().tolist()) <= allowed, f"image {i} has interpolated pixels"
        rotated += not torch.equal(x[i], original[y[i]])
    # an angle within a few degrees of 0 leaves a 12x12 image unchanged (nearest): a few may
    assert rotated >= len(y) - 4
    assert (x == 0).any()  # black corners


def _datamodule(root, rotation: float) -> ImageDataModule:
    settings = DataSettings(dataset="mnist", root=str(root), batch_size=16, val_size=50,
                            eval_batch_size=32, download=False, rotation=rotation, steps_per_call=2)
    dm = ImageDataModule(settings)
    dm.setup()
    return dm


def test_only_the_training_split_is_rotated(synthetic_root):
    plain, rotating = _datamodule(synthetic_root, 0), _datamodule(synthetic_root, 180)
    for name in ("val_dataloader", "test_dataloader", "eval_train_dataloader"):
        for (xp, yp), (xr, yr) in zip(getattr(plain, name)(), getattr(rotating, name)(), strict=True):
            assert torch.equal(xp, xr) and torch.equal(yp, yr), f"{name} is rotated"
    train_plain = [pair for chunk in plain.train_dataloader() for pair in chunk]
    train_rot = [pair for chunk in rotating.train_dataloader() for pair in chunk]
    assert len(train_plain) == len(train_rot)
    xp, yp = torch.cat([x for x, _ in train_plain]), torch.cat([y for _, y in train_plain])
    xr, yr = torch.cat([x for x, _ in train_rot]), torch.cat([y for _, y in train_rot])
    assert torch.equal(yp, yr)  # the same order: the rotation draws after the shuffle
    assert not torch.equal(xp, xr)


@pytest.mark.parametrize("bad", [-5, 181, float("nan"), "big", True])
def test_data_rotation_is_checked(bad):
    with pytest.raises(ValueError, match="data.rotation must be an angle in degrees from 0 to 180") as err:
        DataSettings(rotation=bad)
    assert "\n" not in str(err.value)


def test_data_rotation_accepts_the_range():
    assert DataSettings(rotation=0).rotation == 0.0
    assert DataSettings(rotation=180).rotation == 180.0
    assert DataSettings(rotation=22.5).rotation == 22.5
