"""Counts top-1/top-5 hits of a network over a dataset, summed across ranks when distributed."""
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalCounts:
    top1: int = 0
    top5: int = 0
    total: int = 0
    seconds: float = 0.0
    # per class: images and top-1 hits (index = class)
    class_total: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_top1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add_batch(self, logits, labels):
        """Count one batch of logits (N, classes) against its labels."""
        labels = labels.reshape(-1).astype(np.int64)
        top1, top5 = count_hits(logits, labels)
        self.top1 += top1
        self.top5 += top5
        self.total += logits.shape[0]
        classes = logits.shape[1]
        if self.class_total.size < classes:
            self.class_total = np.pad(self.class_total, (0, classes - self.class_total.size))
            self.class_top1 = np.pad(self.class_top1, (0, classes - self.class_top1.size))
        hits = top_k_indices(logits, 1)[:, 0] == labels
        self.class_total += np.bincount(labels, minlength=classes)[:classes]
        self.class_top1 += np.bincount(labels[hits], minlength=classes)[:classes]

    @property
    def acc(self):
        return self.top1 / self.total if self.total else 0.0

    @property
    def acc5(self):
        return self.top5 / self.total if self.total else 0.0

    @property
    def images_per_second(self):
        return self.total / self.seconds if self.seconds else 0.0


def top_k_indices(scores, k):
    """Indices of the k highest scores along the last axis, highest first; ties go to the
    lower index (k larger than the class count gives every class)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def topk_correct(logits, labels, k):
    """How many rows of logits (N, classes) have their label among their top_k_indices(k)."""
    top = top_k_indices(logits, k)
    return int((top == labels.reshape(-1)[:, None]).any(axis=1).sum())


def count_hits(logits, labels):
    """(top-1 hits, top-5 hits) of one batch; top-5 is top-k with k = min(5, classes)."""
    hits = top_k_indices(logits, 5) == labels.reshape(-1)[:, None]
    return int(hits[:, 0].sum()), int(hits.any(axis=1).sum())


def softmax(logits):
    """Softmax along the last axis (one image's logits, or a batch of them)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def flip_tta_scores(predict, images):
    """Flip test-time augmentation: the mean of the softmax of the images (N,C,H,W) and of
    their horizontal mirror images. Probabilities rather than logits, so that neither view
    outvotes the other by the scale of its logits; per image, so sharded evaluation adds up
    to the single-process result exactly."""
    mirrored = np.ascontiguousarray(images[..., ::-1])
    return (softmax(predict(images)) + softmax(predict(mirrored))) / 2


def shifted_views(images, shift):
    """The images (N,C,H,W) moved by `shift` pixels down and right, then up and left, the
    uncovered border filled by reflection (what a random crop of a reflect-padded image
    would show)."""
    height, width = images.shape[-2:]
    if not 0 < shift < min(height, width):
        raise ValueError(f"eval_tta_shift must be between 1 and {min(height, width) - 1} for "
                         f"{height}x{width} images, got {shift}")
    padded = np.pad(images, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="reflect")
    far = 2 * shift
    return (np.ascontiguousarray(padded[..., :height, :width]),
            np.ascontiguousarray(padded[..., far:far + height, far:far + width]))


def tta_scores(predict, images, flip=False, shift=0):
    """Test-time augmentation over the images (N,C,H,W): with shift > 0, half the weight on
    the images as they are and a quarter on each of shifted_views; with flip, each view is
    flip_tta_scores (the mean over it and its mirror image), otherwise its softmax. Neither:
    the plain logits."""
    if not flip and not shift:
        return predict(images)

    def view(x):
        return flip_tta_scores(predict, x) if flip else softmax(predict(x))

    if not shift:
        return view(images)
    ahead, behind = shifted_views(images, shift)
    return 0.5 * view(images) + 0.25 * view(ahead) + 0.25 * view(behind)


def tta_options(config, during_training=False):
    """evaluate()'s test-time augmentation arguments from the config (eval_flip_tta and
    eval_tta_shift); during_training (the evaluations after epochs) leaves out the shifted
    views when eval_shift_in_training is off."""
    shift = int(config.get("eval_tta_shift", 0))
    if during_training and not config.get("eval_shift_in_training", True):
        shift = 0
    return {"flip_tta": bool(config.get("eval_flip_tta", False)), "tta_shift": shift}


def evaluate(net, dataset, flip_tta=False, tta_shift=0):
    """Run `net` in inference mode over every batch of `dataset` (columns image, label);
    with flip_tta or tta_shift the scores are tta_scores."""
    import mindspore as ms

    was_training = net.training
    net.set_train(False)
    counts = EvalCounts()
    start = time.perf_counter()
    try:
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            if flip_tta or tta_shift:
                scores = tta_scores(lambda x: net(ms.Tensor(x)).asnumpy(), image.asnumpy(),
                                    flip_tta, tta_shift)
            else:
                scores = net(image).asnumpy()
            counts.add_batch(scores, label.asnumpy())
    finally:
        net.set_train(was_training)
    counts.seconds = time.perf_counter() - start
    return counts


def allreduce_counts(counts, group_size):
    """Sum counts over all ranks so every rank reports the job's exact totals."""
    if group_size <= 1:
        return counts
    import mindspore as ms
    from mindspore import ops

    local = np.concatenate([[counts.top1, counts.top5, counts.total], counts.class_total,
                            counts.class_top1]).astype(np.float32)
    summed = np.rint(ops.AllReduce()(ms.Tensor(local)).asnumpy()).astype(np.int64)
    classes = counts.class_total.size
    return EvalCounts(int(summed[0]), int(summed[1]), int(summed[2]), counts.seconds,
                      summed[3:3 + classes], summed[3 + classes:])
