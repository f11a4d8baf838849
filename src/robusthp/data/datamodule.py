"""The Lightning DataModule for the paper's three datasets (no Hydra here)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from robusthp.data.datasets import DatasetSpec, get_spec, load_tensors, split_indices
from robusthp.data.loader import StepChunks, TensorBatches
from robusthp.settings import DataSettings  # defined and checked there; re-exported here

__all__ = ["DataSettings", "ImageDataModule"]


class ImageDataModule(pl.LightningDataModule):
    """MNIST / Fashion-MNIST / CIFAR-10 as in-memory tensors, split as the paper.

    The training loader reshuffles (and re-augments) each epoch: it reads the epoch from
    the attached trainer's public ``current_epoch`` when a pass starts, so the batches of
    epoch ``e`` depend on ``(shuffle_seed, e)`` only, and a run resumed at epoch ``e``
    sees the same batches as an uninterrupted one.
    """

    def __init__(self, settings: DataSettings):
        super().__init__()
        self.settings = settings
        self.spec: DatasetSpec = get_spec(settings.dataset)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_data(self) -> None:
        s = self.settings
        for train in (True, False):
            load_tensors(s.dataset, s.root, train=train, download=s.download)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        s = self.settings
        images, labels = load_tensors(s.dataset, s.root, train=True, download=s.download)
        val_size = self.spec.val_size if s.val_size is None else s.val_size
        train_idx, val_idx = split_indices(len(labels), val_size, s.split_seed)
        if s.train_subset is not None:
            train_idx = train_idx[: s.train_subset]
        test_images, test_labels = load_tensors(s.dataset, s.root, train=False, download=s.download)
        if s.test_subset is not None:
            test_images, test_labels = test_images[: s.test_subset], test_labels[: s.test_subset]
        device = self._device()
        self._splits = {
            "train": (images[train_idx].to(device), labels[train_idx].to(device)),
            "val": (images[val_idx].to(device), labels[val_idx].to(device)),
            "test": (test_images.to(device), test_labels.to(device)),
        }

    def _device(self) -> torch.device:
        trainer = self.trainer
        if self.settings.on_device and trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def current_epoch(self) -> int:
        """The attached trainer's epoch (0 with none): the training order's epoch."""
        trainer = self.trainer
        return 0 if trainer is None else trainer.current_epoch

    def split_sizes(self) -> dict[str, int]:
        return {name: len(y) for name, (_, y) in self._splits.items()}

    def _batches(self, split: str, batch_size: int, train: bool) -> TensorBatches:
        if not self._splits:
            self.setup()
        images, labels = self._splits[split]
        trainer = self.trainer
        world = trainer.world_size if (train and trainer is not None) else 1
        rank = trainer.global_rank if (train and trainer is not None) else 0
        return TensorBatches(
            images, labels, batch_size,
            shuffle=train, augment=train and self.spec.augment, seed=self.settings.shuffle_seed,
            rank=rank, world_size=world, channels_last=self.settings.channels_last,
            epoch_source=self.current_epoch if train else None,
            rotation=self.settings.rotation if train else 0.0,
        )

    def train_dataloader(self) -> StepChunks:
        batches = self._batches("train", self.settings.batch_size, train=True)
        return StepChunks(batches, self.settings.steps_per_call)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", self.settings.eval_batch_size, train=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.settings.eval_batch_size, train=False)

    def eval_train_dataloader(self) -> TensorBatches:
        """The training split unshuffled and unaugmented (for the Hessian callback)."""
        return self._batches("train", self.settings.eval_batch_size, train=False)
