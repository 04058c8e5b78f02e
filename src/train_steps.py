"""Train-step cells beyond MindSpore's own: gradient-norm clipping and gradient accumulation.

Both work on the gradients of the whole (global) batch after the loss scale is taken out:

- ClippedTrainStep (fixed loss scale s) clips the still-scaled gradients to ``s * max_norm``;
  the optimizer, built with loss_scale s, then divides by s. For a power-of-two s this is
  exactly clipping the unscaled gradients to max_norm.
- ClippedLossScaleTrainStep (dynamic loss scale) clips after TrainOneStepWithLossScaleCell
  has unscaled the gradients, and only when they are finite.
- AccumulatingTrainStep: calling it runs one micro-batch and adds its unscaled gradients to
  ``accum_grads.*``; ``apply_update()`` (a separate graph) averages them, all-reduces them
  across devices, checks for overflow (dynamic scale), clips, runs the optimizer (built with
  loss_scale 1) and zeroes the sums. The sums are parameters, so a checkpoint taken between
  micro-batches carries them and a resumed run continues the same optimizer step.

Clipping is by the global L2 norm of all gradients, as torch.nn.utils.clip_grad_norm_:
``g * max_norm / max(norm, max_norm)``.
"""
import mindspore as ms
from mindspore import nn, ops

_scale = ops.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor")
def _scale_tensor(factor, value):
    return value * ops.cast(factor, value.dtype)


_add_unscaled = ops.MultitypeFuncGraph("add_unscaled")


@_add_unscaled.register("Tensor", "Tensor", "Tensor")
def _add_unscaled_tensor(sens, total, grad):
    return ops.assign_add(total, ops.cast(grad / ops.cast(sens, grad.dtype), total.dtype))


_zero = ops.MultitypeFuncGraph("zero")


@_zero.register("Tensor", "Tensor")
def _zero_tensor(done, total):
    return ops.assign(total, ops.depend(ops.zeros_like(total), done))


def global_norm(grads):
    """L2 norm of all gradients together, in float32."""
    squares = [ops.reduce_sum(ops.square(ops.cast(g, ms.float32))) for g in grads]
    return ops.sqrt(ops.addn(squares))


def clip_by_global_norm(grads, max_norm):
    """grads scaled by ``max_norm / max(norm, max_norm)``: unchanged when the norm is within
    max_norm, else scaled down to it."""
    norm = global_norm(grads)
    factor = max_norm / ops.maximum(norm, max_norm)
    return ops.HyperMap()(ops.partial(_scale, factor), grads)


class ClippedTrainStep(nn.TrainOneStepCell):
    """nn.TrainOneStepCell (fixed loss scale `sens`) with global-norm clipping."""

    def __init__(self, network, optimizer, sens, max_norm):
        super().__init__(network, optimizer, sens=sens)
        self.max_norm = ms.Tensor(max_norm * sens, ms.float32)  # norm of the scaled grads

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = clip_by_global_norm(self.grad_reducer(grads), self.max_norm)
        return ops.depend(loss, self.optimizer(grads))


class ClippedLossScaleTrainStep(nn.TrainOneStepWithLossScaleCell):
    """nn.TrainOneStepWithLossScaleCell with global-norm clipping of the unscaled gradients."""

    def __init__(self, network, optimizer, scale_sense, max_norm):
        super().__init__(network, optimizer, scale_sense)
        self.max_norm = ms.Tensor(max_norm, ms.float32)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scaling_sens = self.scale_sense
        status = ms.Tensor([0] * 8, ms.int32)
        filled = ops.ones_like(loss) * ops.cast(scaling_sens, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, filled)
        grads = self.hyper_map(ops.partial(_scale, ops.reciprocal(scaling_sens)), grads)
        grads = self.grad_reducer(grads)
        cond = self.get_overflow_status(status, grads)
        overflow = self.process_loss_scale(cond)
        if not overflow:
            grads = clip_by_global_norm(grads, self.max_norm)
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, cond, scaling_sens


class _AccumulatedUpdate(nn.TrainOneStepWithLossScaleCell):
    """The optimizer step of AccumulatingTrainStep, a graph of its own (see the module doc)."""

    def __init__(self, network, optimizer, scale_sense, steps, max_norm, dynamic):
        super().__init__(network, optimizer, scale_sense)
        self.accumulated = self.weights.clone(prefix="accum_grads", init="zeros")
        self.inverse_steps = ms.Tensor(1.0 / steps, ms.float32)
        self.max_norm = ms.Tensor(max_norm, ms.float32)
        self.clip = max_norm > 0
        self.dynamic = dynamic

    def _step(self, grads):
        if self.clip:
            grads = clip_by_global_norm(grads, self.max_norm)
        return self.optimizer(grads)

    def construct(self):
        grads = self.hyper_map(ops.partial(_scale, self.inverse_steps), self.accumulated)
        grads = self.grad_reducer(grads)
        overflow = ms.Tensor(False)
        if self.dynamic:
            status = ms.Tensor([0] * 8, ms.int32)
            overflow = self.process_loss_scale(self.get_overflow_status(status, grads))
            if not overflow:
                overflow = ops.depend(overflow, self._step(grads))
        else:
            overflow = ops.depend(overflow, self._step(grads))
        done = self.hyper_map(ops.partial(_zero, overflow), self.accumulated)
        return ops.depend(overflow, done)


class AccumulatingTrainStep(nn.Cell):
    """Gradient accumulation: ``step(*inputs)`` adds one micro-batch, ``apply_update()`` makes
    the optimizer step and returns whether it was skipped (overflow, dynamic scale only).

    scale_sense: a DynamicLossScaleUpdateCell (dynamic) or a float (fixed loss scale); the
    optimizer must be built with loss_scale 1, as the sums hold unscaled gradients.
    """

    def __init__(self, network, optimizer, scale_sense, steps, max_norm=0.0):
        super().__init__(auto_prefix=False)
        dynamic = isinstance(scale_sense, nn.Cell)
        if not dynamic:
            scale_sense = ms.Tensor([float(scale_sense)], ms.float32)
        self.update = _AccumulatedUpdate(network, optimizer, scale_sense, steps, max_norm,
                                         dynamic)
        self.network = network
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = self.update.scale_sense
        filled = ops.ones_like(loss) * ops.cast(sens, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, filled)
        added = self.hyper_map(ops.partial(_add_unscaled, sens), self.update.accumulated,
                               grads)
        return ops.depend(loss, added)

    def apply_update(self):
        return self.update()
