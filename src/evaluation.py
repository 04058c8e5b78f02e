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


def evaluate(net, dataset, flip_tta=False):
    """Run `net` in inference mode over every batch of `dataset` (columns image, label);
    with flip_tta the scores are flip_tta_scores."""
    import mindspore as ms

    was_training = net.training
    net.set_train(False)
    counts = EvalCounts()
    start = time.perf_counter()
    try:
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            if flip_tta:
                scores = flip_tta_scores(lambda x: net(ms.Tensor(x)).asnumpy(), image.asnumpy())
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
