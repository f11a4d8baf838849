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
register_model_spec(ModelSpec("preact_resnet18", "PreActResNet18", "cifar10",
                              "robusthp.models.preact_resnet:preact_resnet18"))
register_model_spec(ModelSpec("p4cnn", "P4CNN", "mnist", "robusthp.models.p4cnn:P4CNN"))
register_model_spec(ModelSpec("z2cnn", "Z2CNN", "mnist", "robusthp.models.p4cnn:Z2CNN"))


# ---------------------------------------------------------------------------- regimes


# the optimizers a regime can use (robusthp.optim); "engm" is torch SGD whose gradient is
# ENGM's per-example normalized one (the weighting is in the loss: robusthp.engm)
OPTIMIZERS = ("sgd", "adam", "rmsprop", "engm")
ADAPTIVE_OPTIMIZERS = ("adam", "rmsprop")  # per-coordinate step sizes, no SGD momentum


@dataclass(frozen=True)
class RegimeSpec:
    """One optimizer regime: how its keys and the batch size become optimizer settings.

    ``keys`` are the regime's own config keys (``regime.<key>=...``) with their defaults;
    any other key given to this regime is refused. ``lr`` maps (keys, batch_size) to the
    initial learning rate: the one place a ratio becomes a rate. A default of ``None`` for
    ``lr`` means the dataset's, from ``lr_by_dataset`` (a study that tuned lr per dataset).
    """

    name: str
    label: str  # the paper's legend
    colour: str  # the paper's colour for its lines
    keys: Mapping[str, float | str | None]  # str: a choice (ENGM's regime.mode)
    lr: Callable[[Mapping[str, float], int], float]
    fixed_momentum: float | None = None  # a regime that fixes momentum refuses any other
    halve_every_epochs: int | None = None  # the schedule: lr x 0.5 every N epochs (None: none)
    optimizer: str = "sgd"  # the torch optimizer: one of OPTIMIZERS
    lr_by_dataset: Mapping[str, float] | None = None  # lr's default per dataset (keys["lr"] None)
    lr_drops: tuple[float, ...] = ()  # fractions of training after which lr x lr_drop_factor
    lr_drop_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"regime {self.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        if self.lr_by_dataset is not None:
            object.__setattr__(self, "lr_by_dataset", MappingProxyType(dict(self.lr_by_dataset)))

    @property
    def adaptive(self) -> bool:
        """Adam and RMSProp: per-coordinate step sizes, and no SGD momentum to sweep."""
        return self.optimizer in ADAPTIVE_OPTIMIZERS

    @property
    def sweeps_momentum(self) -> bool:
        """Whether momentum is an axis of this regime (the paper's Section 4 figures)."""
        return self.fixed_momentum is None and not self.adaptive


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

# Ma, Pan, Farahmand 2023 (arXiv 2308.06703; code averyma/opt-robust, ``get_optim`` and
# options/default.yaml): lr per dataset (from the authors' checkpoint names), no weight
# decay, Adam betas (0.9, 0.999), RMSProp alpha 0.99 without momentum, torch's eps 1e-8.
# Their SGD has momentum 0 and drops lr x0.1 after 50% and 75% of training; the adaptive
# ones keep a constant lr. The lr drops after floor(fraction x epochs) epochs.
MA2023_LR = {  # regime -> dataset -> lr
    "sgd_ma2023": {"mnist": 0.1, "fashion_mnist": 0.01, "cifar10": 0.2},
    "adam": {"mnist": 5e-4, "fashion_mnist": 5e-4, "cifar10": 2e-4},
    "rmsprop": {"mnist": 5e-4, "fashion_mnist": 5e-5, "cifar10": 5e-4},
}
MA2023_LR_DROPS = (0.5, 0.75)
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
ADAPTIVE_EPS = 1e-8  # torch's default for Adam and RMSprop, which the authors keep

register_regime(RegimeSpec(
    "sgd_ma2023", "SGD (Ma et al.)", "#2ca02c", keys={"lr": None, "weight_decay": 0.0},
    lr=lambda k, bs: k["lr"], lr_by_dataset=MA2023_LR["sgd_ma2023"], lr_drops=MA2023_LR_DROPS,
))
register_regime(RegimeSpec(
    "adam", "Adam", "#ff7f0e", optimizer="adam", lr=lambda k, bs: k["lr"],
    keys={"lr": None, "beta1": ADAM_BETAS[0], "beta2": ADAM_BETAS[1], "eps": ADAPTIVE_EPS,
          "weight_decay": 0.0},
    lr_by_dataset=MA2023_LR["adam"],
))
register_regime(RegimeSpec(
    "rmsprop", "RMSProp", "#8c564b", optimizer="rmsprop", lr=lambda k, bs: k["lr"],
    keys={"lr": None, "alpha": RMSPROP_ALPHA, "eps": ADAPTIVE_EPS, "weight_decay": 0.0},
    lr_by_dataset=MA2023_LR["rmsprop"],
))

# ENGM (Dabouei et al., ECCV 2022, arXiv 2209.01199; a reconstruction, no code is public:
# robusthp.engm): SGD with heavy-ball momentum on (1/m) sum_i g_i / max(||g_i||, gamma).
# ||g_hat|| <= 1, so lr is not SGD's, and the paper's full text (its lr) is not public.
# lr 0.05 is ours: on M1 / MNIST under PGD-AT (eps 0.1 px, batch 128) the ENGM direction's
# norm was ~0.11 of the mean per-example gradient norm, so lr 0.05 steps about as far as
# SGD at lr 0.01; after one epoch there (momentum 0.9) test accuracy was 0.77 / 0.84 / 0.87
# at lr 0.02 / 0.05 / 0.1. gamma 0.01 is ours too. mode: exact (per-example gradient norms)
# or cheap (input-gradient norms through a linear fit, refit every refit_every steps).
# Momentum sweeps as for SGD.
ENGM_DEFAULTS = {"lr": 0.05, "gamma": 0.01, "mode": "exact", "refit_every": 100,
                 "weight_decay": 0.0}

register_regime(RegimeSpec(
    "engm", "ENGM", "#e377c2", optimizer="engm", keys=ENGM_DEFAULTS, lr=lambda k, bs: k["lr"],
))


# ---------------------------------------------------------------------------- Ma et al. 2023
# "Understanding the robustness difference between SGD and adaptive gradient methods"
# (Ma, Pan, Farahmand, arXiv 2308.06703; code averyma/opt-robust, averyma/freq-robust): its
# perturbation budgets per dataset, as the authors' evaluation code sets them.


@dataclass(frozen=True)
class PerturbationBudgets:
    """One dataset's perturbations in Ma et al. 2023, all in [0, 1] pixels."""

    noise_var: tuple[float, ...]  # Gaussian noise N(0, var) per pixel, then clamped
    l2_eps: tuple[float, ...]  # L2 attacks (PGD-L2, AutoAttack L2)
    linf_eps: tuple[float, ...]  # L-inf attacks (AutoAttack Linf)
    band_var: float  # variance of the band-limited Gaussian noise (unclamped)


# 10 equal-count radial DCT bands: 9 band radii for 32x32 and for 28x28 alike
# (freq-robust/eval_AA_cluster.py:62, :97; opt-robust/src/evaluation.py:97)
MA2023_BANDS = 10
# AutoAttack runs on the first 1,000 test points (opt-robust/src/evaluation.py:133); the
# Gaussian and band noise on the whole test set (evaluation.py:49, :88)
MA2023_NUM_SAMPLES = 1000
# noise_var, l2_eps, linf_eps: freq-robust/main.py:94-105 (opt-robust/main.py:55-57 has
# CIFAR-10's); band_var: freq-robust/eval_AA_cluster.py:61 (MNIST), :77 (Fashion-MNIST),
# :96 (CIFAR-10), beside each dataset's band radii
_MNIST_BUDGETS = PerturbationBudgets((0.01, 0.05, 0.1), (0.5, 0.7, 1.0), (0.05, 0.07, 0.1), 0.1)
MA2023_BUDGETS: Mapping[str, PerturbationBudgets] = MappingProxyType({
    "mnist": _MNIST_BUDGETS,
    "fashion_mnist": PerturbationBudgets((0.001, 0.005, 0.01), (0.1, 0.5, 0.7), (0.01, 0.03, 0.05), 0.1),
    "cifar10": PerturbationBudgets((0.001, 0.005, 0.007), (0.1, 0.2, 0.3), (1 / 255, 2 / 255, 4 / 255),
                                   0.01),
})


def perturbation_budgets(dataset: str) -> PerturbationBudgets:
    """The study's budgets for ``dataset`` (a dataset it did not use: MNIST's)."""
    return MA2023_BUDGETS.get(dataset, _MNIST_BUDGETS)
