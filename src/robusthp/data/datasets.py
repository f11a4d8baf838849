"""Decode MNIST, Fashion-MNIST and CIFAR-10 once into uint8 tensors, split as the paper.

Built on torchvision's dataset classes (they download where online and read a
local ``root`` offline); the pixels are then kept as one ``(N, C, H, W)`` uint8
tensor so training never touches PIL (torchvision's per-sample PIL path costs
~35% of a StdCNN epoch on CPU).
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import torch
from torchvision import datasets as tvd

from robusthp.catalog import DATASETS, DatasetSpec, get_spec

__all__ = [  # the catalog's dataset table is re-exported: its one definition is robusthp.catalog
    "DATASETS", "DataNotFoundError", "DatasetSpec", "get_spec", "load_tensors", "split_indices",
    "torchvision_class",
]

log = logging.getLogger(__name__)


class _CIFAR10(tvd.CIFAR10):
    """torchvision's CIFAR10 that checks the files exist rather than their MD5.

    torchvision verifies MD5 when it downloads; re-checking 180 MB on every run
    costs seconds and rejects the small synthetic files the tests write.
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        files = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all((folder / name).is_file() for name in files)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


# The torchvision class that reads each dataset of ``robusthp.catalog.DATASETS`` (the one
# thing about a dataset that needs torchvision, so it lives here, not in the catalog).
_TORCHVISION: dict[str, type[tvd.VisionDataset]] = {
    "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": _CIFAR10,
}


def torchvision_class(name: str) -> type[tvd.VisionDataset]:
    """The torchvision class reading catalog dataset ``name``; a clear error if it has none."""
    spec = get_spec(name)
    if spec.name not in _TORCHVISION:
        raise ValueError(
            f"dataset {spec.name!r} is in robusthp.catalog.DATASETS but has no torchvision class "
            f"to read it; add one to robusthp.data.datasets._TORCHVISION"
        )
    return _TORCHVISION[spec.name]


class DataNotFoundError(FileNotFoundError):
    """The dataset is not under ``root`` and could not be downloaded."""


def load_tensors(name: str, root: str | Path, train: bool, download: bool = True):
    """See :func:`_load_tensors`; decoded once per process (runs of a sweep share it)."""
    return _load_tensors(name, str(Path(root).expanduser().resolve()), train, download)


@functools.lru_cache(maxsize=6)
def _load_tensors(name: str, root: str | Path, train: bool, download: bool = True):
    """``(images uint8 (N, C, H, W), labels int64 (N,))`` of the official train or test set.

    Reads ``root`` first; downloads only when the files are missing and
    ``download`` is true. Raises :class:`DataNotFoundError` naming the root and
    the expected layout when neither works (e.g. offline).
    """
    spec, cls, root = get_spec(name), torchvision_class(name), Path(root).expanduser()
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataNotFoundError(_missing_message(spec, root, tried_download=False)) from None
        try:
            log.info("%s not found under %s: downloading", name, root)
            ds = cls(str(root), train=train, download=True)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors
            raise DataNotFoundError(
                _missing_message(spec, root, tried_download=True) + f" ({_one_line(err)})"
            ) from None
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # NHWC->NCHW
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return images.contiguous(), labels


def _missing_message(spec: DatasetSpec, root: Path, tried_download: bool) -> str:
    how = "and could not be downloaded" if tried_download else "(download disabled)"
    return (
        f"dataset {spec.name!r} not found under data root {str(root)!r} {how}; expected "
        f"{root}/{spec.layout} (set data.root=... or the ROBUSTHP_DATA_DIR environment variable)"
    )


def _one_line(err: Exception, limit: int = 60) -> str:
    text = " ".join(str(err).split())
    return f"download failed: {type(err).__name__}: {text[:limit]}"


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, val) split of ``range(n)``: the same seed, the same split."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]
