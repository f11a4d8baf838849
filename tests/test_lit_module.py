"""ClassifierModule: chunked SGD steps are the same steps; the benchmark schedule; divergence."""

import pytest
import pytorch_lightning as pl
import torch

from robusthp.data import StepChunks, TensorBatches
from robusthp.lit_module import ClassifierModule
from robusthp.models import build_model
from robusthp.optim import resolve_sgd


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _fit(loader, sgd, epochs=2, callbacks=()):
    torch.manual_seed(0)
    model = build_model("stdcnn", in_channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.25,))
    module = ClassifierModule(model, sgd, check_every=3)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks))
    trainer.fit(module, train_dataloaders=loader)
    return module, trainer


def test_chunks_group_batches_in_order():
    x, y = _data(100)
    batches = TensorBatches(x, y, 16, shuffle=True, seed=3)
    chunks = StepChunks(batches, 3)
    flat = [pair for chunk in chunks for pair in chunk]
    assert len(chunks) == 3 and [len(c) for c in chunks] == [3, 3, 1]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(flat, batches, strict=True))
    with pytest.raises(ValueError, match="integer >= 1"):
        StepChunks(batches, 0)


@pytest.mark.parametrize("steps", [3, 8])
def test_chunked_steps_give_the_same_weights_as_one_step_per_call(steps):
    x, y = _data()
    sgd = resolve_sgd("lr", batch_size=32, momentum=0.5)
    one, t1 = _fit(TensorBatches(x, y, 32, shuffle=True), sgd)
    many, tk = _fit(StepChunks(TensorBatches(x, y, 32, shuffle=True), steps), sgd)
    assert t1.global_step == tk.global_step == 2 * 7  # 200 samples / 32 -> 7 SGD steps an epoch
    for a, b in zip(one.parameters(), many.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert one.last_metrics["train/loss"] == many.last_metrics["train/loss"]


class _LrLog(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_benchmark_schedule_halves_every_five_epochs_in_training():
    x, y = _data(64)
    sgd = resolve_sgd("benchmark", batch_size=64)
    log = _LrLog()
    _fit(StepChunks(TensorBatches(x, y, 64), 8), sgd, epochs=11, callbacks=[log])
    assert log.lrs == [0.01 * 0.5 ** (e // 5) for e in range(11)]  # halving is exact in binary
    assert log.lrs[0] == 0.01 and log.lrs[4] == 0.01 and log.lrs[5] == 0.005 and log.lrs[10] == 0.0025


def test_divergence_stops_training_and_is_flagged():
    x, y = _data()
    sgd = resolve_sgd("lr", batch_size=32, lr=1e6)
    module, trainer = _fit(StepChunks(TensorBatches(x, y, 32), 8), sgd, epochs=5)
    assert module.diverged and trainer.current_epoch < 5
