"""Mixup and CutMix of whole batches on the host, with their soft targets.

Each batch is mixed with itself in reverse order (image i with image B-1-i) by one factor
``lam ~ Beta(alpha, alpha)``: mixup blends the images, CutMix pastes a box whose area is
``1 - lam`` of the image (lam is then corrected to the box actually pasted, which the image
border may cut). The targets are ``lam * onehot(y) + (1 - lam) * onehot(reversed y)``; label
smoothing is left to the loss (nn.CrossEntropyLoss smooths probability targets as
``t * (1 - s) + s / classes``, which is linear, so it composes with the mixing exactly as
timm's mixup_target does).

Every draw comes from a generator seeded by (seed, rank, global step, stream): a resumed run
mixes exactly the batches the uninterrupted run mixed, whatever the data workers do. With
gradient accumulation the step is the batch (micro-batch) count, as for dropout masks.
"""
from dataclasses import dataclass

import numpy as np

# Keeps these draws apart from DropoutMasks', which are seeded by (seed, rank, step).
MIX_STREAM = 1


def one_hot(labels, num_classes):
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels).reshape(-1)]


def cutmix_box(height, width, lam, rng):
    """(top, bottom, left, right) of a box of about ``1 - lam`` of the image, centred at a
    uniform random point and clipped to the image."""
    ratio = np.sqrt(1.0 - lam)
    box_h, box_w = int(height * ratio), int(width * ratio)
    centre_y, centre_x = rng.integers(height), rng.integers(width)
    top, bottom = np.clip([centre_y - box_h // 2, centre_y + box_h - box_h // 2], 0, height)
    left, right = np.clip([centre_x - box_w // 2, centre_x + box_w - box_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


@dataclass(frozen=True)
class BatchMixer:
    """``mixer(images, labels, global_step) -> (images, targets)``: images float32 (B,C,H,W),
    labels int (B,), targets float32 (B, num_classes). Unmixed batches (mix_prob) get plain
    one-hot targets, so the loss always sees the same target shape."""
    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    seed: int = 1
    rank: int = 0

    def __call__(self, images, labels, global_step):
        rng = np.random.default_rng([self.seed, self.rank, global_step, MIX_STREAM])
        targets = one_hot(labels, self.num_classes)
        if rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        partner = images[::-1]
        if use_cutmix:
            images, lam = self._cutmix(images, partner, lam, rng)
        else:
            images = lam * images + (1.0 - lam) * partner  # float32 stays float32
        return images, lam * targets + (1.0 - lam) * targets[::-1]

    @staticmethod
    def _cutmix(images, partner, lam, rng):
        height, width = images.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        mixed = images.copy()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def mixer_from_config(config, rank):
    """A BatchMixer when mixup_alpha or cutmix_alpha is set, else None."""
    mixup, cutmix = config.get("mixup_alpha", 0.0), config.get("cutmix_alpha", 0.0)
    if not (mixup > 0 or cutmix > 0):
        return None
    return BatchMixer(config.num_classes, mixup, cutmix, config.get("mix_prob", 1.0),
                      config.get("mix_switch_prob", 0.5), config.seed, rank)
