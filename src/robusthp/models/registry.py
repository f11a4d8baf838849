"""Model registry: a plain dict, name -> builder, filled at the bottom of this file.

A builder is any callable taking the keyword arguments ``in_channels``,
``num_classes``, ``image_size``, ``mean``, ``std`` plus its own options and
returning an ``nn.Module`` that maps [0, 1] pixels (N, C, S, S) to logits
(N, num_classes), with ``Normalize`` as its first layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from robusthp.models.c1 import C1
from robusthp.models.m1 import M1
from robusthp.models.resnet import resnet18
from robusthp.models.stdcnn import StdCNN

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {}

# Arguments every builder takes; the rest of a builder's signature are its options.
COMMON_ARGS = ("in_channels", "num_classes", "image_size", "mean", "std")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``MODELS[name] = builder``. A name already taken is an error, never overwritten."""

    def add(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered (to {MODELS[name]!r})")
        MODELS[name] = builder
        return builder

    return add


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **model_kwargs: object,
) -> nn.Module:
    """Build model ``name`` for (N, in_channels, image_size, image_size) pixels in [0, 1].

    ``mean``/``std`` hold one value per channel; the model normalizes internally.
    ``model_kwargs`` are the model's own options (e.g. ``pool`` for m1).
    Returns an ``nn.Module`` mapping pixels to logits (N, num_classes).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    builder = MODELS[name]
    _check_sizes(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    mean, std = _as_tuple("mean", mean), _as_tuple("std", std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"mean and std need in_channels={in_channels} values each; got mean={mean}, std={std}"
        )
    _check_options(name, builder, model_kwargs)
    return builder(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        mean=mean,
        std=std,
        **model_kwargs,
    )


def _as_tuple(key: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | Iterable):
        raise TypeError(f"{key} must be a sequence of floats, one per channel; got {values!r}")
    return tuple(float(v) for v in values)


def _check_sizes(name: str, **sizes: int) -> None:
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model {name!r}: {key} must be an int >= 1; got {value!r}")


def _check_options(name: str, builder: Builder, model_kwargs: dict[str, object]) -> None:
    """Raise TypeError naming any option the builder does not take."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    options = [p for p in params if p not in COMMON_ARGS]
    unknown = sorted(set(model_kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise TypeError(
            f"model {name!r} got unknown option(s): {', '.join(unknown)}; it accepts: {accepted}"
        )


# The one place the registry is filled.
register_model("m1")(M1)
register_model("stdcnn")(StdCNN)
register_model("c1")(C1)
register_model("resnet18")(resnet18)
