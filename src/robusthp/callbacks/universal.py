"""``UniversalPerturbation``: SVD-Universal fooling rates of any LightningModule, as a callback.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks.universal import UniversalPerturbation
    cb = UniversalPerturbation(attacks=("gradient", "fgsm", "deepfool"), n=64)
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results     # {"universal_sv_ratio@gradient": ..., "universal_flip@gradient@4": ..., ...}
    cb.directions  # {"gradient": (C, H, W) cpu tensor, ..., "invariant": ...}: to plot

Kamath, Deshpande, Subrahmanyam (arXiv 2005.08632, code ksandeshk/svd-uap): the top right
singular vector of the attack directions of a few test points (``n``, default 64) is one
input-agnostic perturbation that fools the model on the other test points. The more a
model's attack directions agree (``sv_ratio = sigma1^2 / ||A||_F^2``), the better it
universalizes; their follow-up (arXiv 2006.04449) finds it rising as rotation invariance
grows, and compares it with a "universal invariant direction" (here a reconstruction:
``robusthp.attacks.universal.invariant_direction``). The core is
``robusthp.attacks.universal`` (``svd_universal``, ``fooling_rates``); everything is in
``[0, 1]`` pixels and L2 norms (MNIST images have ``||x||_2 ~ 9.4``).

Data: the first ``num_samples`` test samples, in loader order (deterministic). The first
``n`` build the directions; the fooling rates are measured on the remaining ones only
(held out, so the direction is not scored on the points it was fitted to). Fewer than
``n + 1`` samples in the loader: a warning and ``results == {"universal_skipped": ...}``.
When, on which data and when not: exactly as ``AdversarialRobustness`` (its module
docstring; the shared rules are ``_lightning.StageHooks``'): at the end of fit and/or
test, test data only (``dataloader=``, else the datamodule's ``test_dataloader()`` at fit
end, the running test's loader at test end; none at fit end moves the evaluation to the
next ``trainer.test``), global rank zero only, not after an interrupted fit, and a
diverged model is skipped: ``results == {"universal_skipped": reason}``.

``self.results`` keys (the report relies on them), norms printed with ``:g``, for each
``<attack>`` of ``attacks`` and each ``<s>`` of ``norms``:

* ``universal_sv_ratio@<attack>``;
* ``universal_flip@<attack>@<s>`` (``#{f(x+u) != f(x)} / N``) and
  ``universal_error@<attack>@<s>`` (``#{f(x+u) != y} / N``), ``x + u`` clamped to ``[0, 1]``;
* ``universal_flip_unclamped@<attack>@<s>``, ``universal_error_unclamped@<attack>@<s>``:
  ``x + u`` not clamped (the authors' code);
* with ``invariant`` (and ``(N, C, H, W)`` images): ``universal_invariant_sv_ratio`` and
  ``universal_invariant_cos@<attack>`` (``|cos|`` between the invariant direction and the
  attack's);
* ``universal_n`` (int), ``universal_num_samples`` (the held-out count, int),
  ``universal_time_s``.

A model whose attack directions are all zero gets a zero direction and NaN ratio and cos
(with a warning). Loggers get the rates, ratios and cosines, prefixed ``uap/``.
``self.directions`` holds each attack's direction (and ``"invariant"``) as a ``(C, H, W)``
CPU tensor of unit L2 norm. The model's train/eval flags, parameters' ``.grad`` and the
global RNGs (torch's CPU, Python's, NumPy's) are left as found; nothing here is random.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks.universal import (
    ATTACK_DIRECTIONS,
    UniversalDirection,
    abs_cosine,
    fooling_rates,
    invariant_direction,
    svd_universal,
)
from robusthp.callbacks import _lightning as shared
from robusthp.callbacks.adversarial import _device_of
from robusthp.settings import (
    UniversalSettings,
    boolean,
    choices,
    eps_values,
    integer,
    positive_number,
)

log = logging.getLogger(__name__)

LOG_PREFIX = "uap/"
_OWNER = "UniversalPerturbation"
_LOGGED = ("universal_sv_ratio@", "universal_flip", "universal_error", "universal_invariant_")

# the defaults (``robusthp.settings`` has no section for them yet)
DEFAULT_ATTACKS = ATTACK_DIRECTIONS  # gradient, fgsm, deepfool: the paper's three
# robusthp.settings.UniversalSettings' defaults (the CLI's too)
DEFAULT_N = UniversalSettings.n  # points that build each direction (the paper: "very few")
DEFAULT_NORMS = UniversalSettings.norms  # L2, [0, 1] pixels; MNIST ||x|| ~ 9.4
DEFAULT_NUM_SAMPLES = UniversalSettings.num_samples  # test samples taken: n build, the rest held out
DEFAULT_DELTA_DEGREES = UniversalSettings.delta_degrees  # the rotation tangents' central difference
DEFAULT_BATCH_SIZE = UniversalSettings.batch_size


class _UniversalPerturbationLogic(shared.TestDataEvaluation):
    """Lightning-free logic; ``UniversalPerturbation`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "universal_skipped", log
    log_prefix, title = LOG_PREFIX, "universal perturbation"

    def __init__(
        self,
        attacks: str | Sequence[str] = DEFAULT_ATTACKS,
        n: int = DEFAULT_N,
        norms: float | Sequence[float] = DEFAULT_NORMS,
        num_samples: int | None = DEFAULT_NUM_SAMPLES,
        invariant: bool = UniversalSettings.invariant,
        delta_degrees: float = DEFAULT_DELTA_DEGREES,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        batch_size: int | None = DEFAULT_BATCH_SIZE,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.attacks = _attacks(attacks)
        self.n = shared.check_value(_OWNER, integer(1), n, "n")
        self.norms = _norms(norms)
        self.invariant = shared.check_value(_OWNER, boolean, invariant, "invariant")
        self.delta_degrees = shared.check_value(_OWNER, positive_number, delta_degrees, "delta_degrees")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        if self.num_samples is not None and self.num_samples <= self.n:
            raise ValueError(f"{_OWNER}: num_samples must exceed n (the first n build the directions, "
                             f"the rest are held out); got num_samples={self.num_samples}, n={self.n}")
        self.dataloader, self.progress = dataloader, bool(progress)
        self.results: dict[str, Any] = {}
        self.directions: dict[str, Tensor] = {}

    # ------------------------------------------------------------ what the loggers get

    def logged(self, key: str, value: Any) -> bool:
        return key.startswith(_LOGGED)

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """The module docstring's keys for ``model`` on the first ``num_samples`` of
        ``loader``; sets ``self.directions``."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, None)
        device = _device_of(model, device)
        x = torch.cat([b[0] for b in batches]).to(device)
        y = torch.cat([b[1] for b in batches]).to(device)
        if x.shape[0] <= self.n:
            reason = f"too few samples: {x.shape[0]} <= n={self.n}"
            log.warning("%s: not evaluated: %s (the first n build the directions, the rest are "
                        "held out)", _OWNER, reason)
            self.directions = {}
            return {self.skip_key: reason}
        build, held = (x[: self.n], y[: self.n]), (x[self.n:], y[self.n:])
        results: dict[str, Any] = {}
        directions: dict[str, UniversalDirection] = {}
        steps = len(self.attacks) + int(self.invariant)
        with shared.progress_bar(self.progress, "universal perturbation") as progress:
            for done, attack in enumerate(self.attacks, start=1):
                ud = svd_universal(model, *build, attack=attack, batch_size=self.batch_size)
                directions[attack] = ud
                results.update(self._rates(model, held, ud))
                progress(done, steps)
            if self.invariant:
                results.update(self._invariant(build[0], directions))
                progress(steps, steps)
        self.directions = {name: ud.direction.detach().cpu() for name, ud in directions.items()}
        results["universal_n"] = int(self.n)
        results["universal_num_samples"] = int(held[1].shape[0])
        results["universal_time_s"] = time.perf_counter() - start
        return results

    def _rates(
        self, model: nn.Module, held: tuple[Tensor, Tensor], ud: UniversalDirection
    ) -> dict[str, float]:
        """``sv_ratio`` and the four rates per norm of one attack's direction."""
        out = {f"universal_sv_ratio@{ud.attack}": ud.sv_ratio}
        for clamp, suffix in ((True, ""), (False, "_unclamped")):
            rates = fooling_rates(model, *held, ud.direction, self.norms, clamp=clamp,
                                  batch_size=self.batch_size)
            for kind in ("flip", "error"):
                out.update({f"universal_{kind}{suffix}@{ud.attack}@{s:g}": rates[kind][s]
                            for s in self.norms})
        return out

    def _invariant(self, x: Tensor, directions: dict[str, UniversalDirection]) -> dict[str, float]:
        """The invariant direction's ratio and its ``|cos|`` with each attack's direction."""
        if x.dim() != 4:
            log.warning("%s: invariant=True needs (N, C, H, W) images; got shape %s: no invariant "
                        "direction", _OWNER, tuple(x.shape))
            return {}
        inv = invariant_direction(x, self.delta_degrees)
        out = {"universal_invariant_sv_ratio": inv.sv_ratio}
        out.update({f"universal_invariant_cos@{name}": abs_cosine(inv.direction, ud.direction)
                    for name, ud in directions.items()})
        directions["invariant"] = inv
        return out


class UniversalPerturbation(_UniversalPerturbationLogic, *shared.callback_bases()):
    """SVD-Universal fooling rates at the end of fit and/or test, for either Lightning
    namespace (module docstring: the keys, data and skip rules).

    Args:
        attacks: the attack directions, one or several of "gradient" (input gradient of
            the cross-entropy), "fgsm" (its sign) and "deepfool" (DeepFool's L2
            perturbation). Default all three.
        n: the first ``n`` test samples build each direction (default 64).
        norms: L2 norms of the perturbation, ``[0, 1]`` pixels (default 0, 1, 2, 3, 4, 6, 8,
            10: MNIST images have ``||x||_2 ~ 9.4``).
        num_samples: test samples taken in all (default 1000; must exceed ``n``; None: the
            whole loader); the rates are on the ``num_samples - n`` held-out ones.
        invariant: also the universal invariant direction of the same ``n`` points (a
            reconstruction) and its ``|cos|`` with each attack's. Default True.
        delta_degrees: the rotation of its tangents' central difference (default 2).
        dataloader, batch_to_xy, on, progress: as ``AdversarialRobustness``'.
        batch_size: points per forward pass (default 1000; None: all at once).
    """


# ---------------------------------------------------------------- helpers


def _attacks(value: str | Sequence[str]) -> tuple[str, ...]:
    """``attacks=`` as a tuple of distinct ``ATTACK_DIRECTIONS`` names (the check of
    ``eval.universal.attacks``)."""
    return shared.check_value(_OWNER, choices(ATTACK_DIRECTIONS), value, "attacks")


def _norms(value: float | Sequence[float]) -> tuple[float, ...]:
    """``norms=``: numbers >= 0, distinct as printed with ``:g`` (the result keys)."""
    values = shared.check_value(_OWNER, eps_values, value, "norms")
    labels = [f"{v:g}" for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{_OWNER}: norms must be distinct (as printed with :g); got {labels}")
    return values
