"""Patch-whitening stem (src/whitening.py): the filters whiten the patches they were computed
from, come in +/- pairs ordered by variance, fill the first convolution's leading filters and
freeze it; the images are the first training images in file order, as evaluation sees them."""
import numpy as np
import pytest

from src import dataset as D
from src import vgg
from src import whitening as W
from tests.helpers import write_learnable_cifar


def correlated_images(count=40, size=10, seed=0):
    """Images whose channels and neighbouring pixels are strongly correlated."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((count, 1, size + 1, size + 1))
    smooth = base[:, :, 1:, 1:] + base[:, :, :-1, :-1] + 0.3 * rng.standard_normal(
        (count, 3, size, size))
    mixing = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    return np.einsum("dc,nchw->ndhw", mixing, smooth).astype(np.float32)


def patches(images, kernel=3):
    windows = np.lib.stride_tricks.sliding_window_view(images, (kernel, kernel), axis=(2, 3))
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * kernel * kernel)


def test_covariance_matches_numpy_over_all_patches():
    images = correlated_images()
    mean, covariance = W.patch_covariance(images, 3)
    rows = patches(images).astype(np.float64)
    np.testing.assert_allclose(mean, rows.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(covariance, np.cov(rows.T, bias=True), rtol=1e-9, atol=1e-10)


def test_filters_whiten_the_patches_in_pairs_largest_first():
    images = correlated_images()
    filters = W.whitening_filters(images, kernel=3, eps=1e-9)
    assert filters.shape == (54, 3, 3, 3) and filters.dtype == np.float32
    np.testing.assert_array_equal(filters[1::2], -filters[0::2])
    rows = patches(images).astype(np.float64)
    responses = (rows - rows.mean(axis=0)) @ filters[0::2].reshape(27, -1).T.astype(np.float64)
    np.testing.assert_allclose(np.cov(responses.T, bias=True), np.eye(27), atol=2e-3)
    # eps damps the small-variance directions: response variance falls from the first filter on
    damped = (rows - rows.mean(axis=0)) @ W.whitening_filters(images, eps=0.05)[0::2].reshape(
        27, -1).T.astype(np.float64)
    variances = damped.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-9) and variances[0] > 0.9 > variances[-1]


def test_fewer_output_channels_keep_the_leading_filters():
    images = correlated_images()
    np.testing.assert_array_equal(W.whitening_filters(images, out_channels=10),
                                  W.whitening_filters(images)[:10])


def test_applied_to_vgg_sets_54_filters_and_freezes_the_convolution():
    net = vgg.build_vgg("vgg11", num_classes=10, batch_norm=True, image_size=(32, 32))
    before = net.features[0].weight.asnumpy().copy()
    images = correlated_images(count=20, size=12)
    assert W.apply_patch_whitening(net, images) == 54
    after = net.features[0].weight.asnumpy()
    np.testing.assert_array_equal(after[:54], W.whitening_filters(images))
    np.testing.assert_array_equal(after[54:], before[54:])
    assert not net.features[0].weight.requires_grad
    trainable = {p.name for p in net.trainable_params()}
    assert "features.0.weight" not in trainable and "features.4.weight" in trainable


def test_first_training_images_are_the_first_records_normalised(tmp_path):
    root = write_learnable_cifar(tmp_path / "c", n_train=30, n_eval=0)
    raw, _ = D._read_cifar10_chw(D.cifar10_files(root, True), 10)
    got = D.first_training_images("cifar10", root, 12)
    mean = np.array(D.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(D.CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(got, (raw[:12] / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert D.first_training_images("cifar10", root, 100).shape == (30, 3, 32, 32)
    assert D.first_training_images("cifar10", root, 4, image_size=(64, 64)).shape == (
        4, 3, 64, 64)


def test_first_training_images_of_an_imagenet_folder(tmp_path):
    from tests.unit.test_dataset import make_imagenet

    make_imagenet(str(tmp_path / "inet" / D.IMAGENET_TRAIN_DIR))
    got = D.first_training_images("imagenet2012", str(tmp_path / "inet"), 7, num_classes=3)
    assert got.shape == (7, 3, 32, 32) and got.dtype == np.float32
    first = D.first_training_images("imagenet2012", str(tmp_path / "inet"), 2, num_classes=3)
    np.testing.assert_array_equal(first, got[:2])  # file order, not a shuffled draw
    assert abs(float(got.mean())) < 3


def test_a_negative_image_count_is_refused():
    from src.errors import UserError
    from tests.helpers import quick_config

    assert quick_config().stem_whitening == 0
    with pytest.raises(UserError, match="'stem_whitening' is -1; it must not be negative"):
        quick_config("--stem_whitening=-1")


def test_resume_keeps_the_stem_whitening_the_run_was_made_with():
    from src.errors import UserError
    from src.training_checkpoints import check_same_on_resume

    def entries(text):
        return {"meta.config_yaml": text}

    made = "lr: 0.05\nstem_whitening: 500\n---\nlr: help\n"
    check_same_on_resume(entries(made), "a.ckpt", "lr: 0.1\nstem_whitening: 500\n")
    check_same_on_resume(entries("lr: 0.05\n"), "old.ckpt", "stem_whitening: 0\n")  # before
    check_same_on_resume(entries(made), "a.ckpt", "")  # a rank that writes no config
    check_same_on_resume({}, "weights.ckpt", "stem_whitening: 0\n")
    with pytest.raises(UserError, match=r"^checkpoint a.ckpt was made with stem_whitening=500, "
                                        r"this run has 0; resume with --stem_whitening=500$"):
        check_same_on_resume(entries(made), "a.ckpt", "stem_whitening: 0\n---\nx: y\n")
    with pytest.raises(UserError, match="made with stem_whitening=0, this run has 64"):
        check_same_on_resume(entries("lr: 0.05\n"), "old.ckpt", "stem_whitening: 64\n")
