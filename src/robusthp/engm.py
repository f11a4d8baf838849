"""ENGM: example-normalized gradient descent with momentum (Dabouei et al., ECCV 2022,
arXiv 2209.01199), pure torch.

**A reconstruction.** Neither code nor full text of the paper is public; this follows its
abstract, and the choices below are this module's. Adversarial training has larger and
more varied per-example gradients than natural training, and momentum SGD converges at a
rate that depends on that variance. ENGM normalizes each example's contribution::

    g_i = ∇θ ℓ(x_i, y_i)                       (x_i: the adversarial examples, if any)
    ĝ   = (1/m) Σ_i g_i / max(‖g_i‖₂, γ)        γ >= 0
    v  <- μ v + ĝ,   θ <- θ - η v

so ‖ĝ‖ <= 1 whatever the loss scale (the learning rate must be re-tuned: the ``engm``
regime's default lr is not the paper's SGD one). Weight decay stays outside the
normalization: ``torch.optim.SGD``'s ``weight_decay`` adds λθ to ĝ after it.

How it is computed: with stop-gradient weights w_i = 1 / max(‖g_i‖, γ),
∇θ (1/m) Σ w_i ℓ_i = (1/m) Σ w_i g_i = ĝ, so one ordinary backward of
:func:`reweighted_loss` followed by ``torch.optim.SGD(momentum=μ, dampening=0)`` is the
ENGM step. :class:`ExampleWeights` gives the w_i:

- ``mode="exact"``: the per-example norms ‖g_i‖ from ``robusthp.per_example`` (vmap of
  grad, ``chunk_size`` examples at a time). Cost: about one extra forward and backward per
  example chunk on top of the training step, and ``chunk_size x P`` floats of memory.
- ``mode="cheap"``: the input-gradient norms s_i = ‖∇ₓ ℓ(x_i, y_i)‖ (which a PGD attack's
  last step has already computed; else one backward w.r.t. x, :func:`input_grad_norms`),
  mapped to ‖g_i‖ ≈ a·s_i + b by a least-squares fit on the exact norms of the batch at
  the first call and every ``refit_every`` calls (the paper's observed correlation; the
  linear form is this reconstruction's choice).

BatchNorm: vmap cannot update BatchNorm's running statistics and, in train mode, an
example's BatchNorm output depends on its batch, so both norms (exact and input) are
computed with the model in eval mode (each submodule's flag restored afterwards). The
training loss itself runs in the module's own mode (train-mode BatchNorm, running
statistics updated once, as for SGD); the weights are detached, so its gradient is
Σ w_i g_i with the train-mode g_i. Nothing here writes a parameter's ``.grad``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.per_example import DEFAULT_CHUNK, per_example_grad_norms
from robusthp.side_effects import eval_mode, fp32, gradients_on

__all__ = ["ENGM_MODES", "ExampleWeights", "engm_weights", "input_grad_norms", "reweighted_loss"]

ENGM_MODES = ("exact", "cheap")
NORM_FLOOR = 1e-12  # γ = 0: the smallest norm divided by, so no division by 0


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) \
            or gamma < 0:
        raise ValueError(f"ENGM gamma must be a finite number >= 0, got {gamma!r}")
    return float(gamma)


def engm_weights(norms: Tensor, gamma: float) -> Tensor:
    """ENGM's per-example weights w_i = 1 / max(‖g_i‖, γ), detached.

    ``norms``: (N,) per-example gradient norms >= 0, any float dtype; ``gamma`` >= 0 (0 is
    floored at ``NORM_FLOOR``). Returns (N,) weights, same dtype and device, each <= 1/γ.
    """
    floor = max(_check_gamma(gamma), NORM_FLOOR)
    return 1.0 / norms.detach().clamp_min(floor)


def input_grad_norms(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(N,) L2 norms of the input gradients ‖∇ₓ ℓ(x_i, y_i)‖₂ of the cross-entropy.

    ``x``: (N, ...) model inputs, ``y``: (N,) int64 labels. One backward of the summed loss
    w.r.t. ``x`` only, with the model in eval mode (so example i's input gradient is its
    own: no batch statistics), full precision; no parameter ``.grad`` is written.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    with eval_mode(model), gradients_on(), fp32():
        xs = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xs), y.detach().clone(), reduction="sum")
        (grad_x,) = torch.autograd.grad(loss, xs)
    return grad_x.flatten(1).norm(dim=1).detach()


def reweighted_loss(logits: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """(1/N) Σ_i w_i · CE(logits_i, y_i), a scalar; its gradient is the ENGM direction ĝ.

    ``logits``: (N, C) (not probabilities), ``y``: (N,) int64, ``weights``: (N,) from
    :class:`ExampleWeights` (detached here, so they never carry gradient).
    """
    if weights.shape != (len(logits),) or len(y) != len(logits):
        raise ValueError(f"need logits (N, C), y (N,) and weights (N,); got {tuple(logits.shape)}, "
                         f"{tuple(y.shape)}, {tuple(weights.shape)}")
    per_example = F.cross_entropy(logits, y, reduction="none")  # (N,)
    return (weights.detach().to(per_example.dtype) * per_example).mean()


def fit_line(s: Tensor, n: Tensor) -> tuple[float, float]:
    """Least squares (a, b) minimizing Σ (a·s_i + b - n_i)²; a = 0 if all s_i are equal."""
    s, n = s.detach().double(), n.detach().double()
    ds = s - s.mean()
    var = float((ds * ds).sum())
    slope = float((ds * (n - n.mean())).sum()) / var if var > 0 else 0.0
    return slope, float(n.mean()) - slope * float(s.mean())


class ExampleWeights:
    """ENGM's per-example weights w_i = 1 / max(‖g_i‖, γ) of a batch (a reconstruction:
    see the module docstring), in ``mode`` ``"exact"`` or ``"cheap"``.

    ``weights(model, x, y, input_norms=None)`` -> (N,) detached weights, dtype of the
    norms. ``x``: (N, ...), ``y``: (N,) int64; ``input_norms``: (N,) ‖∇ₓ ℓ_i‖ a caller
    already has (cheap mode; else computed). The model's train/eval flags, buffers and
    parameter ``.grad`` are left as they were.

    Cheap mode predicts ‖g_i‖ ≈ a·s_i + b; the fit (a, b) is made on the exact norms of the
    batch at call 0, ``refit_every``, 2·``refit_every``, ..., and its predictions are
    clamped below at the smallest exact norm of that fitting batch (> 0): extrapolation
    never gives a weight larger than the fitted range does. The fit and the call count
    are the state (:meth:`state_dict` / :meth:`load_state_dict`), so a resumed run
    continues identically.
    """

    def __init__(self, gamma: float, mode: str = "exact", refit_every: int = 100,
                 chunk_size: int = DEFAULT_CHUNK) -> None:
        self.gamma = _check_gamma(gamma)
        if mode not in ENGM_MODES:
            raise ValueError(f"ENGM mode must be one of {', '.join(ENGM_MODES)}, got {mode!r}")
        for key, value in (("refit_every", refit_every), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ENGM {key} must be an integer >= 1, got {value!r}")
        self.mode, self.refit_every, self.chunk_size = mode, refit_every, chunk_size
        self.calls = 0  # batches weighted so far
        self.slope: float | None = None  # the cheap mode's fit: ‖g‖ ≈ slope·s + intercept
        self.intercept: float | None = None
        self.floor: float | None = None  # smallest exact norm of the fitting batch

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor,
                 input_norms: Tensor | None = None) -> Tensor:
        if self.mode == "exact":
            norms = per_example_grad_norms(model, x, y, self.chunk_size)
        else:
            norms = self._predicted_norms(model, x, y, input_norms)
        self.calls += 1
        return engm_weights(norms, self.gamma)

    def _predicted_norms(self, model: nn.Module, x: Tensor, y: Tensor,
                         input_norms: Tensor | None) -> Tensor:
        if input_norms is None:
            input_norms = input_grad_norms(model, x, y)
        elif input_norms.shape != (len(x),):
            raise ValueError(f"input_norms must have shape ({len(x)},), got {tuple(input_norms.shape)}")
        if self.calls % self.refit_every == 0 or self.slope is None:
            self.refit(input_norms, per_example_grad_norms(model, x, y, self.chunk_size))
        floor = max(self.floor, NORM_FLOOR)
        return (self.slope * input_norms.detach() + self.intercept).clamp_min(floor)

    def refit(self, input_norms: Tensor, exact_norms: Tensor) -> None:
        """Fit ‖g_i‖ ≈ a·s_i + b by least squares on one batch's (N,) norms."""
        self.slope, self.intercept = fit_line(input_norms, exact_norms)
        self.floor = float(exact_norms.min()) if len(exact_norms) else NORM_FLOOR

    def state_dict(self) -> dict[str, Any]:
        """The call count and the cheap mode's fit (plain Python numbers)."""
        return {"calls": self.calls, "slope": self.slope, "intercept": self.intercept,
                "floor": self.floor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"calls", "slope", "intercept", "floor"} - set(state)
        if missing:
            raise ValueError(f"ENGM state lacks {', '.join(sorted(missing))}; got keys {sorted(state)}")
        self.calls = int(state["calls"])
        self.slope, self.intercept, self.floor = state["slope"], state["intercept"], state["floor"]

    def __repr__(self) -> str:
        return (f"ExampleWeights(gamma={self.gamma}, mode={self.mode!r}, "
                f"refit_every={self.refit_every}, chunk_size={self.chunk_size})")
