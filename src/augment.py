"""Training augmentation after crop and flip: an automatic policy (RandAugment,
TrivialAugmentWide or AutoAugment, MindSpore's own vision ops) and random erasing.

ImageNet puts the MindSpore ops in its pipeline as they are. CIFAR-10 augments whole batches
in NumPy as a pure function of (seed, epoch, shard, step) so that a resumed run sees the
images the uninterrupted run saw; SeededPolicy keeps that true for the policy ops: called
eagerly on one image, a MindSpore random op draws from the dataset-wide seed of that moment,
so each image is augmented under a seed drawn from the batch's own generator, with a lock
around the (global) seed and the previous seed and Python/NumPy generator states restored
afterwards (ds.config.set_seed resets those too).
"""
import random
import threading

import numpy as np

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
# random erasing as in Zhong et al. and torchvision: area fraction and aspect ratio ranges,
# tries per image, the erased value (0 after normalisation: the dataset's mean colour)
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_RATIO = (np.log(0.3), np.log(1 / 0.3))
ERASE_TRIES = 10


def policy_op(name, dataset):
    """The MindSpore vision op of an auto_augment policy name, or None for 'none'. RandAugment
    takes 2 operations of magnitude 9 (of 31 bins, torchvision's defaults); AutoAugment takes
    the dataset's own learned policy."""
    import mindspore.dataset.vision as vision

    if name in (None, "", "none"):
        return None
    if name == "randaugment":
        return vision.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)
    if name == "trivialaugment":
        return vision.TrivialAugmentWide()
    if name == "autoaugment":
        policy = vision.AutoAugmentPolicy.CIFAR10 if dataset == "cifar10" else \
            vision.AutoAugmentPolicy.IMAGENET
        return vision.AutoAugment(policy)
    raise ValueError(f"auto_augment must be one of {', '.join(POLICIES)}, got {name!r}")


class SeededPolicy:
    """``policy(images, seeds)``: a MindSpore policy op applied to each uint8 NCHW image under
    its own seed, so the result depends on the images and seeds only."""

    _lock = threading.Lock()  # the dataset seed is process-wide

    def __init__(self, op):
        self.op = op

    def __call__(self, images, seeds):
        import mindspore.dataset as ds

        hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        with self._lock:
            saved = ds.config.get_seed(), random.getstate(), np.random.get_state()
            try:
                out = []
                for image, seed in zip(hwc, seeds):
                    ds.config.set_seed(int(seed))
                    out.append(self.op(image))
            finally:
                ds.config.set_seed(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])
        return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


def erase_rectangles(images, prob, rng):
    """Random erasing in place on a float NCHW batch: with probability prob an image gets one
    rectangle of 2-33 % of its area (aspect ratio 0.3-3.3) set to 0; a shape that does not
    fit is drawn again, up to ERASE_TRIES times."""
    count, _, height, width = images.shape
    chosen = rng.random(count) < prob
    area = height * width * rng.uniform(*ERASE_AREA, (count, ERASE_TRIES))
    ratio = np.exp(rng.uniform(*ERASE_LOG_RATIO, (count, ERASE_TRIES)))
    heights = np.rint(np.sqrt(area * ratio)).astype(int)
    widths = np.rint(np.sqrt(area / ratio)).astype(int)
    corner = rng.random((count, 2))
    for i in np.nonzero(chosen)[0]:
        fits = np.nonzero((heights[i] < height) & (widths[i] < width))[0]
        if not fits.size:
            continue
        h, w = heights[i, fits[0]], widths[i, fits[0]]
        top, left = int(corner[i, 0] * (height - h + 1)), int(corner[i, 1] * (width - w + 1))
        images[i, :, top:top + h, left:left + w] = 0
    return images
