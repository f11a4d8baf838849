"""Batches sliced from in-memory uint8 tensors: no per-sample collation, no PIL.

The whole split lives on one device (the GPU when training there); each batch
is one gather, one ``float()/255`` and, for CIFAR-10, one batched random crop +
flip on that device; a rotation study adds one batched random rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from robusthp.rotation import random_rotation
from robusthp.settings import check_divides


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip of a batch.

    x: (B, C, H, W) any dtype -> same shape and dtype.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = padded[batch, chan, rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class TensorBatches:
    """An epoch-seeded iterable of ``(x float in [0,1] (B,C,H,W), y int64 (B,))`` batches.

    ``batch_size`` is the *global* batch size; with ``world_size > 1`` each rank
    yields its ``batch_size // world_size`` share of every global batch, so the
    batches studied are the same whatever the number of devices.

    ``rotation`` > 0 rotates each image by a uniform random angle in [-rotation, rotation]
    degrees (``robusthp.rotation.random_rotation``: nearest neighbour, black fill).

    The order (and the crops, flips and rotations) of a pass is a pure function of ``(seed, epoch)``.
    The epoch is read when a pass starts: from ``epoch_source()`` if one is given (the
    DataModule gives ``trainer.current_epoch``, so a resumed run reshuffles exactly as an
    uninterrupted one), else the last :meth:`set_epoch` value (0 at first; Lightning sets
    it on a loader passed to ``trainer.fit`` directly).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        epoch_source: Callable[[], int] | None = None,
        rotation: float = 0.0,
    ):
        check_divides(batch_size, world_size)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.epoch, self.epoch_source, self.rotation = 0, epoch_source, float(rotation)
        # A bare loader given to ``trainer.fit`` still reshuffles: Lightning calls
        # ``sampler.set_epoch`` on it (from its private ``_set_sampler_epoch``). The
        # DataModule's loaders read the public ``trainer.current_epoch`` instead.
        self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next passes when no ``epoch_source`` is given."""
        self.epoch = int(epoch)

    def current_epoch(self) -> int:
        """The epoch whose order the next pass yields."""
        return self.epoch if self.epoch_source is None else int(self.epoch_source())

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, dev = len(self.labels), self.images.device
        gen = torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + self.current_epoch())
        order = torch.randperm(n, generator=gen, device=dev) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            end = min(start + self.batch_size, n)
            idx = order[start:end] if order is not None else slice(start, end)
            x, y = self.images[idx], self.labels[idx]
            if self.world_size > 1:
                x, y = x[self.rank :: self.world_size], y[self.rank :: self.world_size]
            if self.augment:
                x = random_crop_flip(x, gen)
            x = x.float().div_(255)
            if self.rotation:
                x = random_rotation(x, self.rotation, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class StepChunks:
    """The batches of ``batches`` grouped into lists of up to ``steps`` ``(x, y)`` pairs.

    One list is one Lightning ``training_step`` call that takes ``steps`` SGD steps
    (see :class:`robusthp.lit_module.ClassifierModule`), so Lightning's per-call overhead is
    paid once per chunk. The steps themselves, and their order, are unchanged; the epoch
    is the wrapped loader's (:meth:`set_epoch` forwards to it).
    """

    def __init__(self, batches: TensorBatches, steps: int):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps per chunk must be an integer >= 1, got {steps!r}")
        self.batches, self.steps = batches, steps
        self.sampler, self.batch_sampler = self, None  # Lightning's set_epoch reaches it

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.batches) // self.steps)

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        chunk = []
        for pair in self.batches:
            chunk.append(pair)
            if len(chunk) == self.steps:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
