"""Model registry: a dict, name -> builder, filled from ``robusthp.catalog.MODELS``.

The catalog names each model's builder as ``"module:callable"``; this module imports
those at import time (the catalog stays torch-free). :func:`register_model` adds a
user's own model to both: the builder here and a catalog entry (so the config groups
and the report know its name).

A builder is any callable taking the keyword arguments ``in_channels``,
``num_classes``, ``image_size``, ``mean``, ``std`` plus its own options and
returning an ``nn.Module`` that maps [0, 1] pixels (N, C, S, S) to logits
(N, num_classes), with ``Normalize`` as its first layer.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from robusthp import catalog

Builder = Callable[..., nn.Module]


class _Registry(dict):
    """name -> builder. Deleting a name that :func:`register_model` added to the catalog
    removes that catalog entry too, so the two tables keep the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.added_to_catalog: set[str] = set()  # the catalog entries register_model made

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        if name in self.added_to_catalog:
            self.added_to_catalog.discard(name)
            catalog.MODELS.pop(name, None)

    def pop(self, name: str, *default: object) -> object:
        if name not in self:
            return super().pop(name, *default)
        builder = self[name]
        del self[name]
        return builder


MODELS: _Registry = _Registry()  # a dict[str, Builder]

# Arguments every builder takes; the rest of a builder's signature are its options.
COMMON_ARGS = ("in_channels", "num_classes", "image_size", "mean", "std")


def register_model(
    name: str, *, label: str | None = None, dataset: str | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: ``MODELS[name] = builder``. A name already taken is an error, never overwritten.

    A name the catalog does not know gets a ``catalog.ModelSpec`` too (``label`` defaults to
    the name; ``dataset``, the dataset it is meant for, to none).
    """

    def add(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered (to {MODELS[name]!r})")
        if name not in catalog.MODELS:
            catalog.register_model_spec(catalog.ModelSpec(
                name, label if label is not None else name, dataset,
                f"{builder.__module__}:{builder.__qualname__}",
            ))
            MODELS.added_to_catalog.add(name)
        MODELS[name] = builder
        return builder

    return add


def import_builder(spec: catalog.ModelSpec) -> Builder:
    """The callable a catalog entry names as ``"module:callable"``."""
    module, _, attr = spec.builder.partition(":")
    if not module or not attr:
        raise ValueError(f"model {spec.name!r}: builder must be 'module:callable', got {spec.builder!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"model {spec.name!r}: cannot import its builder {spec.builder!r}: {err}") from err


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


# Filled from the one model table, robusthp.catalog.MODELS.
for _spec in list(catalog.MODELS.values()):
    register_model(_spec.name)(import_builder(_spec))
del _spec
