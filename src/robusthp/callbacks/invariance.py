"""``InvarianceProfile``: accuracy of any LightningModule on rotated test images, as a callback.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks.invariance import InvarianceProfile
    cb = InvarianceProfile()                  # theta and fixed angles 0, 15, ..., 180
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results  # {"rot_acc@0": ..., "rot_acc@15": ..., "rot_fixed_acc@90": ..., ...}

Kamath, Deshpande, Subrahmanyam, 'Invariance vs robustness of neural networks' (arXiv
2002.11318): the *invariance profile* of a model is its accuracy on test images each
rotated by a uniform random angle in [-theta, theta], for theta = 0 ... 180 degrees. The
rotation is theirs (PIL's: nearest neighbour, the same canvas, black fill), done on the
batch on the model's device by ``robusthp.rotation.rotate``; training with
``data.rotation`` draws from the same distribution. Besides the profile, the accuracy at
each fixed angle of ``angles`` (every image rotated by that angle: one forward per angle
and batch) shows where in the circle a model fails. Every test point counts (clean
misclassified ones too), as in ``robusthp.attacks.robust_accuracy``, whose loop this is.

When, on which data and when not: exactly as ``PerturbationRobustness`` (the shared rules
are ``_lightning.StageHooks``'): at the end of fit and/or test, test data only
(``dataloader=``, else the datamodule's ``test_dataloader()`` at fit end, the running
test's loader at test end; none at fit end moves the evaluation to the next
``trainer.test``), global rank zero only, not after an interrupted fit, and a diverged
model is skipped: ``results == {"invariance_skipped": reason}``.

Draws: each theta draws its angles from its own private ``torch.Generator`` seeded
``seed`` on the model's device, so adding or removing a theta never changes another's
draws; all thetas share their uniform draws (angle = (2u - 1) theta: common random
numbers, so the profile is smooth in theta). The draws depend on ``batch_size`` (the
batches they are drawn in). ``theta = 0`` and a fixed angle that is a multiple of 360
are the unrotated images themselves.

``self.results`` keys (the report and results.json rely on them), angles printed with
``:g``:

* ``rot_acc@<theta>`` per theta of ``thetas`` (``rot_acc@0`` is the clean accuracy);
* ``rot_fixed_acc@<angle>`` per angle of ``angles``;
* ``invariance_num_samples``, ``invariance_time_s``.

Loggers get the accuracies, prefixed ``inv/``. Forward passes only (no gradients, so
inference mode is kept at test end), in eval mode and full precision; the model's
train/eval flags, parameters' ``.grad`` and the global RNGs (torch's CPU, Python's,
NumPy's) are left as found.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks import robust_accuracy
from robusthp.callbacks import _lightning as shared
from robusthp.callbacks.adversarial import _device_of
from robusthp.rotation import random_rotation, rotate
from robusthp.settings import InvarianceSettings, integer
from robusthp.side_effects import eval_mode, fp32

log = logging.getLogger(__name__)

LOG_PREFIX = "inv/"
_OWNER = "InvarianceProfile"

# the study's grid: theta = 0, 15, ..., 180 degrees (and the same fixed angles); the
# defaults are ``robusthp.settings.InvarianceSettings``' (the CLI's too)
DEFAULT_NUM_SAMPLES: int | None = InvarianceSettings.num_samples
DEFAULT_THETAS: tuple[float, ...] = InvarianceSettings.thetas
DEFAULT_ANGLES: tuple[float, ...] = InvarianceSettings.angles
DEFAULT_BATCH_SIZE: int | None = InvarianceSettings.batch_size


class _InvarianceProfileLogic(shared.TestDataEvaluation):
    """Lightning-free logic; ``InvarianceProfile`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "invariance_skipped", log
    log_prefix, title = LOG_PREFIX, "invariance profile"
    needs_grad = False  # rotations only: no attack

    def __init__(
        self,
        thetas: float | Sequence[float] | None = DEFAULT_THETAS,
        angles: float | Sequence[float] | None = DEFAULT_ANGLES,
        num_samples: int | None = DEFAULT_NUM_SAMPLES,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        seed: int = 0,
        batch_size: int | None = DEFAULT_BATCH_SIZE,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.thetas = _angle_list(thetas, "thetas", DEFAULT_THETAS, maximum=180.0)
        self.angles = _angle_list(angles, "angles", DEFAULT_ANGLES, maximum=None)
        if not self.thetas and not self.angles:
            raise ValueError(f"{_OWNER}: thetas and angles are both empty; give at least one "
                             "theta (random rotations) or one fixed angle")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.seed = shared.check_value(_OWNER, integer(), seed, "seed")
        self.dataloader, self.progress = dataloader, bool(progress)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------ what the loggers get

    def logged(self, key: str, value: Any) -> bool:
        return "_acc@" in key

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """Accuracy of ``model`` on the first ``num_samples`` of ``loader`` rotated as the
        module docstring says (its keys). The batches go to ``device`` (default: the
        model's)."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        dev = _device_of(model, device)
        fns = self.rotation_fns(dev)
        with (shared.progress_bar(self.progress, "invariance eval") as progress,
              eval_mode(model), torch.no_grad(), fp32()):
            accs = robust_accuracy(model, batches, fns, device=dev, progress=progress)
        results: dict[str, Any] = {k: v for k, v in accs.items() if k.startswith("rot_")}
        results["invariance_num_samples"] = accs["num_samples"]
        results["invariance_time_s"] = time.perf_counter() - start
        return results

    def rotation_fns(self, device: torch.device) -> dict[str, Callable[..., Tensor]]:
        """``{"rot@<theta>" | "rot_fixed@<angle>": fn(model, x, y) -> x rotated}``; each
        theta with its own generator seeded ``seed`` on ``device``."""
        fns: dict[str, Callable[..., Tensor]] = {}
        for theta in self.thetas:
            fns[f"rot@{theta:g}"] = _RandomRotation(theta, self._generator(device))
        for angle in self.angles:
            fns[f"rot_fixed@{angle:g}"] = _FixedRotation(angle)
        return fns

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)


class InvarianceProfile(_InvarianceProfileLogic, *shared.callback_bases()):
    """The rotation invariance profile (Kamath et al., arXiv 2002.11318) at the end of fit
    and/or test, for either Lightning namespace (module docstring: the keys, data and
    skip rules).

    Args:
        thetas: the profile's largest angles, degrees in [0, 180]: each test image rotated
            by a uniform random angle in [-theta, theta] (default 0, 15, ..., 180; None:
            that default; ``[]``: no profile).
        angles: fixed rotation angles, any finite degrees, positive counter-clockwise
            (default 0, 15, ..., 180; None: that default; ``[]``: none). Not both empty.
        num_samples: evaluate on the first N test points (default 1000, InvarianceSettings; None: all given).
        dataloader, batch_to_xy, on, progress: as ``AdversarialRobustness``'.
        seed: the seed of every theta's generator (default 0).
        batch_size: re-batch the samples (default 1000; None: the loader's batches).
    """


# ---------------------------------------------------------------- helpers


class _RandomRotation:
    """(model, x, y) -> each image of x rotated by its own uniform angle in [-theta, theta]."""

    def __init__(self, theta: float, generator: torch.Generator) -> None:
        self.theta, self.generator = theta, generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return random_rotation(x, self.theta, self.generator)


class _FixedRotation:
    """(model, x, y) -> every image of x rotated by ``angle`` (a multiple of 360: x)."""

    def __init__(self, angle: float) -> None:
        self.angle = angle

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x if self.angle % 360 == 0 else rotate(x, self.angle)


def _angle_list(
    value: float | Sequence[float] | None, key: str, default: tuple[float, ...], maximum: float | None
) -> tuple[float, ...]:
    """The angles of ``key`` checked: numbers (in [0, ``maximum``], or any finite one when
    ``maximum`` is None), distinct as printed with ``:g``; None: ``default``."""
    if value is None:
        return default
    allowed = (f"angles in degrees from 0 to {maximum:g}" if maximum is not None
               else "finite angles in degrees")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [value]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{_OWNER}: {key} must be a number or a list of {allowed}; got {value!r}")
    else:
        values = list(value)
    for v in values:
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad or (maximum is not None and not 0 <= v <= maximum):
            raise ValueError(f"{_OWNER}: {key} must be {allowed}; got {v!r} in {key}={value!r}")
    out = tuple(float(v) + 0.0 for v in values)  # + 0.0: -0.0 prints as 0
    labels = [f"{v:g}" for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{_OWNER}: {key} must be distinct (as printed with :g); got {labels}")
    return out
