"""One LightningModule for every registered model: cross-entropy + the paper's SGD regimes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from robusthp.attacks import fgsm, pgd
from robusthp.engm import reweighted_loss
from robusthp.optim import build_optimizer, example_weights
from robusthp.settings import AdvTrainSettings, SGDSettings

Batch = tuple[torch.Tensor, torch.Tensor]


class ClassifierModule(pl.LightningModule):
    """Trains ``model`` (inputs in [0,1], logits out) with the resolved ``sgd`` settings.

    A training "batch" is either one ``(x, y)`` pair or a list of them (a chunk, as
    :class:`robusthp.data.StepChunks` yields): each pair is one SGD step. Lightning's own
    loop costs ~0.5-0.9 ms per call on CPU (measured with a near-empty model), 5-9% of a
    StdCNN step at batch 32; a chunk of K steps per call pays it once per K steps. So the
    module optimizes manually: zero_grad, ``manual_backward``, ``optimizer.step()`` per
    pair (AMP, DDP gradient sync and ``trainer.global_step`` work as in automatic
    optimization), and steps the regime's per-epoch schedule at epoch end.

    Val/test accuracy use torchmetrics (synced under DDP); train loss/accuracy are
    device-side sums, so the per-step path has no host sync. Every ``check_every`` SGD
    steps the loss sum is read: a non-finite loss marks the run ``diverged`` and stops it.
    Logs ``train/loss``, ``train/acc`` (epoch means), ``val/acc``, ``test/acc``.

    Adversarial training (``adv_train``, resolved :class:`AdvTrainSettings`; ``adv_eps`` and
    ``adv_alpha`` its budget and PGD step in pixels, one value per channel or one for all)
    replaces each step's inputs by :meth:`train_inputs`, crafted by ``robusthp.attacks`` (the evaluation's code) against
    the current weights; ``train/loss`` and ``train/acc`` are then on those examples. The
    ENGM regime (``sgd.optimizer == "engm"``) weights each example's loss by
    ``1 / max(‖g_i‖, γ)`` (``robusthp.engm``) before the SGD step.
    """

    def __init__(self, model: nn.Module, sgd: SGDSettings, check_every: int = 50,
                 adv_train: AdvTrainSettings | None = None,
                 adv_eps: float | Sequence[float] | None = None,
                 adv_alpha: float | Sequence[float] | None = None, seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.sgd, self.check_every = model, sgd, check_every
        self.adv_train = adv_train if adv_train is not None and adv_train.enabled else None
        if self.adv_train is not None and (adv_eps is None or self.adv_train.steps is None):
            raise ValueError("adversarial training needs resolved settings "
                             "(AdvTrainSettings.resolved) and adv_eps, its budget in pixels")
        self._adv_eps, self._adv_alpha = _per_channel(adv_eps), _per_channel(adv_alpha)
        if self.adv_train is not None and self.adv_train.eps_space != "pixel" and adv_alpha is None:
            raise ValueError("adv_train.eps_space is normalized: pass adv_alpha, the PGD step in "
                             "pixels (robusthp.experiment.adv_train_pixel_alpha)")
        self.seed = seed
        self._adv_generator: torch.Generator | None = None  # random starts; made on the device
        self._adv_state: torch.Tensor | None = None  # a resumed run's generator state
        self._engm = example_weights(sgd)  # ENGM regime: per-example weights, else None
        self.diverged = False
        self._steps = 0  # SGD steps this epoch
        self._loss_sum = torch.zeros(())  # this epoch's summed loss, on the device
        self._correct = torch.zeros((), dtype=torch.long)  # this epoch's correct predictions
        self._count = 0  # training samples this epoch
        num_classes = getattr(model, "num_classes", None) or _num_outputs(model)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.last_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ training

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._count = self._steps = 0

    def training_step(self, batch: Batch | Sequence[Batch], batch_idx: int) -> None:
        optimizer = self.optimizers()
        for x, y in _pairs(batch):
            if self.diverged:
                break
            self._sgd_step(optimizer, x, y)

    def _sgd_step(self, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.adversarial_epoch():
            x = self._craft(x, y, self._training_generator(x.device))
        weights = None if self._engm is None else self._engm(self.model, x, y)
        logits = self.model(x)
        if weights is None:
            loss = mean_loss = F.cross_entropy(logits, y)
        else:
            loss = reweighted_loss(logits, y, weights)
            with torch.no_grad():  # the logged loss: unweighted, comparable with SGD's
                mean_loss = F.cross_entropy(logits, y, reduction="none").mean()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self._loss_sum.add_(mean_loss.detach(), alpha=len(y))
        self._correct.add_((logits.argmax(1) == y).sum())
        self._count += len(y)
        self._steps += 1
        if self._steps % self.check_every == 0:
            self._check_finite()

    # ------------------------------------------------------------------ adversarial training

    def adversarial_epoch(self) -> bool:
        """Whether this epoch trains on adversarial examples (all of them, or the last
        ``adv_train.last_epochs``)."""
        at = self.adv_train
        if at is None:
            return False
        if at.last_epochs is None or self._trainer is None:
            return True
        return self.current_epoch >= self.trainer.max_epochs - at.last_epochs

    def train_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The inputs a training step of this epoch takes for ``(x, y)``: ``x`` itself, or
        its adversarial examples. The hook ``robusthp.callbacks.GradientStatistics`` calls;
        random starts come from a fresh generator seeded with the run's seed, so calling it
        never changes the training's own stream."""
        if not self.adversarial_epoch():
            return x
        return self._craft(x, y, torch.Generator(device=x.device).manual_seed(self.seed))

    def _training_generator(self, device: torch.device) -> torch.Generator:
        if self._adv_generator is None or self._adv_generator.device != device:
            self._adv_generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._adv_state is not None:  # resumed: go on where the checkpoint stopped
                self._adv_generator.set_state(self._adv_state)
                self._adv_state = None
        return self._adv_generator

    def _craft(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        at = self.adv_train
        eps = _box(self._adv_eps, x.device)
        alpha = _box(self._adv_alpha, x.device) if self._adv_alpha else at.alpha
        keep_mode = at.bn_mode == "train"
        with _running_stats_kept(self.model, keep_mode):
            if at.method == "fgsm":
                return fgsm(self.model, x, y, eps=eps, keep_mode=keep_mode)
            return pgd(self.model, x, y, eps=eps, alpha=alpha, steps=at.steps,
                       random_start=at.random_start, generator=generator, keep_mode=keep_mode)

    def _check_finite(self) -> None:
        if not bool(torch.isfinite(self._loss_sum)):
            self.diverged = True
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        loss_sum, correct, count = self._epoch_sums()
        if count:
            metrics = {"train/loss": loss_sum / count, "train/acc": correct / count}
            self.log_dict(metrics, on_epoch=True)
            self.last_metrics.update(metrics)
        scheduler = self.lr_schedulers()
        if scheduler is not None and not self.diverged:
            scheduler.step()

    def _epoch_sums(self) -> tuple[float, int, int]:
        """This epoch's summed loss, correct predictions and samples over ALL ranks: under
        DDP each rank trains on its share of every global batch, so one rank's sums would
        describe half (or less) of the epoch."""
        sums = torch.stack([self._loss_sum.double(), self._correct.double(),
                            torch.tensor(float(self._count), dtype=torch.float64, device=self._loss_sum.device)])
        trainer = self._trainer  # None outside a fit (e.g. a direct call in a test)
        if trainer is not None and trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        loss_sum, correct, count = sums.tolist()
        return loss_sum, int(correct), int(count)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model.parameters(), self.sgd)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ resuming

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the global RNG streams (dropout draws from them), so a resumed run takes
        the same steps as an unbroken one."""
        checkpoint["rng_states"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        if self._adv_generator is not None:  # the random starts of adversarial training
            checkpoint["rng_states"]["adv_train"] = self._adv_generator.get_state()
        if self._engm is not None:
            checkpoint["engm"] = self._engm.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states", {})
        if "cpu" in states:
            torch.set_rng_state(states["cpu"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        if "adv_train" in states:
            self._adv_generator = None
            self._adv_state = states["adv_train"]
        if self._engm is not None and "engm" in checkpoint:
            self._engm.load_state_dict(checkpoint["engm"])

    # ------------------------------------------------------------------ evaluation

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


def _per_channel(value: float | Sequence[float] | None) -> tuple[float, ...]:
    """A pixel budget as a tuple: one value per channel, or one for all; () for None."""
    if value is None:
        return ()
    return (float(value),) if isinstance(value, int | float) else tuple(float(v) for v in value)


def _box(values: tuple[float, ...], device: torch.device) -> float | torch.Tensor:
    """What the attacks take: a float when all channels agree (torchattacks' arithmetic),
    else a ``(C, 1, 1)`` per-channel box."""
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, device=device).view(-1, 1, 1)


@contextlib.contextmanager
def _running_stats_kept(model: nn.Module, keep: bool) -> Iterator[None]:
    """With ``keep``: BatchNorm's running statistics (and batch counts) restored on exit,
    so crafting in train mode updates none of them."""
    if not keep:
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False) if v is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved, strict=True):
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


def _pairs(batch: Batch | Sequence[Batch]) -> Sequence[Batch]:
    """The SGD steps in a training batch: ``(x, y)`` is one, a list of pairs is several."""
    if isinstance(batch[0], torch.Tensor):
        return [batch]
    return batch


def _num_outputs(model: nn.Module) -> int:
    """Classes of a model whose last Linear layer gives the logits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot infer the number of classes: the model has no nn.Linear layer")
    return linears[-1].out_features
