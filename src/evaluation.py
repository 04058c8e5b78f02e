"""Counts top-1/top-5 hits of a network over a dataset, summed across ranks when distributed."""
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class EvalCounts:
    top1: int = 0
    top5: int = 0
    total: int = 0
    seconds: float = 0.0

    @property
    def acc(self):
        return self.top1 / self.total if self.total else 0.0

    @property
    def acc5(self):
        return self.top5 / self.total if self.total else 0.0

    @property
    def images_per_second(self):
        return self.total / self.seconds if self.seconds else 0.0


def count_hits(logits, labels):
    """(top-1 hits, top-5 hits) of one batch; top-5 is top-k with k = min(5, classes)."""
    labels = labels.reshape(-1)
    top1 = int((logits.argmax(axis=1) == labels).sum())
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top5 = int((topk == labels[:, None]).any(axis=1).sum())
    return top1, top5


def evaluate(net, dataset):
    """Run `net` in inference mode over every batch of `dataset` (columns image, label)."""
    was_training = net.training
    net.set_train(False)
    counts = EvalCounts()
    start = time.perf_counter()
    try:
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            logits = net(image).asnumpy()
            top1, top5 = count_hits(logits, label.asnumpy())
            counts.top1 += top1
            counts.top5 += top5
            counts.total += logits.shape[0]
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

    summed = ops.AllReduce()(ms.Tensor(np.array([counts.top1, counts.top5, counts.total],
                                                dtype=np.float32))).asnumpy()
    return EvalCounts(int(round(summed[0])), int(round(summed[1])), int(round(summed[2])),
                      counts.seconds)
