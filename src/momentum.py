"""Momentum SGD as training uses it: the parameter groups (weight decay on weights of rank > 1
only) and the optimizer classes, decay fused into one pass per parameter, Nesterov, or the
native kernel; build_optimizer in src/trainer.py picks one."""


def split_parameter_groups(net, freeze_features=False):
    """Trainable parameters split by (feature extractor?, weight-decayed?).

    Conv and dense weights (rank > 1) get weight decay; BatchNorm gamma/beta and biases
    (rank 1) do not. Frozen feature parameters are excluded from training altogether.
    """
    if freeze_features:
        for param in net.get_parameters():
            if param.name.startswith("features."):
                param.requires_grad = False
    groups = {}
    for param in net.trainable_params():
        key = (param.name.startswith("features."), len(param.shape) > 1)
        groups.setdefault(key, []).append(param)
    return groups


def is_batchnorm_shift(param):
    """Whether param is a BatchNorm shift (beta): every BatchNorm cell of the network, plain,
    ghost, synchronised or run by the native kernels, names it ``<cell>.beta``."""
    return param.name.endswith(".beta")


def freeze_batchnorm_scales(net):
    """Keep every BatchNorm scale (gamma) of net at its present value: no gradient, no
    optimizer state. Returns how many were frozen."""
    frozen = 0
    for param in net.get_parameters():
        if param.name.endswith(".gamma"):
            param.requires_grad = False
            frozen += 1
    return frozen


def decayed_momentum_class():
    """nn.Momentum whose weight decay is one fused ``g + wd * w`` per parameter.

    nn.Momentum adds weight decay as ``AddN(w * wd, g)``: two passes over every weight and
    a temporary, about 45 ms a step for VGG16's 34 M parameters on 2 CPU cores (the
    momentum update itself takes about as long). ``mint.add(g, w, alpha=wd)`` does it in
    one pass. Same update, same state (``moments.*``), so checkpoints are unchanged.

    nn.Momentum.construct calls decay_weight before scale_grad divides the gradients by
    ``loss_scale``, so the gradients decay_weight sees are still multiplied by the loss
    scale. As nn.Optimizer does for its own weight decay (``_preprocess_weight_decay``), the
    decay is therefore stored multiplied by loss_scale: ``(s*g + s*wd*w) / s = g + wd*w``,
    exactly so for a power-of-two s. (With a dynamic loss scale the train-step cell unscales
    the gradients itself and the optimizer is built with loss_scale 1.)"""
    from mindspore import mint, nn

    class DecayedMomentum(nn.Momentum):
        def __init__(self, params, learning_rate, momentum, loss_scale, decay_by_name):
            super().__init__(params, learning_rate=learning_rate, momentum=momentum,
                             loss_scale=loss_scale)
            self.decay_values = tuple(float(decay_by_name[p.name]) * self.loss_scale
                                      for p in self._parameters)

        def decay_weight(self, gradients):
            decayed = ()
            for decay, weight, gradient in zip(self.decay_values, self._parameters, gradients):
                if decay:
                    gradient = mint.add(gradient, weight, alpha=decay)
                decayed += (gradient,)
            return decayed

    return DecayedMomentum


def nesterov_momentum_class():
    """DecayedMomentum with the Nesterov update, PyTorch's SGD(nesterov=True) without
    dampening: ``accum = momentum * accum + g; w -= lr * (g + momentum * accum)``.

    Written out in MindSpore ops because MindSpore 2.10's CPU ApplyMomentum ignores its
    use_nesterov flag (measured: the same update with and without it); where the native
    library runs, FusedMomentum(nesterov=True) does the same update in one pass. Same state
    (``moments.*``) and the same loss-scale-aware weight decay as DecayedMomentum."""
    from mindspore import ops

    update = ops.MultitypeFuncGraph("nesterov_update")

    @update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
    def _update(momentum, lr, gradient, weight, accum):
        accum_new = ops.assign(accum, accum * momentum + gradient)
        return ops.assign(weight, weight - lr * (gradient + momentum * accum_new))

    class NesterovMomentum(decayed_momentum_class()):
        def construct(self, gradients):
            gradients = self.scale_grad(self.decay_weight(gradients))
            lr = self.get_lr()
            self.assignadd(self.global_step, self.global_step_increase_tensor)
            if self.is_group_lr:
                return self.hyper_map(ops.partial(update, self.momentum), lr, gradients,
                                      self.params, self.moments)
            return self.hyper_map(ops.partial(update, self.momentum, lr), gradients,
                                  self.params, self.moments)

    return NesterovMomentum


def fused_momentum_class():
    """The native optimizer (src/native/optimizer.py), imported when it is chosen."""
    from src.native.optimizer import FusedMomentum

    return FusedMomentum
