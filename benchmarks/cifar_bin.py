"""CIFAR-10 binary files for the benchmarks: raw records read, written (by the project's one
writer, src.dataset.write_cifar10_bin) and generated. Scripts importing this put the
repository root on sys.path first.
"""
import os

import numpy as np

from src.dataset import CIFAR10_RECORD_BYTES, CIFAR10_TRAIN_DIR, write_cifar10_bin

NUM_CLASSES = 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real CIFAR-10 images, where this machine has them: `make_cifar10_bin.py DATA` writes the
# 50,000 training images as DATA/cifar-10-batches-bin/data_batch_{1..5}.bin.
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
MAKE_CIFAR = os.path.join(SHARED_DATA, "make_cifar10_bin.py")


def read_records(paths):
    """The records of the given .bin files, in order: uint8 array (N, 1 + 3072)."""
    return np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
                           for p in paths])


def write_records(path, records):
    """Writes records (N, 1 + 3072: label byte, then the R, G, B planes) to path."""
    records = np.asarray(records, dtype=np.uint8)
    write_cifar10_bin(path, records[:, 1:], records[:, 0])
    return path


def write_random_training_set(root, count, files=1, seed=0):
    """root/cifar-10-batches-bin/data_batch_{1..files}.bin of `count` random records each
    (random pixels, labels 0-9), drawn from one seeded generator. Returns root."""
    rng = np.random.default_rng(seed)
    for i in range(1, files + 1):
        records = rng.integers(0, 256, (count, CIFAR10_RECORD_BYTES), dtype=np.uint8)
        records[:, 0] %= NUM_CLASSES
        write_records(os.path.join(root, CIFAR10_TRAIN_DIR, f"data_batch_{i}.bin"), records)
    return root
