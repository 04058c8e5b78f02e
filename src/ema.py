"""Exponential moving average (EMA) of a network's weights, updated after each optimizer step.

Every parameter of the network is averaged, BatchNorm moving mean and variance included (as
timm's ModelEmaV2/V3 and mindcv do): the averaged network is then a consistent network whose
statistics describe its own averaged weights rather than the raw ones of the last step.

The averages are parameters named ``ema.<parameter name>`` beside an update counter
``ema.updates``, so a training checkpoint carries them and a resumed run continues the same
average. ``weights_only()`` gives them under the network's own names, the form eval.py,
export.py and avg_checkpoints.py load.
"""
import contextlib

import mindspore as ms
from mindspore import nn, ops

PREFIX = "ema"

_blend = ops.MultitypeFuncGraph("blend")


@_blend.register("Tensor", "Tensor", "Tensor")
def _blend_tensor(decay, average, value):
    # average -= (1 - decay) * (average - value): exact when value == average (frozen
    # weights); in place, about a quarter faster than computing and assigning a new tensor
    return ops.assign_sub(average, (1 - decay) * (average - value))


class WeightEMA(nn.Cell):
    """``ema()`` folds the network's current weights into the averages (one optimizer step):
    ``average -= (1 - d) * (average - weight)`` with d = decay, or with warmup
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so that early averages follow the
    weights instead of remembering their initialisation. ``with ema.applied():`` runs code
    (evaluation) with the averages in the network."""

    def __init__(self, net, decay, warmup=False):
        super().__init__(auto_prefix=False)
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.weights = ms.ParameterTuple(net.get_parameters())
        self.averages = self.weights.clone(prefix=PREFIX, init="same")
        self.updates = ms.Parameter(ms.Tensor(0.0, ms.float32), name=f"{PREFIX}.updates",
                                    requires_grad=False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        decay = ms.Tensor(self.decay, ms.float32)
        if self.warmup:
            decay = ops.minimum(decay, (1.0 + self.updates) / (10.0 + self.updates))
        done = self.hyper_map(ops.partial(_blend, decay), self.averages, self.weights)
        return ops.assign_add(self.updates, ops.depend(ms.Tensor(1.0, ms.float32), done))

    @contextlib.contextmanager
    def applied(self):
        """The averages in the network for the block; the raw weights back afterwards, bit
        for bit. The raw weights wait in host memory: an in-graph swap cannot hold a copy
        (a parameter read is a view of its memory, so a later write changes it too)."""
        raw = [weight.asnumpy().copy() for weight in self.weights]
        for weight, average in zip(self.weights, self.averages):
            weight.set_data(ms.Tensor(average.asnumpy().copy()))
        try:
            yield
        finally:
            for weight, value in zip(self.weights, raw):
                weight.set_data(ms.Tensor(value))

    def weights_only(self):
        """The averages under the network's parameter names, for ckpt.save_checkpoint."""
        return [{"name": weight.name, "data": average}
                for weight, average in zip(self.weights, self.averages)]
