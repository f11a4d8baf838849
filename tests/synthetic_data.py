"""Small datasets written in the real on-disk formats torchvision reads.

MNIST/Fashion-MNIST: the idx files (``MNIST/raw/train-images-idx3-ubyte``...).
CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
pickles with ``data`` (N x 3072 uint8, channel-major) and ``labels``.
Images carry a label-dependent bright block so that a model can learn them.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def learnable_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, channels) uint8 noise with a bright block at a label-chosen place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, size, size, channels), dtype=np.uint8)
    block = size // 5
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 5)
        images[i, 2 + r * 2 * block : 2 + r * 2 * block + block, c * block : (c + 1) * block] = 250
    return images, labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(root: Path, name: str = "mnist", n_train: int = 300, n_test: int = 100) -> Path:
    raw = Path(root) / _IDX_FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = learnable_images(n, 28, 1, seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def write_cifar10(root: Path, n_per_batch: int = 40, n_test: int = 50) -> Path:
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = [(f"data_batch_{i}", n_per_batch, i) for i in range(1, 6)] + [("test_batch", n_test, 9)]
    for name, n, seed in files:
        images, labels = learnable_images(n, 32, 3, seed)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # channel-major rows, as CIFAR-10
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return Path(root)
