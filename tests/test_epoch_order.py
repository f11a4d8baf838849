"""Under a real ``pl.Trainer``, every epoch reshuffles, as a pure function of (seed, epoch).

The training loader learns the epoch from the trainer's public ``current_epoch`` (through
the DataModule), not from Lightning's private sampler hook, so these tests fit real
Trainers on the synthetic datasets and record what ``training_step`` is given.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from test_resume import _Crash  # kills the fit when an epoch starts, as a crash would
from torch import nn

from robusthp.data import DataSettings, ImageDataModule

EPOCHS = 3


class _Recorder(pl.LightningModule):
    """A linear classifier that records, per epoch, the labels and a fingerprint of the
    pixels of every sample its ``training_step`` is given (chunks of (x, y) pairs)."""

    def __init__(self, pixels: int):
        super().__init__()
        self.linear = nn.Linear(pixels, 10)
        self.labels: dict[int, list[torch.Tensor]] = {}
        self.pixels: dict[int, list[torch.Tensor]] = {}

    def training_step(self, chunk, batch_idx):
        loss = 0.0
        for x, y in chunk:
            self.labels.setdefault(self.current_epoch, []).append(y.clone())
            self.pixels.setdefault(self.current_epoch, []).append(x.flatten(1).sum(1).clone())
            loss = loss + nn.functional.cross_entropy(self.linear(x.flatten(1)), y)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.labels[epoch]), torch.cat(self.pixels[epoch])


def _fit(root, dataset, seed=0, epochs=EPOCHS, ckpt_dir=None, ckpt_path=None, callbacks=()):
    settings = DataSettings(dataset=dataset, root=str(root), batch_size=16, val_size=50,
                            download=False, shuffle_seed=seed, steps_per_call=3)
    datamodule = ImageDataModule(settings)
    spec = datamodule.spec
    torch.manual_seed(0)
    module = _Recorder(spec.in_channels * spec.image_size**2)
    callbacks = list(callbacks)
    if ckpt_dir is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=ckpt_dir is not None, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, datamodule


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])  # cifar10: crops and flips too
def test_each_epoch_reshuffles_and_a_second_fit_sees_the_same_orders(synthetic_root, dataset):
    first, datamodule = _fit(synthetic_root, dataset)
    second, _ = _fit(synthetic_root, dataset)
    n = datamodule.split_sizes()["train"]
    train_labels = sorted(datamodule._splits["train"][1].tolist())
    orders = [first.order(e) for e in range(EPOCHS)]
    for labels, _ in orders:
        assert len(labels) == n and sorted(labels.tolist()) == train_labels  # each sample once
    for e in range(1, EPOCHS):
        assert not torch.equal(orders[e][0], orders[0][0]), f"epoch {e} has epoch 0's order"
    for e in range(EPOCHS):  # seeded: the same orders (and augmentations) again
        assert torch.equal(second.order(e)[0], orders[e][0])
        assert torch.equal(second.order(e)[1], orders[e][1])
    other, _ = _fit(synthetic_root, dataset, seed=1, epochs=1)
    assert not torch.equal(other.order(0)[0], orders[0][0])  # the seed matters


def test_a_resumed_fit_sees_the_orders_of_an_uninterrupted_one(synthetic_root, tmp_path):
    unbroken, _ = _fit(synthetic_root, "cifar10")
    with pytest.raises(RuntimeError, match="killed"):
        _fit(synthetic_root, "cifar10", ckpt_dir=tmp_path, callbacks=[_Crash(at=2)])
    assert (tmp_path / "last.ckpt").is_file()
    resumed, _ = _fit(synthetic_root, "cifar10", ckpt_path=tmp_path / "last.ckpt")
    assert sorted(resumed.labels) == [2]  # only the last epoch ran again
    assert torch.equal(resumed.order(2)[0], unbroken.order(2)[0])
    assert torch.equal(resumed.order(2)[1], unbroken.order(2)[1])  # the same crops and flips
