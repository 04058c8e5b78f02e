"""Data pipeline throughput: CIFAR-10 training batches and ImageNet folder batches at 224x224.

    python benchmarks/bench_data.py [--work DIR] [--cifar-dir DATA] [--jpegs 300] [--workers 1 2]

CIFAR-10: one training epoch (batch 64, pad-4 crop, flip, normalise) over real images made
by ../shared/data/make_cifar10_bin.py when it is there (else 50,000 generated records);
--cifar-dir reuses an existing DATA folder. ImageNet: generated JPEGs (about 500x375) in
class folders, one training epoch at 224x224 (batch 32) next to a plain single-threaded
PIL loader doing the same work (decode, random resized crop, flip, normalise, CHW, stack).
Prints images per second; numbers depend on what else the machine is running.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cifar_bin  # noqa: E402  (path set just above)

from src import dataset as D  # noqa: E402


def cifar_data(work):
    """(root of 50,000 CIFAR-10 training records, what they are): cached from an earlier run,
    the real images where make_cifar10_bin.py is there, else random records."""
    root = os.path.join(work, "cifar")
    if os.path.isdir(os.path.join(root, D.CIFAR10_TRAIN_DIR)):
        return root, "cached"
    if os.path.isfile(cifar_bin.MAKE_CIFAR):
        subprocess.run([sys.executable, cifar_bin.MAKE_CIFAR, root], check=True)
        return root, "real (make_cifar10_bin.py)"
    return cifar_bin.write_random_training_set(root, 10000, files=5), "generated"


def images_per_second(data):
    start, count = time.perf_counter(), 0
    for _, label in data.create_tuple_iterator(output_numpy=True):
        count += len(label)
    return count / (time.perf_counter() - start), count


def bench_cifar(root, workers):
    for size in ((32, 32),):
        for worker_count in workers:
            data = D.create_dataset("cifar10", root, batch_size=64, training=True, image_size=size,
                                    num_parallel_workers=worker_count)
            rate, count = images_per_second(data)
            print(f"cifar10 train {size[0]}x{size[1]} workers={worker_count}: {rate:8.0f} "
                  f"images/s ({count} images)")
    data = D.create_dataset("cifar10", root, batch_size=64, training=True, image_size=(224, 224),
                            num_parallel_workers=max(workers)).take(40)
    rate, count = images_per_second(data)
    print(f"cifar10 train 224x224 workers={max(workers)}: {rate:8.0f} images/s ({count} images)")


def make_jpegs(folder, count):
    if os.path.isdir(folder):
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(count):
        klass = os.path.join(folder, f"n{i % 10:08d}")
        os.makedirs(klass, exist_ok=True)
        base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * (i % 5 + 1)) % 256, (xx + yy) % 256], -1)
        noise = rng.integers(0, 40, base.shape)
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(
            os.path.join(klass, f"img_{i:05d}.JPEG"), quality=90)


def pil_loader_rate(samples, batch_size=32, size=224):
    """A plain loader: PIL decode, random resized crop, flip, normalise, CHW, stack."""
    rng = np.random.default_rng(0)
    mean = np.array(D.IMAGENET_MEAN, np.float32) * 255
    std = np.array(D.IMAGENET_STD, np.float32) * 255
    start, count, batch = time.perf_counter(), 0, []
    for path, _ in samples:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            area = width * height * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = int(min(width, round(np.sqrt(area * ratio))))
            h = int(min(height, round(np.sqrt(area / ratio))))
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            crop = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        batch.append(((np.asarray(crop, np.float32) - mean) / std).transpose(2, 0, 1))
        if len(batch) == batch_size:
            np.stack(batch)
            count, batch = count + batch_size, []
    return count / (time.perf_counter() - start), count


def bench_imagenet(work, count, workers):
    root = os.path.join(work, "imagenet", D.IMAGENET_TRAIN_DIR)
    make_jpegs(root, count)
    for worker_count in workers:
        data = D.create_dataset("imagenet2012", os.path.dirname(root), batch_size=32,
                                training=True, image_size=(224, 224), num_classes=1000,
                                num_parallel_workers=worker_count)
        rate, seen = images_per_second(data)
        print(f"imagenet folder train 224x224 workers={worker_count}: {rate:8.0f} images/s "
              f"({seen} images)")
    rate, seen = pil_loader_rate(D.imagenet_folder_samples(root))
    print(f"plain PIL loader (1 thread) 224x224:       {rate:8.0f} images/s ({seen} images)")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vgg_bench_data"),
                        help="folder for generated data, reused between runs")
    parser.add_argument("--cifar-dir", default=None, help="existing CIFAR-10 DATA folder to read")
    parser.add_argument("--jpegs", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, D.default_workers()])
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    workers = sorted(set(args.workers))
    if args.cifar_dir:
        root, kind = args.cifar_dir, "given"
    else:
        root, kind = cifar_data(args.work)
    print(f"cores available: {D.default_workers(10 ** 6)}; CIFAR-10 data: {kind} ({root})")
    bench_cifar(root, workers)
    bench_imagenet(args.work, args.jpegs, workers)


if __name__ == "__main__":
    main()
