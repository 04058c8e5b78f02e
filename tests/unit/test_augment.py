"""RandAugment / TrivialAugmentWide / AutoAugment and random erasing: CIFAR-10 batches stay a
pure function of (seed, epoch, shard, step) (so exact resume holds), the policies really
change the images, erasing draws rectangles of the documented size, and the ImageNet
pipeline runs with each of them."""
import random

import numpy as np
import pytest

from src.augment import POLICIES, SeededPolicy, erase_rectangles, policy_op
from src.dataset import create_dataset


@pytest.fixture(scope="module")
def cifar(learnable_cifar):
    return learnable_cifar(n_train=64, n_eval=16)


def epoch_batches(data, workers=1, start_step=0, **augment):
    dataset = create_dataset("cifar10", data, batch_size=16, training=True, seed=3, epoch=1,
                             num_parallel_workers=workers, start_step=start_step, **augment)
    return [image for image, _ in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]


@pytest.mark.parametrize("policy", POLICIES[1:])
def test_cifar_policy_is_a_pure_function_of_the_step(cifar, policy):
    """Two workers or one, from the start or resumed at step 2: the same batches, which
    differ from crop and flip alone in every batch (the policy ran)."""
    one = epoch_batches(cifar, workers=1, auto_augment=policy)
    two = epoch_batches(cifar, workers=2, auto_augment=policy)
    resumed = epoch_batches(cifar, workers=2, start_step=2, auto_augment=policy)
    plain = epoch_batches(cifar, workers=1)
    assert len(one) == len(two) == 4 and len(resumed) == 2
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one[2:], resumed):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, p) for a, p in zip(one, plain))


def test_policy_leaves_the_global_generators_alone():
    import mindspore.dataset as ds

    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    random.seed(11)
    np.random.seed(11)
    before = ds.config.get_seed()
    expected = (random.random(), np.random.random())
    random.seed(11)
    np.random.seed(11)
    first = SeededPolicy(policy_op("randaugment", "cifar10"))(images, [1, 2, 3, 4])
    assert (random.random(), np.random.random()) == expected
    assert ds.config.get_seed() == before
    again = SeededPolicy(policy_op("randaugment", "cifar10"))(images, [1, 2, 3, 4])
    np.testing.assert_array_equal(first, again)
    assert first.shape == images.shape and first.dtype == np.uint8


def test_erasing_draws_one_rectangle_of_the_documented_size():
    rng = np.random.default_rng(5)
    images = rng.random((200, 3, 32, 32)).astype(np.float32) + 1  # never 0 unless erased
    erase_rectangles(images, 1.0, np.random.default_rng(1))
    for image in images:
        erased = (image == 0).all(axis=0)
        rows, cols = np.nonzero(erased)
        assert rows.size, "prob 1 erases every image"
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert erased.sum() == h * w and (image[:, erased] == 0).all()
        assert 0.015 <= h * w / 1024 <= 0.36 and 0.25 <= h / w <= 4.0
    half = rng.random((200, 3, 32, 32)).astype(np.float32) + 1
    erase_rectangles(half, 0.5, np.random.default_rng(2))
    assert 70 <= int((half == 0).any(axis=(1, 2, 3)).sum()) <= 130


def test_cifar_erasing_is_a_pure_function_of_the_step(cifar):
    erased = epoch_batches(cifar, random_erasing=1.0)
    assert len(erased) == 4
    assert all((b == 0).all(axis=1).any(axis=(1, 2)).all() for b in erased)
    for a, b in zip(erased[1:], epoch_batches(cifar, start_step=1, random_erasing=1.0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", POLICIES)
def test_imagenet_pipeline_takes_the_policy_and_erasing(tmp_path, policy):
    from PIL import Image

    rng = np.random.default_rng(1)
    for index in range(4):
        folder = tmp_path / f"class_{index % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"{index}.png")
    dataset = create_dataset("imagenet2012", str(tmp_path), batch_size=2, training=True,
                             image_size=(32, 32), num_classes=2, auto_augment=policy,
                             random_erasing=0.5)
    shapes = [image.shape for image, _ in
              dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]
    assert shapes == [(2, 3, 32, 32)] * 2
