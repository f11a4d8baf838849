"""Data: torchvision decoding into uint8 tensors, the paper's splits, in-memory batches."""

from robusthp.data.datamodule import DataSettings, ImageDataModule
from robusthp.data.datasets import DATASETS, DataNotFoundError, DatasetSpec, get_spec, load_tensors
from robusthp.data.loader import StepChunks, TensorBatches, random_crop_flip

__all__ = [
    "DATASETS", "DataNotFoundError", "DataSettings", "DatasetSpec", "ImageDataModule", "StepChunks",
    "TensorBatches", "get_spec", "load_tensors", "random_crop_flip",
]
