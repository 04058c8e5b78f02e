"""no_aug_epochs: the last epochs of a run train on the images as they are (flip only, no crop,
unmixed), the earlier ones as configured."""
from types import SimpleNamespace

import numpy as np
import pytest

from model_utils.config import get_config
from src.dataset import write_cifar10_bin
from src.factory import build_dataset, plain_epoch
from src.mixing import BatchMixer
from src.trainer import Trainer

RECORDS, BATCH = 32, 8


@pytest.fixture(scope="module")
def random_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    write_cifar10_bin(str(root / "cifar-10-batches-bin" / "data_batch_1.bin"),
                      rng.integers(0, 256, (RECORDS, 3072), dtype=np.uint8),
                      rng.integers(0, 10, RECORDS))
    return root


def config_of(data_dir, *args):
    return get_config(["--config_path=cifar10_cpu_config.yaml", f"--data_dir={data_dir}",
                       f"--batch_size={BATCH}", "--num_workers=1", "--max_epoch=3", *args])


def images(config, epoch):
    dataset = build_dataset(config, training=True, epoch=epoch)
    return np.concatenate([image for image, _ in
                           dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)])


def test_the_last_epochs_are_the_plain_ones(random_cifar):
    assert [plain_epoch(config_of(random_cifar), e) for e in range(3)] == [False] * 3
    config = config_of(random_cifar, "--no_aug_epochs=2")
    assert [plain_epoch(config, e) for e in range(3)] == [False, True, True]


def test_a_plain_epoch_reads_the_images_uncropped(random_cifar):
    augmented = config_of(random_cifar, "--crop_padding=4", "--no_aug_epochs=1")
    uncropped = config_of(random_cifar, "--crop_padding=0")
    # epoch 2 (the last): the same batches as a run without the crop, flips included
    np.testing.assert_array_equal(images(augmented, 2), images(uncropped, 2))
    # epochs before it keep the crop: a 4-pixel zero border shows in some images
    assert not np.array_equal(images(augmented, 1), images(uncropped, 1))
    np.testing.assert_array_equal(images(augmented, 1),
                                  images(config_of(random_cifar, "--crop_padding=4"), 1))


def test_a_plain_epoch_is_not_mixed(random_cifar):
    import mindspore as ms

    config = config_of(random_cifar, "--mixup_alpha=1.0", "--no_aug_epochs=1")
    steps = RECORDS // BATCH
    trainer = SimpleNamespace(config=config, steps_per_epoch=steps, dropout_masks=None,
                              mixer=BatchMixer(10, mixup_alpha=1.0, seed=config.seed))
    rng = np.random.default_rng(1)
    image = ms.Tensor(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32))
    label = ms.Tensor(rng.integers(0, 10, BATCH).astype(np.int32))
    one_hot = np.eye(10, dtype=np.float32)[label.asnumpy()]
    mixed_image, mixed_target = Trainer._batch_inputs(trainer, image, label, 2 * steps - 1)
    assert not np.allclose(mixed_image.asnumpy(), image.asnumpy())  # epoch 1 still mixes
    assert not np.allclose(mixed_target.asnumpy(), one_hot)
    plain_image, plain_target = Trainer._batch_inputs(trainer, image, label, 2 * steps)
    np.testing.assert_array_equal(plain_image.asnumpy(), image.asnumpy())
    np.testing.assert_array_equal(plain_target.asnumpy(), one_hot)
