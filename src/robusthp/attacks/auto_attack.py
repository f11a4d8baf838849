"""AutoAttack (Croce & Hein 2020) at the reference implementation's settings, run by
torchattacks' sub-attacks, with robusthp's side-effect contract.

Why not ``torchattacks.AutoAttack`` itself: in torchattacks 3.5.1 its APGD, APGD-T and FAB
run 10 iterations (their constructors' default), while the reference implementation
(fra31/auto-attack, ``autoattack/autoattack.py:33-47``, versions at ``:302-340``) runs 100
and Square without its rescaled schedule. So the ensemble is assembled here from
torchattacks' ``APGD``, ``APGDT``, ``FAB`` and ``Square`` with the reference's settings
(``VERSIONS``), and run as the reference runs it (``autoattack.py:166-230``): each attack
in turn on the points still classified correctly, each point keeping its first successful
perturbation. Ma et al. 2023 evaluate their models with AutoAttack (L-inf and L2).

A per-channel L-inf box (``eps`` a ``(C, 1, 1)`` tensor: the normalized reading on a
dataset whose channels' std differ) is attacked exactly by a change of variables: with
``s_c = eps_c / min(eps)``, the sub-attacks work on ``z = x / s`` in one box of radius
``min(eps)``, and the model sees ``clamp(z * s, 0, 1)`` (its gradient passed straight
through the clamp). Every ``z`` they may reach maps into the box around ``x`` and
``[0, 1]``, and every point of that set is reachable, so the threat model is unchanged.

The contract of ``robusthp.attacks`` and how it is kept:

- torchattacks' sub-attacks reseed the **global** RNG (``torch.random.manual_seed`` and
  ``torch.cuda.random.manual_seed``): torch's CPU state, every initialised CUDA device's,
  and (when CUDA is not initialised yet) torch's queue of lazy CUDA seeds are saved before
  and restored after, with Python's ``random`` and NumPy's states for good measure;
- FAB calls ``.backward()``, which writes the parameters' ``.grad``: they are restored;
- torchattacks sets ``model.train()`` after an attack on a model given in train mode,
  which resets every submodule's own flag: the model is given in eval mode and each flag
  restored;
- it needs autograd and full precision: it runs under ``gradients_on`` and ``fp32``.

``n_classes`` (the targets of APGD-T and FAB-T) is read from the model's output; the
DLR losses need at least 4 classes (standard, plus) or 3 (rand).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robusthp.attacks.linf import _check_xy
from robusthp.side_effects import eval_mode, fp32, gradients_on, preserved_grads

AUTOATTACK_NORMS = ("Linf", "L2")
# the reference's settings per version (fra31/auto-attack autoattack/autoattack.py:33-47,
# 302-340): sub-attacks in the order they run, each (torchattacks class, its keywords)
_ITER = 100
VERSIONS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "standard": (
        ("APGD", {"loss": "ce", "steps": _ITER, "n_restarts": 1, "rho": 0.75, "eot_iter": 1}),
        ("APGDT", {"steps": _ITER, "n_restarts": 1, "rho": 0.75, "eot_iter": 1}),
        ("FAB", {"steps": _ITER, "n_restarts": 1, "multi_targeted": True}),
        ("Square", {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "resc_schedule": False}),
    ),
    "plus": (
        ("APGD", {"loss": "ce", "steps": _ITER, "n_restarts": 5, "rho": 0.75, "eot_iter": 1}),
        ("APGD", {"loss": "dlr", "steps": _ITER, "n_restarts": 5, "rho": 0.75, "eot_iter": 1}),
        ("FAB", {"steps": _ITER, "n_restarts": 5, "multi_targeted": False}),
        ("Square", {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "resc_schedule": False}),
        ("APGDT", {"steps": _ITER, "n_restarts": 1, "rho": 0.75, "eot_iter": 1}),
        ("FAB", {"steps": _ITER, "n_restarts": 1, "multi_targeted": True}),
    ),
    "rand": (
        ("APGD", {"loss": "ce", "steps": _ITER, "n_restarts": 1, "rho": 0.75, "eot_iter": 20}),
        ("APGD", {"loss": "dlr", "steps": _ITER, "n_restarts": 1, "rho": 0.75, "eot_iter": 20}),
    ),
}
AUTOATTACK_VERSIONS = tuple(VERSIONS)
_TARGETED = ("APGDT", "FAB")  # take n_classes (their targets: the n_classes - 1 others)
# the DLR losses read the 3rd-largest logit (untargeted, "rand") or the 4th (targeted: APGD-T)
_MIN_CLASSES = {"standard": 4, "plus": 4, "rand": 3}


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    norm: str = "Linf",
    seed: int = 0,
    version: str = "standard",
) -> Tensor:
    r"""AutoAttack in the paper 'Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks' (Croce, Hein, ICML 2020)
    [https://arxiv.org/abs/2003.01690], at the reference implementation's settings.

    Distance measure: L-inf or L2 (``norm``). The standard version runs APGD-CE, APGD-T,
    FAB-T and Square (100 iterations each, 5,000 queries), each on the points the previous
    ones did not fool, and returns each point's first successful perturbation (else ``x``).

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits (at least 4 classes; 3 for
            the rand version).
        x (Tensor): ``(N, C, H, W)`` floats in ``[0, 1]``.  y (Tensor): ``(N,)`` labels.
        eps (float | Tensor): the radius (>= 0), pixel units; L-inf also takes a
            ``(C, 1, 1)`` tensor, a box per channel. Ma et al. 2023: L-inf 0.05, 0.07,
            0.1 (MNIST), 1, 2, 4 /255 (CIFAR-10); L2 0.5, 0.7, 1.0 (MNIST), 0.1, 0.2, 0.3
            (CIFAR-10).
        norm (str): ``"Linf"`` (default) or ``"L2"``.
        seed (int): the seed of every sub-attack (default 0, the reference's); the global
            RNG is left as it was.
        version (str): ``"standard"`` (default), ``"plus"`` or ``"rand"``.

    Shape:
        - output: ``x``'s shape, dtype and device, range ``[0, 1]``, within ``eps``.

    Example::
        >>> x_adv = autoattack(model, images, labels, eps=8 / 255)
        >>> x_adv = autoattack(model, images, labels, eps=0.5, norm="L2")
    """
    _check_args(eps, norm, seed, version)
    _check_xy(x, y)
    torchattacks = _import_torchattacks()
    with eval_mode(model), gradients_on(), fp32(), preserved_grads(model), global_rngs_restored():
        x = x.detach().clone()  # a normal tensor even if x is an inference tensor
        eps, scale = _uniform_box(eps, x)
        if eps == 0 or x.shape[0] == 0:
            return x
        y = y.detach().to(x.device).clone()
        n_classes = _num_classes(model, x, version)
        target = model if scale is None else _Rescaled(model, scale)
        attacks = [_sub_attack(torchattacks, name, target, norm, eps, seed, n_classes, kwargs)
                   for name, kwargs in VERSIONS[version]]
        z = x if scale is None else x / scale
        z_adv = _run_in_turn(attacks, target, z, y)
        if scale is None:
            return z_adv.to(dtype=x.dtype)
        box = eps * scale
        return torch.min(torch.max(z_adv * scale, x - box), x + box).clamp_(0.0, 1.0)


def _run_in_turn(attacks: list[Callable[[Tensor, Tensor], Tensor]], model: nn.Module,
                 x: Tensor, y: Tensor) -> Tensor:
    """The reference's loop: each attack on the points still robust; first success kept."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv = x.clone()
    for attack in attacks:
        index = robust.nonzero().flatten()
        if index.numel() == 0:
            break
        adv = attack(x[index], y[index]).detach().to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y[index]
        x_adv[index[fooled]] = adv[fooled]
        robust[index[fooled]] = False
    return x_adv


def _sub_attack(torchattacks: Any, name: str, model: nn.Module, norm: str, eps: float,
                seed: int, n_classes: int, kwargs: dict[str, Any]) -> Any:
    extra = {"n_classes": n_classes} if name in _TARGETED else {}
    return getattr(torchattacks, name)(model, norm=norm, eps=eps, seed=seed, **kwargs, **extra)


class _Rescaled(nn.Module):
    """``model(clamp(z * scale, 0, 1))``, the clamp's gradient passed straight through:
    the per-channel box as a uniform one in ``z = x / scale``."""

    def __init__(self, model: nn.Module, scale: Tensor) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, z: Tensor) -> Tensor:
        x = z * self.scale
        return self.model(x + (x.clamp(0.0, 1.0) - x).detach())


def _uniform_box(eps: float | Tensor, x: Tensor) -> tuple[float, Tensor | None]:
    """``(radius, None)`` for one box; ``(min eps, eps / min eps)`` for a per-channel one."""
    if not isinstance(eps, Tensor):
        return float(eps), None
    values = eps.detach().to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1)
    if values.shape[0] != x.shape[1]:
        raise ValueError(f"autoattack: a tensor eps is one radius per channel, shape "
                         f"({x.shape[1]}, 1, 1); got {tuple(eps.shape)}")
    low = float(values.min())
    if low == float(values.max()):
        return low, None
    return low, values / low


@contextlib.contextmanager
def global_rngs_restored() -> Iterator[None]:
    """Restore torch's CPU and CUDA RNG states (and the queue of lazy CUDA seeds when
    CUDA is not initialised), Python's ``random`` and NumPy's on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    # torch.cuda.manual_seed before CUDA's initialisation queues the seed for later, here
    # (a private attribute: saved only when present)
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = dict(vars(tracker)) if tracker is not None and cuda_states is None else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if queued is not None:
            vars(tracker).update(queued)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _import_torchattacks() -> Any:
    try:
        return importlib.import_module("torchattacks")
    except ImportError as err:
        raise ImportError(
            "robusthp.attacks.auto_attack needs torchattacks (its sub-attacks): pip install torchattacks"
        ) from err


def _num_classes(model: nn.Module, x: Tensor, version: str) -> int:
    with torch.no_grad():
        logits = model(x[:1])
    if logits.dim() != 2:
        raise ValueError(f"autoattack: the model must return (N, num_classes) logits; got shape "
                         f"{tuple(logits.shape)}")
    n_classes = int(logits.shape[1])
    if n_classes < _MIN_CLASSES[version]:
        raise ValueError(f"autoattack: version={version!r} needs at least {_MIN_CLASSES[version]} "
                         f"classes (its DLR loss); the model has {n_classes}")
    return n_classes


def _check_args(eps: float | Tensor, norm: str, seed: int, version: str) -> None:
    if norm not in AUTOATTACK_NORMS:
        raise ValueError(f"autoattack: norm must be one of {', '.join(AUTOATTACK_NORMS)}; got {norm!r}")
    if isinstance(eps, Tensor):
        if norm != "Linf":
            raise ValueError("autoattack: a per-channel eps (a tensor) is an L-inf box; "
                             f"norm={norm!r} takes one number")
        if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
            raise ValueError("autoattack: eps must be finite numbers >= 0 (pixel units)")
    elif isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"autoattack: eps must be a finite number >= 0 (pixel units); got {eps!r}")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"autoattack: version must be one of {', '.join(AUTOATTACK_VERSIONS)}; "
                         f"got {version!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"autoattack: seed must be an integer; got {seed!r}")
