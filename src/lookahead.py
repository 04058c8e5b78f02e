"""Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back") around
the optimizer: slow weights that, every k optimizer steps, move a fraction alpha of the way
to the trained (fast) weights, which then restart from them.

The slow weights are parameters named ``lookahead.<parameter name>``, one for each trainable
parameter (BatchNorm statistics and frozen weights are not trained by the optimizer, so they
have none), so a training checkpoint carries them and a resumed run continues the same
cycle. The optimizer's state (momenta) is left as it is, as in the paper.

A training run synchronises after every k-th optimizer step of an epoch and after the last
step of every epoch (as timm does before evaluating): the network is then evaluated, saved
and averaged with its synchronised weights, and where a sync falls depends only on the
position in the run, so a resumed run syncs where the uninterrupted one does.
"""
import mindspore as ms
from mindspore import nn, ops

PREFIX = "lookahead"

_pull = ops.MultitypeFuncGraph("pull")


@_pull.register("Tensor", "Tensor", "Tensor")
def _pull_tensor(alpha, slow, fast):
    # slow += alpha * (fast - slow); fast = slow
    moved = ops.assign_add(slow, alpha * (fast - slow))
    return ops.assign(fast, moved)


class Lookahead(nn.Cell):
    """``lookahead()`` is one synchronisation: slow += alpha * (fast - slow), then fast = slow,
    for every trainable parameter of ``net``."""

    def __init__(self, net, steps, alpha):
        super().__init__(auto_prefix=False)
        if steps < 1:
            raise ValueError(f"lookahead steps must be at least 1, got {steps}")
        if not 0 < alpha <= 1:
            raise ValueError(f"lookahead alpha must be in (0, 1], got {alpha}")
        self.steps = int(steps)
        self.alpha = float(alpha)
        self.fast = ms.ParameterTuple(net.trainable_params())
        self.slow = self.fast.clone(prefix=PREFIX, init="same")
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_pull, ms.Tensor(self.alpha, ms.float32)),
                              self.slow, self.fast)

    def due(self, global_step, steps_per_epoch, accumulate_steps=1):
        """Whether the batch numbered global_step (0-based, counted in batches) ends an
        optimizer step after which the run synchronises: the k-th, 2k-th, ... optimizer step
        of its epoch, or the epoch's last one."""
        batch_in_epoch = global_step % steps_per_epoch + 1
        if batch_in_epoch % accumulate_steps:
            return False  # inside an accumulation window: no optimizer step
        step, last = batch_in_epoch // accumulate_steps, steps_per_epoch // accumulate_steps
        return step % self.steps == 0 or step == last
