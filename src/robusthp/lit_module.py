"""One LightningModule for every registered model: cross-entropy + the paper's SGD regimes."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from robusthp.optim import SGDSettings, build_optimizer


class ClassifierModule(pl.LightningModule):
    """Trains ``model`` (inputs in [0,1], logits out) with the resolved ``sgd`` settings.

    Val/test accuracy use torchmetrics (synced under DDP); train loss/accuracy are
    device-side sums, so the per-step path needs no torchmetrics call.
    Logs ``train/loss``, ``train/acc`` (epoch means), ``val/acc``, ``test/acc``.
    Keeps the per-step path free of host syncs: sums stay on the device and are
    read every ``check_every`` steps, where a non-finite loss marks the run
    ``diverged`` and stops the trainer.
    """

    def __init__(self, model: nn.Module, sgd: SGDSettings, check_every: int = 50):
        super().__init__()
        self.model, self.sgd, self.check_every = model, sgd, check_every
        self.diverged = False
        self._train_sums = torch.zeros(3)  # loss sum, correct, count (this epoch)
        num_classes = getattr(model, "num_classes", None) or _num_outputs(model)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.last_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self._train_sums.device != loss.device:
            self._train_sums = self._train_sums.to(loss.device)
        n = y.numel()
        step_sums = torch.stack(
            [loss.detach() * n, (logits.detach().argmax(1) == y).sum().to(loss.dtype), loss.new_tensor(n)]
        )
        self._train_sums += step_sums
        if (batch_idx + 1) % self.check_every == 0:
            self._check_finite()
        return loss

    def _check_finite(self) -> None:
        if not math.isfinite(float(self._train_sums[0])):
            self.diverged = True
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        loss_sum, correct, count = self._train_sums.tolist()
        self._train_sums.zero_()
        if count:
            metrics = {"train/loss": loss_sum / count, "train/acc": correct / count}
            self.log_dict(metrics, on_epoch=True)
            self.last_metrics.update(metrics)

    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        metric = self.val_acc if stage == "val" else self.test_acc
        metric.update(self.model(x), y)

    def _eval_epoch_end(self, stage: str) -> None:
        metric = self.val_acc if stage == "val" else self.test_acc
        if not metric.update_called:
            return
        acc = float(metric.compute())  # synced across devices by torchmetrics
        metric.reset()
        self.log(f"{stage}/acc", acc, sync_dist=False)
        self.last_metrics[f"{stage}/acc"] = acc

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model.parameters(), self.sgd)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _num_outputs(model: nn.Module) -> int:
    """Classes of a model whose last Linear layer gives the logits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot infer the number of classes: the model has no nn.Linear layer")
    return linears[-1].out_features
