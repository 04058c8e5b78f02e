"""Data pipelines on small generated files: pixel/channel correctness, sharding, counts,
determinism, resume, and one clear error per kind of bad data."""
import os

import numpy as np
import pytest
from PIL import Image

from src import dataset as D
from src.errors import UserError

MEAN = np.array(D.CIFAR10_MEAN, np.float32).reshape(3, 1, 1) * 255
STD = np.array(D.CIFAR10_STD, np.float32).reshape(3, 1, 1) * 255


def id_images(count):
    """Images whose R plane holds the sample id % 256 and G plane id // 256, everywhere."""
    ids = np.arange(count)
    images = np.zeros((count, 3, 32, 32), np.uint8)
    images[:, 0] = (ids % 256)[:, None, None]
    images[:, 1] = (ids // 256)[:, None, None]
    return images


def cifar_root(tmp_path, train_count=200, eval_count=203):
    root = tmp_path / "cifar"
    train = id_images(train_count)
    D.write_cifar10_bin(str(root / D.CIFAR10_TRAIN_DIR / "data_batch_1.bin"), train[:120],
                        np.arange(120) % 10)
    D.write_cifar10_bin(str(root / D.CIFAR10_TRAIN_DIR / "data_batch_2.bin"), train[120:],
                        np.arange(120, train_count) % 10)
    D.write_cifar10_bin(str(root / D.CIFAR10_EVAL_DIR / "test_batch.bin"), id_images(eval_count),
                        np.arange(eval_count) % 10)
    return str(root)


def pixels(image):
    """Undo normalisation: float CHW -> 0..255 values."""
    return image * STD + MEAN


def batches(data):
    return list(data.create_tuple_iterator(output_numpy=True))


def sample_ids(data):
    """Ids of every sample read (centre pixel survives the pad-4 crop and the flip)."""
    ids, labels = [], []
    for image, label in batches(data):
        centre = pixels(image)[:, :, 16, 16]
        ids.extend(np.rint(centre[:, 0] + 256 * centre[:, 1]).astype(int))
        labels.extend(label)
    return np.array(ids), np.array(labels)


def cifar(root, **kw):
    kw.setdefault("batch_size", 10)
    kw.setdefault("num_parallel_workers", 1)
    return D.create_dataset("cifar10", root, **kw)


# ---------------------------------------------------------------- CIFAR-10

def test_planes_are_r_g_b_and_pixels_survive(tmp_path):
    rows, cols = np.mgrid[0:32, 0:32]
    image = np.stack([np.full((32, 32), 10), rows * 8, cols * 7]).astype(np.uint8)
    D.write_cifar10_bin(str(tmp_path / D.CIFAR10_EVAL_DIR / "test_batch.bin"), image[None], [7])
    (got_image, got_label), = batches(cifar(str(tmp_path), batch_size=4, training=False))
    assert got_image.shape == (1, 3, 32, 32) and got_image.dtype == np.float32
    assert got_label.dtype == np.int32 and got_label.tolist() == [7]
    np.testing.assert_allclose(pixels(got_image[0]), image, atol=1e-3)
    # The split folder itself is accepted too.
    (again, _), = batches(cifar(str(tmp_path / D.CIFAR10_EVAL_DIR), batch_size=4, training=False))
    np.testing.assert_array_equal(again, got_image)


def test_read_cifar10_bin_gives_nhwc_rgb(tmp_path):
    image = np.stack([np.full((32, 32), v, np.uint8) for v in (1, 2, 3)])
    path = str(tmp_path / "test_batch.bin")
    D.write_cifar10_bin(path, np.stack([image, image]), [4, 5])
    images, labels = D.read_cifar10_bin(path)
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [4, 5]
    assert images[1, 5, 9].tolist() == [1, 2, 3]


def test_eval_counts_every_image_once_over_shards(tmp_path):
    root = cifar_root(tmp_path)
    whole = cifar(root, batch_size=16, training=False)
    assert whole.get_dataset_size() == 13  # 12 full batches + 11
    ids, labels = sample_ids(whole)
    assert ids.tolist() == list(range(203)) and (labels == ids % 10).all()
    parts = [sample_ids(cifar(root, batch_size=16, training=False, num_shards=2, shard_id=k))[0]
             for k in (0, 1)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(203))


def test_training_shards_partition_a_shuffled_epoch(tmp_path):
    root = cifar_root(tmp_path)
    parts = [sample_ids(cifar(root, training=True, num_shards=2, shard_id=k, epoch=3))
             for k in (0, 1)]
    for ids, labels in parts:
        assert len(ids) == 100 and (labels == ids % 10).all()
    together = np.concatenate([ids for ids, _ in parts])
    assert sorted(together.tolist()) == list(range(200))
    assert together.tolist() != list(range(200))  # shuffled


def test_training_is_deterministic_per_epoch_and_resumable(tmp_path):
    root = cifar_root(tmp_path)
    first = batches(cifar(root, training=True, seed=5, epoch=2))
    again = batches(cifar(root, training=True, seed=5, epoch=2, num_parallel_workers=2))
    for (a, la), (b, lb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    other_epoch = sample_ids(cifar(root, training=True, seed=5, epoch=3))[0]
    same_epoch = sample_ids(cifar(root, training=True, seed=5, epoch=2))[0]
    assert other_epoch.tolist() != same_epoch.tolist()
    resumed = cifar(root, training=True, seed=5, epoch=2, start_step=3)
    assert resumed.get_dataset_size() == len(first) - 3 == 17
    for (a, _), (b, _) in zip(first[3:], batches(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_augments_and_drops_partial_batch(tmp_path):
    rows, cols = np.mgrid[0:32, 0:32]
    image = np.stack([rows * 8, cols * 8, np.full((32, 32), 99)]).astype(np.uint8)
    D.write_cifar10_bin(str(tmp_path / D.CIFAR10_TRAIN_DIR / "data_batch_1.bin"),
                        np.stack([image] * 70), [3] * 70)
    got = batches(cifar(str(tmp_path), batch_size=32, training=True))
    assert [len(label) for _, label in got] == [32, 32]
    values = pixels(np.concatenate([img for img, _ in got]))
    np.testing.assert_allclose(values[:, 2, 4:28, 4:28], 99, atol=1e-3)  # B plane untouched
    row_steps = {int(round(v)) for v in values[:, 0, 16, 16] - values[:, 0, 15, 16]}
    assert row_steps == {8}  # never transposed or flipped vertically
    col_steps = {int(round(v)) for v in values[:, 1, 16, 17] - values[:, 1, 16, 16]}
    assert col_steps == {8, -8}  # horizontal flips happen, both ways
    assert len({int(round(v)) for v in values[:, 0, 16, 16]}) > 3  # random crop offsets


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_crop_padding_bounds_the_random_shift(pad):
    rows, cols = np.mgrid[0:32, 0:32]
    image = np.stack([rows * 8, cols * 8, np.full((32, 32), 99)]).astype(np.uint8)
    source = D.Cifar10Batches(np.stack([image] * 400), np.zeros(400, np.int32), np.arange(400),
                              batch_size=400, training=True, crop_padding=pad)
    values = pixels(source[0][0])
    shifts = set(np.rint(values[:, 0, 16, 16] / 8 - 16).astype(int))
    assert shifts == set(range(-pad, pad + 1))  # every vertical offset, none beyond the pad
    if pad == 0:  # no crop: each image is the original or its mirror image, nothing else
        same = np.all(np.abs(values - image) < 1e-3, axis=(1, 2, 3))
        flipped = np.all(np.abs(values[:, :, :, ::-1] - image) < 1e-3, axis=(1, 2, 3))
        assert np.all(same | flipped) and same.any() and flipped.any()


def test_resize_to_image_size(tmp_path):
    image = np.stack([np.full((32, 32), v, np.uint8) for v in (200, 100, 50)])
    D.write_cifar10_bin(str(tmp_path / D.CIFAR10_EVAL_DIR / "test_batch.bin"), image[None], [1])
    (got, _), = batches(cifar(str(tmp_path), batch_size=1, training=False, image_size=(64, 96)))
    assert got.shape == (1, 3, 64, 96)
    np.testing.assert_allclose(pixels(got[0])[:, 10, 50], [200, 100, 50], atol=1e-3)


@pytest.mark.parametrize("case", ["no_dir", "no_files", "bad_size", "bad_label", "too_few"])
def test_cifar_bad_data_names_the_path(tmp_path, case):
    root = tmp_path / "data"
    target = root / D.CIFAR10_TRAIN_DIR / "data_batch_1.bin"
    kwargs = dict(batch_size=10, training=True)
    if case == "no_dir":
        root = tmp_path / "missing"
        target = root
    elif case == "no_files":
        (root / D.CIFAR10_TRAIN_DIR).mkdir(parents=True)
        target = root / D.CIFAR10_TRAIN_DIR
    elif case == "bad_size":
        D.write_cifar10_bin(str(target), id_images(20), [0] * 20)
        with open(target, "ab") as handle:
            handle.write(b"\0" * 5)
    elif case == "bad_label":
        D.write_cifar10_bin(str(target), id_images(20), [0] * 19 + [10])
    else:
        D.write_cifar10_bin(str(target), id_images(15), [0] * 15)
        kwargs.update(num_shards=2)
        target = target.parent
    with pytest.raises(UserError) as info:
        D.create_dataset("cifar10", str(root), **kwargs)
    message = str(info.value)
    assert str(target) in message and "\n" not in message


# ---------------------------------------------------------------- ImageNet

def make_imagenet(root, classes=("cat", "dog", "emu"), per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            rel = f"{name}/{i}.JPEG"
            size = (40 + 4 * i, 48)
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, rel))
            lines.append(f"{rel} {label}")
    return lines


def imagenet(data_dir, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("image_size", (32, 32))
    kw.setdefault("num_parallel_workers", 1)
    return D.create_dataset("imagenet2012", data_dir, num_classes=3, **kw)


def test_imagenet_folder_and_list_agree_and_eval_shards_cover_once(tmp_path):
    root = tmp_path / "inet"
    lines = make_imagenet(str(root / D.IMAGENET_EVAL_DIR))
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    assert D.find_classes(str(root / D.IMAGENET_EVAL_DIR)) == ["cat", "dog", "emu"]
    folder = batches(imagenet(str(root), training=False))
    listed = batches(imagenet(str(root / D.IMAGENET_EVAL_DIR), training=False,
                              list_file=str(tmp_path / "val.txt")))
    assert [len(label) for _, label in folder] == [4, 4, 4, 3]
    for (a, la), (b, lb) in zip(folder, listed, strict=True):
        assert a.shape[1:] == (3, 32, 32) and a.dtype == np.float32 and la.dtype == np.int32
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    whole = np.concatenate([img for img, _ in folder])
    shards = [np.concatenate([img for img, _ in batches(imagenet(str(root), training=False,
                                                                 num_shards=2, shard_id=k))])
              for k in (0, 1)]
    assert len(shards[0]) + len(shards[1]) == len(whole) == 15
    np.testing.assert_array_equal(shards[0], whole[0::2])
    np.testing.assert_array_equal(shards[1], whole[1::2])


def test_imagenet_training_batches_and_corrupt_file(tmp_path):
    root = tmp_path / "inet" / D.IMAGENET_TRAIN_DIR
    make_imagenet(str(root))
    got = batches(imagenet(str(tmp_path / "inet"), training=True, image_size=(24, 24)))
    assert [img.shape for img, _ in got] == [(4, 3, 24, 24)] * 3
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    with pytest.raises(Exception) as info:
        batches(imagenet(str(tmp_path / "inet"), training=True))
    line = D.pipeline_user_error(info.value)
    assert line is not None and str(bad) in str(line) and "\n" not in str(line)
    skipping = imagenet(str(tmp_path / "inet"), training=True, skip_corrupt=True)
    assert sum(len(label) for _, label in batches(skipping)) == 16
    assert skipping.skipped_files.paths == [str(bad)]


@pytest.mark.parametrize("case", ["no_images", "empty_class", "bad_line", "missing_file",
                                  "bad_label"])
def test_imagenet_bad_data_names_the_path(tmp_path, case):
    root = tmp_path / "inet"
    lines = make_imagenet(str(root), per_class=1)
    list_file = None
    if case == "no_images":
        root = tmp_path / "empty"
        root.mkdir()
        target = root
    elif case == "empty_class":
        (root / "zebra").mkdir()
        target = root / "zebra"
    else:
        list_file = target = tmp_path / "list.txt"
        extra = {"bad_line": "cat/0.JPEG", "missing_file": "cat/nope.JPEG 0",
                 "bad_label": "cat/0.JPEG 3"}[case]
        target.write_text("\n".join(lines + [extra]) + "\n")
        list_file = str(list_file)
    with pytest.raises(UserError) as info:
        imagenet(str(root), training=False, list_file=list_file)
    message = str(info.value)
    assert str(target) in message and "\n" not in message


# ---------------------------------------------------------------- helpers and demo data

def test_default_workers_never_exceeds_cores():
    cores = len(os.sched_getaffinity(0))
    assert 1 <= D.default_workers() <= cores
    assert D.default_workers(1000) == cores
    assert D.default_workers(1) == 1


def test_demo_data_is_a_stratified_repeatable_split(tmp_path):
    from src.demo_data import write_demo_cifar10
    n_train, n_eval = write_demo_cifar10(str(tmp_path))
    assert (n_train, n_eval) == (1438, 359)
    train_file = tmp_path / D.CIFAR10_TRAIN_DIR / "data_batch_1.bin"
    first = train_file.read_bytes()
    write_demo_cifar10(str(tmp_path))
    assert train_file.read_bytes() == first
    images, labels = D.read_cifar10_bin(str(tmp_path / D.CIFAR10_EVAL_DIR / "test_batch.bin"))
    assert images.shape == (359, 32, 32, 3)
    assert np.bincount(labels, minlength=10).min() >= 35
    assert images.max() > 200 and (images[..., 0] == images[..., 2]).all()


def test_reflect_padding_fills_the_crop_border_with_the_mirrored_image():
    """Pixel (r, c) of every image holds 4 + 2r in its first plane and 4 + 2c in the second,
    so a crop shows which image row each of its rows came from. Zero padding leaves black
    rows in some crops; reflect padding draws the same offsets and shows image row |r| above
    the top and 62 - r below the bottom instead, so no pixel is black."""
    count, pad = 32, 3
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    image = np.stack([4 + 2 * rows, 4 + 2 * cols, np.zeros((32, 32), int)]).astype(np.uint8)
    images = np.repeat(image[None], count, axis=0)

    def crops(mode):
        source = D.Cifar10Batches(images, np.zeros(count, np.int32), np.arange(count),
                                  batch_size=count, training=True, crop_padding=pad,
                                  crop_padding_mode=mode)
        return np.rint(pixels(source[0][0])).astype(int)

    zero, reflect = crops("zero"), crops("reflect")
    assert (zero[:, 0, :, 16] == 0).any(axis=1).sum() > count // 2  # most reach a border
    assert (reflect[:, :2] >= 4).all()
    for n in range(count):
        offset = (zero[n, 0, 16, 16] - 4) // 2 - 16  # the crop's top row in the image, -3..3
        wanted = np.abs(np.arange(32) + offset)
        wanted = np.where(wanted > 31, 62 - wanted, wanted)
        np.testing.assert_array_equal((reflect[n, 0, :, 16] - 4) // 2, wanted)


def test_alternate_flip_mirrors_each_image_in_every_other_epoch():
    """Image i holds i in its blue plane and values rising left to right in the others. With
    alternate_flip exactly half the images are mirrored in epoch 0, exactly the others in
    epoch 1 and the first half again in epoch 2, whatever the shard; without it, the flips of
    two epochs are independent."""
    count = 64
    cols = np.tile(np.arange(32, dtype=np.uint8) * 4, (32, 1))
    images = np.stack([np.stack([cols, cols, np.full((32, 32), i, np.uint8)])
                       for i in range(count)])

    def flipped(epoch, alternate, shard=0, shards=1):
        source = D.Cifar10Batches(images, np.zeros(count, np.int32),
                                  np.arange(count)[shard::shards],
                                  batch_size=count // shards, training=True, epoch=epoch,
                                  crop_padding=0, alternate_flip=alternate)
        values = pixels(source[0][0])
        ids = np.rint(values[:, 2, 0, 0]).astype(int)
        return dict(zip(ids, values[:, 0, 0, 1] < values[:, 0, 0, 0]))

    epochs = [flipped(epoch, True) for epoch in range(3)]
    assert sum(epochs[0].values()) == count // 2
    assert all(epochs[1][i] != epochs[0][i] and epochs[2][i] == epochs[0][i] for i in range(count))
    halves = {**flipped(1, True, 0, 2), **flipped(1, True, 1, 2)}
    assert halves == epochs[1]  # the half is of the whole set, not of each shard
    random_flips = [flipped(epoch, False) for epoch in range(2)]
    assert any(random_flips[1][i] == random_flips[0][i] for i in range(count))
