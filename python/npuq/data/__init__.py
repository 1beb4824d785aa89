"""Datasets used to train and calibrate the example networks.

Only Fashion-MNIST for now: small enough to train a MobileNet on two CPU cores in minutes, hard
enough (about 92% for a small CNN) that quantization damage shows up in the accuracy.
"""

from npuq.data.fashion_mnist import (
    CLASSES,
    MEAN,
    STD,
    DatasetNotFoundError,
    IdxFormatError,
    default_root,
    fashion_mnist_loader,
    fashion_mnist_tensors,
    load_fashion_mnist,
    read_idx,
)

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "DatasetNotFoundError",
    "IdxFormatError",
    "default_root",
    "fashion_mnist_loader",
    "fashion_mnist_tensors",
    "load_fashion_mnist",
    "read_idx",
]
