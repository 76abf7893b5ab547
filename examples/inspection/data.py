"""fashion-MNIST from Debian's dataset-fashion-mnist (IDX files, gzip): uint8 images + labels."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# mean / std of the training pixels scaled to [0, 1]: the network's input normalization
MEAN, STD = 0.2860, 0.3530


def load_split(split: str, data_dir: Path = DATA_DIR, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    with gzip.open(data_dir / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(data_dir / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The labelled-data format `liteinfer eval classify --data` and `quantize --calib` read."""
    np.savez_compressed(path, images=images, labels=labels)
