"""Datasets: the Fashion-MNIST data embedded in the repository."""

from .fashion_mnist import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    REBUILD_COMMAND,
    FashionMNIST,
    balanced_first,
    fashion_mnist_dir,
    read_idx,
    write_idx,
)

__all__ = [
    "CLASS_NAMES",
    "DATA_DIR_ENV",
    "REBUILD_COMMAND",
    "FashionMNIST",
    "balanced_first",
    "fashion_mnist_dir",
    "read_idx",
    "write_idx",
]
