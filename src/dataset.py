"""Data pipelines: CIFAR-10 (binary release) and ImageNet (class folders or a list file)
turned into batched, sharded, normalised `mindspore.dataset` pipelines for one epoch.

CIFAR-10 is read by our own reader (MindSpore's `Cifar10Dataset` insists on exactly 10,000
records per file) and augmented a whole batch at a time in NumPy, which is what makes it
fast enough on a small CPU. ImageNet decodes with Pillow in the source (so a corrupt file
can be named) and uses MindSpore's C++ vision ops for the rest.

Both datasets shard the same way: training draws one permutation of the whole set per
(seed, epoch) and gives shard k every num_shards-th sample of it, trimmed so that all
shards take the same number of steps; evaluation gives shard k the samples k, k+N, k+2N...
so the shards together cover every sample exactly once, with no padding.

For NumPy consumers (preprocess.py, ONNX evaluation) `read_cifar10_bin` returns raw records
and `create_dataset(...).create_tuple_iterator(output_numpy=True)` yields the normalised
batches as NumPy arrays.
"""
import logging
import os
import threading

import numpy as np

from src.augment import SeededPolicy, erase_rectangles, policy_op
from src.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # RGB, 0-1 scale
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_TRAIN_DIR = "cifar-10-batches-bin"
CIFAR10_EVAL_DIR = "cifar-10-verify-bin"
IMAGENET_TRAIN_DIR = "ilsvrc"
IMAGENET_EVAL_DIR = "validation_preprocess"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- shared helpers

def default_workers(requested=None):
    """Parallel workers: `requested` if given (> 0), capped at the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cores = max(1, cores)
    if requested is None or int(requested) <= 0:
        return min(cores, 8)
    return min(int(requested), cores)


def shard_indices(num_samples, *, training, seed, epoch, num_shards, shard_id):
    """Sample indices one shard reads in one epoch, in reading order.

    Training: a permutation of the whole set, a pure function of (seed, epoch); shard k takes
    every num_shards-th element from k, all shards trimmed to the same length. Evaluation:
    the fixed order k, k+num_shards, ... with nothing dropped or repeated. (MindSpore's
    DistributedSampler pads shards to equal size by repeating samples, which would make a
    summed distributed evaluation count some images twice; hence our own split.)
    """
    if training:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)
        per_shard = num_samples // num_shards
        return order[shard_id::num_shards][:per_shard]
    return np.arange(shard_id, num_samples, num_shards)


def _check_common(name, data_dir, batch_size, num_shards, shard_id):
    if name not in ("cifar10", "imagenet2012"):
        raise UserError(f"dataset: unknown name {name!r}; expected 'cifar10' or 'imagenet2012'")
    if int(batch_size) < 1:
        raise UserError(f"batch_size: {batch_size} must be at least 1")
    if int(num_shards) < 1 or not 0 <= int(shard_id) < int(num_shards):
        raise UserError(f"shard_id: {shard_id} must be in [0, num_shards={num_shards})")
    if not os.path.isdir(data_dir):
        raise UserError(f"data_dir: {data_dir} does not exist or is not a folder")


def _check_enough(count, batch_size, drop_remainder, num_shards, where):
    if drop_remainder and count < batch_size:
        raise UserError(f"{where}: {count} samples per shard (num_shards={num_shards}) is fewer "
                        f"than one batch of {batch_size}; lower batch_size or add data")


def _batch_starts(count, batch_size, drop_remainder, start_step):
    full, rest = divmod(count, batch_size)
    num_batches = full if drop_remainder or rest == 0 else full + 1
    if not 0 <= start_step <= num_batches:
        raise UserError(f"start_step: {start_step} is outside this epoch's {num_batches} steps")
    return num_batches


# ---------------------------------------------------------------- CIFAR-10

def read_cifar10_bin(path, num_classes=10):
    """Read one CIFAR-10 .bin file -> (images uint8 NHWC RGB, labels int32)."""
    images, labels = _read_cifar10_chw([path], num_classes)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels


def write_cifar10_bin(path, images, labels):
    """Write CIFAR-10 records to path (its folder made if missing): per image its label byte,
    then its R, G, B planes (images (N, 3, 32, 32) or (N, 3072) uint8). Written to a side file
    and renamed, so a reader never sees half a file. Returns path."""
    labels = np.asarray(labels).astype(np.uint8)
    images = np.asarray(images, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    partial = path + ".partial"
    records.tofile(partial)
    os.replace(partial, path)
    return path


def cifar10_folder(data_dir, training):
    """The folder of one split's .bin files: DATA/cifar-10-batches-bin (or -verify-bin), or
    data_dir itself when it is the split folder (as the extracted release is)."""
    folder = os.path.join(data_dir, CIFAR10_TRAIN_DIR if training else CIFAR10_EVAL_DIR)
    return folder if os.path.isdir(folder) else data_dir


def cifar10_files(data_dir, training):
    """The .bin files of one split, sorted; data_dir is the root or the split folder itself."""
    sub = CIFAR10_TRAIN_DIR if training else CIFAR10_EVAL_DIR
    pattern = "data_batch_" if training else "test_batch"
    folder = cifar10_folder(data_dir, training)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.startswith(pattern) and f.endswith(".bin"))
    if not files:
        raise UserError(f"data_dir: no {pattern}*.bin files in {os.path.join(data_dir, sub)} "
                        f"(expected the CIFAR-10 binary layout, e.g. DATA/{sub}/{pattern}"
                        f"{'1' if training else ''}.bin)")
    return files


def _read_cifar10_chw(files, num_classes):
    """Read and check .bin files -> (images uint8 N,3,32,32 in RGB order, labels int32)."""
    for path in files:  # every size first, so a bad file fails before any big read
        size = os.path.getsize(path)
        if size == 0 or size % CIFAR10_RECORD_BYTES:
            raise UserError(f"{path}: size {size} bytes is not a positive multiple of "
                            f"{CIFAR10_RECORD_BYTES} (1 label byte + 3072 pixel bytes per record)")
    records = [np.fromfile(path, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
               for path in files]
    for path, rec in zip(files, records):
        top = int(rec[:, 0].max())
        if top >= num_classes:
            raise UserError(f"{path}: label {top} is outside num_classes={num_classes} "
                            f"(labels must be 0..{num_classes - 1})")
    records = records[0] if len(records) == 1 else np.concatenate(records)
    labels = records[:, 0].astype(np.int32)
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # planes R, G, B; rows; columns
    return images, labels


def _resize_matrix(out_size, in_size):
    """Bilinear (half-pixel centres, edge clamped) interpolation as an (out, in) matrix."""
    centres = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    centres = np.clip(centres, 0, in_size - 1)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = (centres - low).astype(np.float32)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


class Cifar10Batches:
    """Random-access source of whole batches: item i is (image float32 B,3,H,W, label int32 B).

    Everything, including the augmentation of batch i, is a pure function of the
    constructor arguments and i, so the result does not depend on worker count or on
    where an epoch was resumed. Usable without MindSpore (plain indexing or iteration).
    """

    def __init__(self, images, labels, indices, *, batch_size, training, image_size=(32, 32),
                 seed=1, epoch=0, num_shards=1, shard_id=0, drop_remainder=None, start_step=0,
                 auto_augment="none", random_erasing=0.0, crop_padding=4, alternate_flip=False,
                 crop_padding_mode="zero"):
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        self.pad = int(crop_padding)
        self.pad_mode = {"zero": "constant", "reflect": "reflect"}[crop_padding_mode]
        self.flipped_half = None
        if alternate_flip and training:
            # a fixed half of the whole set (same for every shard) is mirrored in even epochs,
            # the other half in odd epochs: over two epochs each image is seen both ways
            order = np.random.default_rng([int(seed), 7]).permutation(len(images))
            self.flipped_half = (order < len(images) // 2) ^ bool(int(epoch) % 2)
        self.batch_size, self.training = int(batch_size), bool(training)
        self.key = [int(seed), int(epoch), int(num_shards), int(shard_id)]
        self.drop_remainder = training if drop_remainder is None else bool(drop_remainder)
        self.start_step = int(start_step)
        self.num_batches = _batch_starts(len(self.indices), self.batch_size,
                                         self.drop_remainder, self.start_step)
        mean = np.array(CIFAR10_MEAN, np.float32) * 255
        std = np.array(CIFAR10_STD, np.float32) * 255
        self.scale = (1 / std).reshape(1, 3, 1, 1)
        self.shift = (-mean / std).reshape(1, 3, 1, 1)
        policy = policy_op(auto_augment, "cifar10") if training else None
        self.policy = SeededPolicy(policy) if policy is not None else None
        self.erasing = float(random_erasing) if training else 0.0
        height, width = int(image_size[0]), int(image_size[1])
        self.resize = None
        if (height, width) != (32, 32):
            self.resize = (_resize_matrix(height, 32), _resize_matrix(width, 32))

    def __len__(self):
        return self.num_batches - self.start_step

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        step = i + self.start_step
        picked = self.indices[step * self.batch_size:(step + 1) * self.batch_size]
        batch = self.images[picked]
        if self.training:
            batch = self._crop_and_flip(batch, np.random.default_rng(self.key + [step]), picked)
        if self.policy is not None:  # generators of their own: crop and flip stay as they were
            seeds = np.random.default_rng(self.key + [step, 1]).integers(0, 2 ** 31, len(batch))
            batch = self.policy(batch, seeds)
        out = batch.astype(np.float32)
        out *= self.scale
        out += self.shift
        if self.erasing:
            erase_rectangles(out, self.erasing, np.random.default_rng(self.key + [step, 2]))
        if self.resize is not None:
            rows, cols = self.resize
            # Bilinear resize as matrix products; einsum turns them into large GEMMs
            # (about 10x faster than broadcasting `rows @ out @ cols.T` over the planes).
            out = np.einsum("hi,bcij,wj->bchw", rows, out, cols, optimize=True)
        return np.ascontiguousarray(out), self.labels[picked]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _crop_and_flip(self, batch, rng, picked):
        """Random 32x32 crop of the image padded by self.pad pixels on each side (zeros, or
        the image reflected at its edges; the image itself when 0), then a horizontal flip:
        at random, or with alternate_flip as self.flipped_half says for the images `picked`."""
        count, pad = len(batch), self.pad
        padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=self.pad_mode)
        top = rng.integers(0, 2 * pad + 1, count)
        left = rng.integers(0, 2 * pad + 1, count)
        if self.flipped_half is None:
            flip = rng.random(count) < 0.5
        else:
            flip = self.flipped_half[picked]
        span = np.arange(32)
        rows = top[:, None] + span
        cols = left[:, None] + np.where(flip[:, None], span[::-1], span)
        return padded[np.arange(count)[:, None, None, None], np.arange(3)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]


def _cifar10_dataset(data_dir, *, batch_size, training, image_size, num_classes, num_shards,
                     shard_id, workers, seed, epoch, start_step, drop_remainder, auto_augment,
                     random_erasing, crop_padding, alternate_flip, crop_padding_mode):
    import mindspore.dataset as ds
    files = cifar10_files(data_dir, training)
    images, labels = _read_cifar10_chw(files, num_classes)
    indices = shard_indices(len(labels), training=training, seed=seed, epoch=epoch,
                            num_shards=num_shards, shard_id=shard_id)
    _check_enough(len(indices), batch_size, drop_remainder, num_shards, os.path.dirname(files[0]))
    source = Cifar10Batches(images, labels, indices, batch_size=batch_size, training=training,
                            image_size=image_size, seed=seed, epoch=epoch, num_shards=num_shards,
                            shard_id=shard_id, drop_remainder=drop_remainder, start_step=start_step,
                            auto_augment=auto_augment, random_erasing=random_erasing,
                            crop_padding=crop_padding, alternate_flip=alternate_flip,
                            crop_padding_mode=crop_padding_mode)
    # Threads, not processes: the NumPy work releases the GIL and nothing gets pickled.
    return ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False,
                               num_parallel_workers=workers, python_multiprocessing=False)


# ---------------------------------------------------------------- ImageNet

def find_classes(folder):
    """Sorted names of the class sub-folders of `folder` (index = position in this list)."""
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        raise UserError(f"data_dir: {folder} does not exist") from None
    return names


def is_image_file(name):
    """Whether a file name ends in one of IMAGE_EXTENSIONS (in any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder):
    """Every image file under folder, sub-folders included, sorted; hidden files left out."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                  for name in names if is_image_file(name) and not name.startswith("."))


def imagenet_folder_samples(folder):
    """[(path, label)] of a class-folder tree, classes in sorted order; checks it is usable."""
    classes = find_classes(folder)
    if not classes:
        raise UserError(f"{folder}: no class sub-folders with images "
                        f"(expected {folder}/CLASS/*.JPEG)")
    samples = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if is_image_file(f))
        if not files:
            raise UserError(f"{class_dir}: class folder holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((os.path.join(class_dir, f), label) for f in files)
    return samples


def imagenet_list_samples(list_file, root, num_classes):
    """[(path, label)] from `relative/path.jpg label` lines under root; checks every line."""
    if not os.path.isfile(list_file):
        raise UserError(f"list_file: {list_file} does not exist")
    samples = []
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            where = f"{list_file}:{number}"
            rel, _, label_text = text.rpartition(" ")
            rel = rel.strip()
            try:
                label = int(label_text)
            except ValueError:
                label = None
            if not rel or label is None:
                raise UserError(f"{where}: cannot parse {text!r}; "
                                "expected 'relative/path.jpg LABEL'")
            if not 0 <= label < num_classes:
                raise UserError(f"{where}: label {label} is outside num_classes={num_classes}")
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                raise UserError(f"{where}: image {path} does not exist")
            samples.append((path, label))
    if not samples:
        raise UserError(f"{list_file}: no samples listed")
    return samples


def imagenet_folder(data_dir, training):
    """The class-folder root: DATA/ilsvrc (train) or DATA/validation_preprocess (eval) when
    present, else DATA itself."""
    sub = os.path.join(data_dir, IMAGENET_TRAIN_DIR if training else IMAGENET_EVAL_DIR)
    return sub if os.path.isdir(sub) else data_dir


def _imagenet_samples(data_dir, training, list_file, num_classes):
    if list_file:
        return imagenet_list_samples(list_file, data_dir, num_classes), list_file
    folder = imagenet_folder(data_dir, training)
    samples = imagenet_folder_samples(folder)
    top = max(label for _, label in samples)
    if top >= num_classes:
        raise UserError(f"{folder}: {top + 1} class folders but num_classes={num_classes}")
    return samples, folder


class SkippedFiles:
    """Thread-safe set of corrupt images replaced during an epoch (skip_corrupt=True)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths = set()

    def add(self, path):
        with self._lock:
            self._paths.add(path)

    @property
    def paths(self):
        with self._lock:
            return sorted(self._paths)

    def __len__(self):
        return len(self.paths)


class ImageFiles:
    """Random-access source: item i is (decoded image uint8 HWC RGB, label int32 array).

    A file that cannot be decoded raises UserError with its path, or, with skip_corrupt,
    is replaced by the next readable sample of the same shard (batch counts stay exact,
    which keeps the ranks of a distributed job in step) and recorded in `skipped`.
    """

    def __init__(self, samples, indices, skip_corrupt=False):
        self.samples, self.indices = samples, np.asarray(indices)
        self.skip_corrupt = skip_corrupt
        self.skipped = SkippedFiles()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        for attempt in range(len(self.indices)):
            path, label = self.samples[self.indices[(i + attempt) % len(self.indices)]]
            try:
                return self._decode(path), np.array(label, np.int32)
            except (OSError, SyntaxError, ValueError) as err:
                if not self.skip_corrupt:
                    raise UserError(f"{path}: cannot decode image ({err})") from None
                self.skipped.add(path)
                logger.warning("skipping corrupt image %s (%s)", path, err)
        raise UserError("no readable image in this shard")

    @staticmethod
    def _decode(path):
        from PIL import Image
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


def imagenet_transforms(training, image_size, auto_augment="none", random_erasing=0.0):
    """MindSpore vision ops after decoding: uint8 HWC RGB -> normalised float32 CHW; training
    adds the auto_augment policy after the flip and random erasing at the end."""
    import mindspore.dataset.vision as vision
    size = (int(image_size[0]), int(image_size[1]))
    normalize = vision.Normalize(mean=[m * 255 for m in IMAGENET_MEAN],
                                 std=[s * 255 for s in IMAGENET_STD])
    if training:
        policy = policy_op(auto_augment, "imagenet2012")
        return ([vision.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                 vision.RandomHorizontalFlip(prob=0.5)] + ([policy] if policy else []) +
                [normalize, vision.HWC2CHW()] +
                ([vision.RandomErasing(prob=random_erasing)] if random_erasing else []))
    # Pillow's bilinear resize (antialiased when it shrinks), as in torchvision's evaluation
    # transform: MindSpore's Resize on arrays does not antialias (up to ~20 grey levels off).
    short_side = int(round(256 * min(size) / 224))
    return [vision.ToPIL(), vision.Resize(short_side, vision.Inter.BILINEAR),
            vision.CenterCrop(size), vision.ToTensor(),
            vision.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), is_hwc=False)]


def _imagenet_dataset(data_dir, *, batch_size, training, image_size, num_classes, num_shards,
                      shard_id, workers, seed, epoch, start_step, list_file, skip_corrupt,
                      drop_remainder, auto_augment, random_erasing):
    import mindspore.dataset as ds
    samples, where = _imagenet_samples(data_dir, training, list_file, num_classes)
    indices = shard_indices(len(samples), training=training, seed=seed, epoch=epoch,
                            num_shards=num_shards, shard_id=shard_id)
    _check_enough(len(indices), batch_size, drop_remainder, num_shards, where)
    num_batches = _batch_starts(len(indices), batch_size, drop_remainder, start_step)
    # Only the samples this epoch's batches use, so a dropped remainder is never decoded.
    source = ImageFiles(samples, indices[start_step * batch_size:num_batches * batch_size],
                        skip_corrupt)
    data = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False,
                               num_parallel_workers=workers, python_multiprocessing=False)
    data = data.map(imagenet_transforms(training, image_size, auto_augment, random_erasing),
                    input_columns="image", num_parallel_workers=workers)
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    data.skipped_files = source.skipped  # read after an epoch to report the count
    return data


# ---------------------------------------------------------------- first training images

def first_training_images(name, data_dir, count, *, image_size=(32, 32), num_classes=10,
                          list_file=None):
    """The first `count` training images in file order (all of them when there are fewer),
    as evaluation transforms them (normalised float32 N,C,H,W, no augmentation): the same
    images on every process of a run, whatever its shard."""
    if name == "cifar10":
        images, labels = _read_cifar10_chw(cifar10_files(data_dir, True), num_classes)
        count = min(int(count), len(labels))
        source = Cifar10Batches(images, labels, np.arange(count), batch_size=count,
                                training=False, image_size=image_size)
        return source[0][0]
    import mindspore.dataset as ds
    samples, _ = _imagenet_samples(data_dir, True, list_file, num_classes)
    count = min(int(count), len(samples))
    data = ds.GeneratorDataset(ImageFiles(samples, np.arange(count)),
                               column_names=["image", "label"], shuffle=False)
    data = data.map(imagenet_transforms(False, image_size), input_columns="image")
    return np.stack([row[0] for row in data.create_tuple_iterator(output_numpy=True)])


# ---------------------------------------------------------------- entry point

def pipeline_user_error(error):
    """The one-line UserError inside an exception raised while iterating a dataset, or None.

    MindSpore re-raises an exception from a Python source as the same type but with a
    multi-line message (traceback and pipeline banners); this recovers our line from it.
    """
    markers = (f"{UserError.__module__}.{UserError.__name__}: ", f"{UserError.__name__}: ")
    for line in reversed(str(error).splitlines()):
        for marker in markers:
            if line.startswith(marker):
                return UserError(line[len(marker):])
    if isinstance(error, UserError) and "\n" not in str(error):
        return error
    return None


def create_dataset(name, data_dir, *, batch_size, training, image_size=(32, 32), num_classes=10,
                   num_shards=1, shard_id=0, num_parallel_workers=None, seed=1, epoch=0,
                   start_step=0, list_file=None, skip_corrupt=False, drop_remainder=None,
                   auto_augment="none", random_erasing=0.0, crop_padding=4,
                   alternate_flip=False, crop_padding_mode="zero"):
    """One epoch of `name` ('cifar10' | 'imagenet2012') as a batched mindspore Dataset.

    Columns ('image', 'label'): image float32 NCHW normalised, label int32 of shape (B,).
    Training shuffles the whole set per (seed, epoch), augments and drops the last partial
    batch; evaluation keeps a fixed order and the last batch (drop_remainder overrides).
    CIFAR-10 order and augmentation are a pure function of (seed, epoch, num_shards,
    shard_id): build a new dataset per epoch. start_step skips that many batches of the
    epoch; get_dataset_size() is the number of batches left. ImageNet datasets carry
    `skipped_files` (corrupt images replaced when skip_corrupt=True). auto_augment and
    random_erasing (src/augment.py) apply to training only; crop_padding is CIFAR-10's random
    crop (the image padded by that many pixels on each side, with zeros or, with
    crop_padding_mode 'reflect', its mirror image; 0: flip only), and
    alternate_flip its flip of a fixed half of the images in even epochs and of the other half
    in odd ones (CIFAR-10 only).
    """
    _check_common(name, data_dir, batch_size, num_shards, shard_id)
    if drop_remainder is None:
        drop_remainder = bool(training)
    options = dict(batch_size=int(batch_size), training=bool(training),
                   image_size=tuple(image_size), num_classes=int(num_classes),
                   num_shards=int(num_shards), shard_id=int(shard_id),
                   workers=default_workers(num_parallel_workers), seed=seed, epoch=epoch,
                   start_step=int(start_step), drop_remainder=bool(drop_remainder),
                   auto_augment=auto_augment, random_erasing=float(random_erasing))
    if name == "cifar10":
        return _cifar10_dataset(data_dir, crop_padding=int(crop_padding),
                                alternate_flip=bool(alternate_flip),
                                crop_padding_mode=crop_padding_mode, **options)
    if alternate_flip:
        raise UserError("alternate_flip applies to dataset cifar10 only")
    if crop_padding_mode != "zero":
        raise UserError("crop_padding_mode applies to dataset cifar10 only")
    return _imagenet_dataset(data_dir, list_file=list_file, skip_corrupt=skip_corrupt, **options)
