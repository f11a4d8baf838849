"""What a sweep is made of: the datasets, models and SGD regimes, each in one table.

Every other place reads these tables: the optimizer factory (``robusthp.optim``), the
data and model code, the Hydra config groups (``robusthp.config_store`` makes one
``dataset=``/``model=``/``regime=`` choice per entry), the report's labels and colours and
the notebook. Adding a regime, model or dataset is one entry here (plus a ``line/*.yaml``
if it should be a line of the paper's sweeps). Pure Python: no torch, Lightning or Hydra,
so the report and the sweep launcher read it without loading them.

The paper's constants (Kamath et al., Sec. 2.1; Yao et al. 2018 for the Benchmark) are
written once, here, in the units the paper reasons in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

# ---------------------------------------------------------------------------- the paper

PAPER_LR = 0.01  # fixed LR, and the Benchmark's initial lr
PAPER_LR_BS_RATIO = 0.00015625  # = 0.005 / 32: lr 0.005 at batch 32, 0.64 at 4096
BENCHMARK_MOMENTUM = 0.9  # Yao et al.'s fixed momentum, also the largest one the paper sweeps
BENCHMARK_HALVE_EVERY_EPOCHS = 5  # Yao et al.: lr halved every 5 epochs
PAPER_MOMENTA = (0.0, 0.2, 0.5, BENCHMARK_MOMENTUM)  # swept under fixed LR and fixed LR/BS


class Table(dict):
    """name -> spec, filled in one place: a taken name is an error (never overwritten), an
    unknown one lists the valid names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, spec):
        if spec.name in self:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered")
        self[spec.name] = spec
        return spec

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]


# ---------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """What the models, the splits, the attacks and the report need to know of a dataset."""

    name: str
    label: str  # as the paper writes it (figure titles)
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]  # per channel, of [0, 1] pixels: the models' Normalize layer
    std: tuple[float, ...]
    val_size: int  # carved from the official training set; the rest trains
    augment: bool  # random crop (pad 4) + horizontal flip during training
    eps: float  # the paper's L-inf attack budget, in [0, 1] pixels (Yao et al.'s values)
    layout: str  # the files torchvision reads below ``root`` (for error messages)


DATASETS: Table = Table("dataset")  # name -> DatasetSpec
register_dataset = DATASETS.add
get_spec = DATASETS.lookup  # the spec of a dataset name


register_dataset(DatasetSpec(
    "mnist", "MNIST", 1, 28, 10, (0.1307,), (0.3081,), val_size=5000, augment=False, eps=0.3,
    layout="MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
))
register_dataset(DatasetSpec(
    "fashion_mnist", "Fashion-MNIST", 1, 28, 10, (0.2860,), (0.3530,), val_size=5000,
    augment=False, eps=0.3, layout="FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
))
register_dataset(DatasetSpec(
    "cifar10", "CIFAR-10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    val_size=10000, augment=True, eps=0.02,
    layout="cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
))


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A model of the registry: its builder (imported lazily, it needs torch) and labels."""

    name: str
    label: str
    dataset: str | None  # the dataset the paper trains it on (None: a user model, any)
    builder: str  # "module:callable"; the callable takes in_channels, num_classes, ...


MODELS: Table = Table("model")  # name -> ModelSpec
register_model_spec = MODELS.add


register_model_spec(ModelSpec("m1", "M1", "mnist", "robusthp.models.m1:M1"))
register_model_spec(ModelSpec("stdcnn", "StdCNN", "fashion_mnist", "robusthp.models.stdcnn:StdCNN"))
register_model_spec(ModelSpec("c1", "C1", "cifar10", "robusthp.models.c1:C1"))
register_model_spec(ModelSpec("resnet18", "ResNet18", "cifar10", "robusthp.models.resnet:resnet18"))


# ---------------------------------------------------------------------------- regimes


@dataclass(frozen=True)
class RegimeSpec:
    """One optimizer regime: how its keys and the batch size become SGD settings.

    ``keys`` are the regime's own config keys (``regime.<key>=...``) with their defaults;
    any other key given to this regime is refused. ``lr`` maps (keys, batch_size) to the
    initial learning rate: the one place a ratio becomes a rate.
    """

    name: str
    label: str  # the paper's legend
    colour: str  # the paper's colour for its lines
    keys: Mapping[str, float]
    lr: Callable[[Mapping[str, float], int], float]
    fixed_momentum: float | None = None  # a regime that fixes momentum refuses any other
    halve_every_epochs: int | None = None  # the schedule: lr x 0.5 every N epochs (None: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @property
    def sweeps_momentum(self) -> bool:
        """Whether momentum is an axis of this regime (the paper's Section 4 figures)."""
        return self.fixed_momentum is None


REGIMES: Table = Table("regime")  # name -> RegimeSpec
register_regime = REGIMES.add
get_regime = REGIMES.lookup


register_regime(RegimeSpec(
    "lr", "fixed LR", "#5fb0e0", keys={"lr": PAPER_LR}, lr=lambda k, bs: k["lr"],
))
register_regime(RegimeSpec(
    "lr_bs", "fixed LR/BS", "#7b3fa8", keys={"lr_bs_ratio": PAPER_LR_BS_RATIO},
    lr=lambda k, bs: k["lr_bs_ratio"] * bs,
))
register_regime(RegimeSpec(
    "benchmark", "Benchmark", "#d62728", keys={"lr": PAPER_LR}, lr=lambda k, bs: k["lr"],
    fixed_momentum=BENCHMARK_MOMENTUM, halve_every_epochs=BENCHMARK_HALVE_EVERY_EPOCHS,
))
