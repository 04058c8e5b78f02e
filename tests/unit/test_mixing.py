"""Mixup and CutMix: the mixed images and soft targets, their randomness as a function of
(seed, rank, step), and the loss on soft targets composed with label smoothing."""
import numpy as np
import pytest

from src.mixing import BatchMixer

CLASSES = 10
BATCH = 6


def batch(seed=0):
    """Images whose every pixel differs between any two images (image i is filled around
    10 * i), labels 0..BATCH-1 so that each target row names its two sources."""
    rng = np.random.default_rng(seed)
    images = (np.arange(BATCH, dtype=np.float32)[:, None, None, None] * 10
              + rng.random((BATCH, 3, 8, 12), dtype=np.float32))
    return images, np.arange(BATCH, dtype=np.int32)


def lam_of(targets, labels):
    """The weight of each image's own label (its partner is the reversed batch)."""
    return targets[np.arange(BATCH), labels]


def test_mixup_blends_each_image_with_its_partner_by_the_targets_weight():
    images, labels = batch()
    mixed, targets = BatchMixer(CLASSES, mixup_alpha=0.4, seed=3)(images, labels, 17)
    lam = lam_of(targets, labels)
    assert np.allclose(lam, lam[0]) and 0 < lam[0] < 1  # one factor for the batch
    np.testing.assert_allclose(mixed, lam[0] * images + (1 - lam[0]) * images[::-1], rtol=1e-6)
    np.testing.assert_allclose(targets[np.arange(BATCH), labels[::-1]], 1 - lam, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)
    assert mixed.dtype == np.float32 and targets.dtype == np.float32


@pytest.mark.parametrize("step", range(6))
def test_cutmix_pastes_one_box_whose_area_is_the_partners_weight(step):
    images, labels = batch()
    mixed, targets = BatchMixer(CLASSES, cutmix_alpha=1.0, seed=3)(images, labels, step)
    pasted = (mixed != images).any(axis=1)  # (B, H, W)
    assert (pasted == pasted[0]).all(), "the same box in every image"
    rows, cols = np.nonzero(pasted[0])
    if rows.size:
        box = np.zeros_like(pasted[0])
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert (box == pasted[0]).all(), "the pasted pixels form one rectangle"
        np.testing.assert_array_equal(mixed[..., box], images[::-1][..., box])
    area = pasted[0].mean()
    np.testing.assert_allclose(lam_of(targets, labels), 1 - area, rtol=1e-6)


def test_randomness_is_a_function_of_seed_rank_and_step():
    images, labels = batch()
    mixer = BatchMixer(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, seed=3, rank=0)
    first = mixer(images, labels, 5)
    again = BatchMixer(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, seed=3, rank=0)(
        images.copy(), labels, 5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other_rank = BatchMixer(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, seed=3, rank=1)
    for changed in (mixer(images, labels, 6), other_rank(images, labels, 5)):
        assert not np.array_equal(changed[1], first[1])


def test_mix_prob_and_switch_prob_choose_per_batch():
    """mix_prob 0 leaves batches alone (one-hot targets); with both on, CutMix (a box)
    against mixup (every pixel) comes up about mix_switch_prob of the time."""
    images, labels = batch()
    untouched, targets = BatchMixer(CLASSES, mixup_alpha=1.0, prob=0.0)(images, labels, 0)
    np.testing.assert_array_equal(untouched, images)
    np.testing.assert_array_equal(targets, np.eye(CLASSES, dtype=np.float32)[labels])
    mixer = BatchMixer(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.25)
    cutmix = sum(not (mixer(images, labels, step)[0] != images).all() for step in range(400))
    assert 70 <= cutmix <= 130  # 100 expected; binomial sd 8.7


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_on_soft_targets_composes_with_label_smoothing(smoothing):
    """The training loss on mixed targets = lam * smoothed CE(y) + (1 - lam) * smoothed
    CE(partner's y), worked out in NumPy (timm's mixup_target gives the same targets)."""
    import mindspore as ms
    from mindspore import nn

    from src.trainer import create_loss_cell

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    logits = np.random.default_rng(4).standard_normal((BATCH, CLASSES)).astype(np.float32)
    images, labels = batch()
    _, targets = BatchMixer(CLASSES, mixup_alpha=0.4, seed=3)(images, labels, 2)
    loss_cell = create_loss_cell(nn.Identity(), smoothing, masked_dropout=False)
    got = float(loss_cell(ms.Tensor(logits), ms.Tensor(targets)).asnumpy())
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def smoothed_ce(y):
        want = np.full((BATCH, CLASSES), smoothing / CLASSES)
        want[np.arange(BATCH), y] += 1 - smoothing
        return -(want * log_probs).sum(axis=1)

    lam = lam_of(targets, labels)
    expected = np.mean(lam * smoothed_ce(labels) + (1 - lam) * smoothed_ce(labels[::-1]))
    assert got == pytest.approx(expected, rel=1e-5)
