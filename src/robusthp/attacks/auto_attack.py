"""AutoAttack (Croce & Hein 2020) through torchattacks, with robusthp's side-effect contract.

Ma et al. 2023 evaluate their models with AutoAttack (L-inf and L2) on the first 1,000
test points; torchattacks 3.5.1 ships it (``pip install torchattacks``, imported only
when ``autoattack`` is called). Wrapped here because torchattacks, left alone, breaks
the contract of ``robusthp.attacks``:

- its APGD, APGD-T, FAB and Square reseed the **global** RNG (``torch.random.manual_seed``
  and ``torch.cuda.random.manual_seed``): torch's CPU state, every initialised CUDA
  device's, and (when CUDA is not initialised yet) torch's queue of lazy CUDA seeds are
  saved before and restored after, with Python's ``random`` and NumPy's states for good
  measure;
- its FAB calls ``.backward()``, which writes the parameters' ``.grad``: they are restored;
- it sets ``model.train()`` after an attack on a model given in train mode, which resets
  every submodule's own flag: the model is given in eval mode and each flag restored;
- it needs autograd and full precision: it runs under ``gradients_on`` and ``fp32``.

``n_classes`` (the targets of APGD-T and FAB-T) is read from the model's output; the
DLR losses need at least 4 classes (standard, plus) or 3 (rand).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robusthp.attacks.linf import _check_xy
from robusthp.side_effects import eval_mode, fp32, gradients_on, preserved_grads

AUTOATTACK_NORMS = ("Linf", "L2")
AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
# the DLR losses read the 3rd-largest logit (untargeted, "rand") or the 4th (targeted: APGD-T)
_MIN_CLASSES = {"standard": 4, "plus": 4, "rand": 3}


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "Linf",
    seed: int = 0,
    version: str = "standard",
) -> Tensor:
    r"""AutoAttack in the paper 'Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks' (Croce, Hein, ICML 2020)
    [https://arxiv.org/abs/2003.01690], run by ``torchattacks.AutoAttack``.

    Distance measure: L-inf or L2 (``norm``). The standard version runs APGD-CE, APGD-T,
    FAB-T and Square in turn, each on the points the previous ones did not fool, and
    returns each point's first successful perturbation (else the last attack's output).

    Arguments:
        model (nn.Module): maps ``[0, 1]`` pixels to logits (at least 4 classes; 3 for
            the rand version).
        x (Tensor): ``(N, C, H, W)`` floats in ``[0, 1]``.  y (Tensor): ``(N,)`` labels.
        eps (float): the radius (>= 0), pixel units. Ma et al. 2023: L-inf 0.05, 0.07, 0.1
            (MNIST), 1, 2, 4 /255 (CIFAR-10); L2 0.5, 0.7, 1.0 (MNIST), 0.1, 0.2, 0.3 (CIFAR-10).
        norm (str): ``"Linf"`` (default) or ``"L2"``.
        seed (int): torchattacks' seed of every sub-attack (default 0); the global RNG
            is left as it was.
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
        if eps == 0 or x.shape[0] == 0:
            return x
        y = y.detach().to(x.device).clone()
        n_classes = _num_classes(model, x, version)
        attack = torchattacks.AutoAttack(model, norm=norm, eps=float(eps), version=version,
                                         n_classes=n_classes, seed=seed)
        return attack(x, y).detach().to(device=x.device, dtype=x.dtype)


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
            "robusthp.attacks.auto_attack needs torchattacks (its AutoAttack): pip install torchattacks"
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


def _check_args(eps: float, norm: str, seed: int, version: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"autoattack: eps must be a finite number >= 0 (pixel units); got {eps!r}")
    if norm not in AUTOATTACK_NORMS:
        raise ValueError(f"autoattack: norm must be one of {', '.join(AUTOATTACK_NORMS)}; got {norm!r}")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"autoattack: version must be one of {', '.join(AUTOATTACK_VERSIONS)}; "
                         f"got {version!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"autoattack: seed must be an integer; got {seed!r}")
