"""The loss cell training differentiates: cross-entropy in float32 whatever the network's
precision, with dropout masks drawn on the host so that a resumed run draws the same ones."""
import numpy as np


def uses_dropout(net):
    """True when the network's classifier has active Dropout layers."""
    from mindspore import nn

    if not getattr(net, "include_top", False):
        return False
    return any(isinstance(cell, nn.Dropout) for cell in net.classifier.cells())


class DropoutMasks:
    """Host-made dropout masks, a pure function of (seed, rank, global step).

    MindSpore's Dropout kernels keep their random state inside the compiled graph, where a
    checkpoint cannot reach it; masks made here from the step number make a resumed run
    draw exactly the masks the uninterrupted run would have drawn. With gradient
    accumulation the step is the batch (micro-batch) count, so each batch of an
    accumulation window draws its own masks.
    """

    def __init__(self, seed, rank, p=0.5, width=4096):
        self.seed, self.rank, self.p, self.width = seed, rank, p, width

    def __call__(self, global_step, batch):
        import mindspore as ms

        rng = np.random.default_rng([self.seed, self.rank, global_step])
        keep = 1.0 - self.p
        masks = (rng.random((2, batch, self.width), dtype=np.float32) < keep) / keep
        return ms.Tensor(masks[0].astype(np.float32)), ms.Tensor(masks[1].astype(np.float32))


def create_loss_cell(net, label_smoothing, masked_dropout):
    """Cell computing the loss in float32 whatever the network's precision.

    With masked_dropout the classifier's two dropouts take the masks passed in (see
    DropoutMasks) instead of drawing their own.
    """
    import mindspore as ms
    from mindspore import nn, ops

    class NetWithLoss(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.network = net
            self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        def construct(self, image, label):
            logits = ops.cast(self.network(image), ms.float32)
            return self.loss(logits, label)

    class NetWithMaskedDropoutLoss(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.network = net
            self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        def construct(self, image, label, mask1, mask2):
            head = self.network.classifier
            x = self.network.forward_features(image)
            # head[1] and head[4]: the network's activation cells (src/vgg.py)
            x = head[1](head[0](x))
            x = x * ops.cast(mask1, x.dtype)
            x = head[4](head[3](x))
            x = x * ops.cast(mask2, x.dtype)
            logits = ops.cast(self.network.scale_logits(head[6](x)), ms.float32)
            return self.loss(logits, label)

    return NetWithMaskedDropoutLoss() if masked_dropout else NetWithLoss()
