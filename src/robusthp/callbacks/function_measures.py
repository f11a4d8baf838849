"""``FunctionMeasures``: Lipschitz bounds, input-gradient norms and the weight norm of any
LightningModule, as a callback (Ma, Pan, Farahmand 2023, arXiv 2308.06703).

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks import FunctionMeasures
    cb = FunctionMeasures(num_samples=1000)
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results  # {"lipschitz_upper": ..., "input_grad_norm_median": ..., "weight_norm": ...}

The module's ``forward`` must map ``[0, 1]`` pixels to logits (normalization inside). The
measures are ``robusthp.function_measures``' (pure torch; see its docstring for each
layer type's bound):

- ``lipschitz_upper`` (float): an upper bound of the global L2 Lipschitz constant, pixels
  to logits, at the data's image shape; ``lipschitz_layers``: ``[[name, norm], ...]``, each
  layer's own norm in call order. A model whose forward the bound cannot follow (a layer
  type without a rule, say) gets NaN and ``[]``, with a warning that names the reason;
- ``lipschitz_ma2023`` (float): the authors' number, their block rule over reshaped-kernel
  norms (neither bound); NaN, with a warning, for a layer type it has no rule for;
- ``input_grad_norm_median`` / ``_p95`` / ``_mean``: of ``||grad_x f_y(x)||_2`` over the
  first ``num_samples`` test points (median and 95th percentile with linear interpolation);
- ``weight_norm``: sqrt of the sum of squares of all parameters;
- ``function_num_samples`` (int) and ``function_time_s``.

Loggers get every scalar key, prefixed ``func/``. Hooks, stages (``on=``), data (test data
only: ``dataloader=``, else the datamodule's ``test_dataloader()`` at fit end, else the
running test's loader at test end; no data at fit end moves the evaluation to the next
``trainer.test``), skip rules (global rank zero only, not after an interrupted fit, not on
a diverged model: ``{"function_skipped": reason}``), the RNG guard and the argument checks
are shared with ``AdversarialRobustness`` (``_lightning.py``); the keyword defaults are
``robusthp.settings.FunctionSettings``'. Leaves the model's train/eval flags, its
parameters' ``.grad`` and the global RNGs as it found them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from robusthp.callbacks import _lightning as shared
from robusthp.function_measures import (
    input_gradient_norms,
    lipschitz_ma2023,
    lipschitz_upper_bound,
    weight_norm,
)
from robusthp.settings import FunctionSettings, integer, positive_number

log = logging.getLogger(__name__)

LOG_PREFIX = "func/"
_OWNER = "FunctionMeasures"


class _FunctionMeasuresLogic(shared.TestDataEvaluation):
    """Lightning-free logic; ``FunctionMeasures`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "function_skipped", log
    log_prefix, title = LOG_PREFIX, "function measures"

    def __init__(
        self,
        power_iters: int = FunctionSettings.power_iters,
        tol: float = FunctionSettings.tol,
        num_samples: int | None = FunctionSettings.num_samples,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        seed: int = 0,
        batch_size: int | None = FunctionSettings.batch_size,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.power_iters = shared.check_value(_OWNER, integer(1), power_iters, "power_iters")
        self.tol = shared.check_value(_OWNER, positive_number, tol, "tol")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.dataloader, self.seed, self.progress = dataloader, int(seed), bool(progress)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------ what the loggers get

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.results.items() if k != "lipschitz_layers"}

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """Every measure of ``model`` (see the module docstring); the gradient norms on the
        first ``num_samples`` of ``loader``, the Lipschitz bound at its image shape."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        dev = _device_of(model, device)
        norms = []
        with shared.progress_bar(self.progress, "input gradients") as progress:
            for done, (x, y) in enumerate(batches, start=1):
                norms.append(input_gradient_norms(model, x.to(dev), y.to(dev)).double().cpu())
                progress(done, len(batches))
        grads = torch.cat(norms)  # (N,)
        upper, layers = self._bound(model, tuple(batches[0][0].shape[1:]))
        return {
            "lipschitz_upper": upper,
            "lipschitz_ma2023": _ma2023(model),
            "lipschitz_layers": layers,
            "input_grad_norm_median": float(torch.quantile(grads, 0.5)),
            "input_grad_norm_p95": float(torch.quantile(grads, 0.95)),
            "input_grad_norm_mean": float(grads.mean()),
            "weight_norm": weight_norm(model),
            "function_num_samples": len(grads),
            "function_time_s": time.perf_counter() - start,
        }

    def _bound(self, model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, list[list[Any]]]:
        """``(lipschitz_upper, lipschitz_layers)``; a model the bound cannot follow (a layer
        type without a rule, an operation between layers) gets NaN and ``[]`` and one
        warning naming why: the other measures stand, and the user's fit is not broken."""
        try:
            bound = lipschitz_upper_bound(model, input_shape, iters=self.power_iters,
                                          tol=self.tol, seed=self.seed)
        except ValueError as err:
            log.warning("%s: no Lipschitz upper bound (lipschitz_upper = nan): %s", _OWNER, err)
            return math.nan, []
        return float(bound["upper"]), [[name, float(norm)] for name, norm in bound["layers"]]


def _ma2023(model: nn.Module) -> float:
    """``lipschitz_ma2023``, or NaN and one warning where it has no rule for a layer: the
    other measures stand, and the user's fit is not broken."""
    try:
        return lipschitz_ma2023(model)
    except ValueError as err:
        log.warning("%s: lipschitz_ma2023 = nan: %s", _OWNER, err)
        return math.nan


class FunctionMeasures(_FunctionMeasuresLogic, *shared.callback_bases()):
    """Lipschitz bounds, input-gradient norms and the weight norm at the end of fit and/or
    test, for either Lightning namespace (Ma et al. 2023).

    Args:
        power_iters: power iterations per conv layer for the Lipschitz bound (default 100).
        tol: relative change of a layer's estimate that stops its iteration (default 1e-4).
        num_samples: the input-gradient norms over the first N test points (default 1000;
            None: all).
        dataloader: the data. Default: the datamodule's ``test_dataloader()`` at fit end,
            the running test's loader at test end; no data at fit end moves the evaluation
            to the next ``trainer.test`` (see the module docstring).
        batch_to_xy: ``batch -> (x, y)``; default handles tuples and common dict keys.
        on: any of ``"fit_end"`` (``on_train_end``), ``"test_end"`` (``on_test_epoch_end``).
        seed: the private generator of the bound's probe input and power-iteration starts.
        batch_size: re-batch the samples for the gradients (default 1000; None: the
            loader's batches). Only memory and speed depend on it.
        progress: show a rich progress bar (only when stderr is a terminal).

    Defaults are ``robusthp.settings.FunctionSettings``' (the CLI's too).

    After a run, ``self.results`` holds the keys of the module docstring, or
    ``{"function_skipped": reason}`` when it did not run ("diverged", "non-finite
    parameters", "no data").
    """


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` when given, else the model's (its first parameter's; CPU without any)."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
