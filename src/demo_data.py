"""Built-in demo data: scikit-learn's bundled handwritten digits (1,797 real 8x8 images,
10 classes) written in the CIFAR-10 binary layout, so the quick start needs no download.

    python -m src.demo_data OUT_DIR

writes OUT_DIR/cifar-10-batches-bin/data_batch_1.bin (about 80 %, stratified) and
OUT_DIR/cifar-10-verify-bin/test_batch.bin (the rest). The split is seeded and the output
byte-for-byte the same on every run.
"""
import argparse
import os

import numpy as np

from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_TRAIN_DIR, write_cifar10_bin

SPLIT_SEED = 0
EVAL_FRACTION = 0.2


def digits_as_cifar(images):
    """(N, 8, 8) digits with values 0..16 -> (N, 3, 32, 32) uint8 planes R, G, B.

    Upscaled 4x with bilinear interpolation (smooth strokes rather than 4x4 blocks); the
    grey value goes to all three planes.
    """
    grey = images.astype(np.float32) * (255.0 / 16.0)
    # Half-pixel-centre bilinear weights for 8 -> 32, edges clamped.
    centres = np.clip((np.arange(32) + 0.5) / 4 - 0.5, 0, 7)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, 7)
    frac = (centres - low).astype(np.float32)
    weights = np.zeros((32, 8), np.float32)
    weights[np.arange(32), low] += 1 - frac
    weights[np.arange(32), high] += frac
    big = weights @ grey @ weights.T
    big = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    return np.repeat(big[:, None], 3, axis=1)


def stratified_split(labels, eval_fraction=EVAL_FRACTION, seed=SPLIT_SEED):
    """(train indices, eval indices): each class split eval_fraction / rest, seeded."""
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * eval_fraction))
        evaluation.append(members[:cut])
        train.append(members[cut:])
    train, evaluation = np.concatenate(train), np.concatenate(evaluation)
    return rng.permutation(train), np.sort(evaluation)


def write_demo_cifar10(out_dir):
    """Write the demo train/eval .bin files under out_dir; returns (train count, eval count)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = digits_as_cifar(digits.images)
    labels = digits.target.astype(np.int64)
    train, evaluation = stratified_split(labels)
    write_cifar10_bin(os.path.join(out_dir, CIFAR10_TRAIN_DIR, "data_batch_1.bin"),
                      images[train], labels[train])
    write_cifar10_bin(os.path.join(out_dir, CIFAR10_EVAL_DIR, "test_batch.bin"),
                      images[evaluation], labels[evaluation])
    return len(train), len(evaluation)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir",
                        help="folder to write cifar-10-batches-bin/ and cifar-10-verify-bin/ into")
    args = parser.parse_args(argv)
    n_train, n_eval = write_demo_cifar10(args.out_dir)
    print(f"wrote {n_train} training and {n_eval} evaluation digit images to {args.out_dir}")


if __name__ == "__main__":
    main()
