"""The catalog's names as the report writes and colours them, and which regimes sweep momentum.

The one place the report reads :mod:`robusthp.catalog`. Lookups go to the catalog's tables
each time (nothing is copied at import), so a dataset, model or regime registered there is
labelled, coloured and ordered everywhere in the report. A name the catalog does not know
(an older or a patched sweep) is written as itself and coloured from :data:`OTHER_COLOURS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from robusthp.catalog import DATASETS, MODELS, REGIMES

DATASET_ALIASES = {"fmnist": "fashion_mnist"}  # an older name for Fashion-MNIST
OTHER_COLOURS = ("#2ca02c", "#ff7f0e", "#8c564b", "#7f7f7f")  # regimes not in the catalog


class CatalogField(Mapping[str, str]):
    """``name -> spec.<field>`` of a catalog table: a live read-only view, not a copy."""

    def __init__(self, table: Mapping[str, object], field: str,
                 aliases: Mapping[str, str] | None = None) -> None:
        self._table, self._field, self._aliases = table, field, dict(aliases or {})

    def __getitem__(self, name: str) -> str:
        return getattr(self._table[self._aliases.get(name, name)], self._field)

    def __iter__(self) -> Iterator[str]:
        yield from self._table
        yield from (alias for alias, name in self._aliases.items() if name in self._table)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


REGIME_COLOURS = CatalogField(REGIMES, "colour")
"""The paper's colours (fixed LR light blue, LR/BS purple, Benchmark red), from the catalog."""
REGIME_LABELS = CatalogField(REGIMES, "label")
REGIME_ORDER = REGIME_LABELS.keys()  # the catalog's order: legends and line order follow it
DATASET_LABELS = CatalogField(DATASETS, "label", DATASET_ALIASES)
MODEL_LABELS = CatalogField(MODELS, "label")


def regime_label(regime: str) -> str:
    return REGIME_LABELS.get(regime, regime)


def cell_title(dataset: str, model: str) -> str:
    return f"{DATASET_LABELS.get(dataset, dataset)} / {MODEL_LABELS.get(model, model)}"


def regime_order(regimes: Iterable[str]) -> list[str]:
    """The distinct ``regimes``: the catalog's in its order, then unknown ones by name."""
    rank = {r: i for i, r in enumerate(REGIME_ORDER)}
    return sorted(set(regimes), key=lambda r: (rank.get(r, len(rank)), r))


def base_colour(regime: str, regimes: Sequence[str]) -> str:
    """The catalog's colour of ``regime``; an unknown one takes the next of :data:`OTHER_COLOURS`."""
    if regime in REGIME_COLOURS:
        return REGIME_COLOURS[regime]
    others = [r for r in regimes if r not in REGIME_COLOURS]
    return OTHER_COLOURS[others.index(regime) % len(OTHER_COLOURS)]


def sweeps_momentum(regime: str) -> bool:
    """Momentum is an axis of this catalog regime: it gets a Section 4 momentum figure."""
    spec = REGIMES.get(regime)
    return spec is not None and spec.sweeps_momentum


def fixes_momentum(regime: str) -> bool:
    """This catalog regime fixes its momentum (the Benchmark): a momentum filter keeps it."""
    spec = REGIMES.get(regime)
    return spec is not None and not spec.sweeps_momentum


DEFAULT_NUM_CLASSES = 10  # a dataset the catalog does not know (all the paper's have 10)


def num_classes(dataset: str) -> int:
    """The catalog's class count of ``dataset`` (chance accuracy is 1 / it); 10 if unknown."""
    spec = DATASETS.get(DATASET_ALIASES.get(dataset, dataset))
    return DEFAULT_NUM_CLASSES if spec is None else spec.num_classes
