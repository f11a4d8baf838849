import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_data import write_cifar10, write_idx_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding small synthetic MNIST, Fashion-MNIST and CIFAR-10 in real formats."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root, "mnist")
    write_idx_dataset(root, "fashion_mnist")
    write_cifar10(root)
    return root


def real_data_root() -> Path | None:
    for candidate in (os.environ.get("ROBUSTHP_DATA_DIR"), REPO.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def real_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found (set ROBUSTHP_DATA_DIR or put ../shared/datasets beside the repo)")
    return root
