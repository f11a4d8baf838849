"""Data: torchvision decoding into uint8 tensors, the paper's splits, in-memory batches.

``DataSettings`` is defined in :mod:`robusthp.settings` and the dataset table
(``DATASETS``, ``DatasetSpec``, ``get_spec``) in :mod:`robusthp.catalog`; both are
re-exported here.
"""

from robusthp.catalog import DATASETS, DatasetSpec, get_spec
from robusthp.data.datamodule import ImageDataModule
from robusthp.data.datasets import DataNotFoundError, load_tensors
from robusthp.data.loader import StepChunks, TensorBatches, random_crop_flip
from robusthp.settings import DataSettings

__all__ = [
    "DATASETS", "DataNotFoundError", "DataSettings", "DatasetSpec", "ImageDataModule", "StepChunks",
    "TensorBatches", "get_spec", "load_tensors", "random_crop_flip",
]
