"""Ghost batch normalisation: in training, each run of `ghost_batch` consecutive images of a
batch is normalised with its own mean and variance instead of the whole batch's (Hoffer et
al., 2017). Smaller statistics groups add noise that regularises, at no cost in speed.

GhostBatchNorm2d is an nn.BatchNorm2d with the same parameters (gamma, beta, moving mean and
variance), so checkpoints load into the plain network and back; in inference it is
nn.BatchNorm2d. Its moving statistics are updated from the whole batch, as nn.BatchNorm2d
updates them (the batch mean and unbiased variance, with its momentum). This cell is the form
MindSpore runs anywhere (GPU, Ascend, CPU without the native kernels); on CPU graph mode the
native training chain (src/native/layers.py) computes the same in its fused BatchNorm + ReLU
kernel.
"""
from mindspore import nn, ops


class GhostBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are those of each run of `ghost_batch`
    consecutive images (a batch of at most `ghost_batch` images is one run)."""

    def __init__(self, num_features, ghost_batch, eps=1e-5, momentum=0.9):
        super().__init__(num_features, eps=eps, momentum=momentum)
        if int(ghost_batch) < 1:
            raise ValueError(f"ghost_batch must be at least 1, got {ghost_batch!r}")
        self.ghost_batch = int(ghost_batch)

    def construct(self, x):
        n, c, h, w = x.shape
        if not self.training or n <= self.ghost_batch:
            return super().construct(x)
        if n % self.ghost_batch:
            raise ValueError(f"a batch of {n} images is not a multiple of the ghost batch of "
                             f"{self.ghost_batch}")
        runs = x.reshape(n // self.ghost_batch, self.ghost_batch, c, h, w)
        mean = runs.mean(axis=(1, 3, 4), keep_dims=True)
        centred = runs - mean
        var = (centred * centred).mean(axis=(1, 3, 4), keep_dims=True)
        out = centred * ops.rsqrt(var + self.eps) * self.gamma.reshape(1, 1, c, 1, 1) \
            + self.beta.reshape(1, 1, c, 1, 1)
        # the whole batch's mean and biased variance from the runs' (equal sizes)
        batch_mean = mean.mean(axis=(0, 1, 3, 4))
        spread = mean - batch_mean.reshape(1, 1, c, 1, 1)
        batch_var = (var + spread * spread).mean(axis=(0, 1, 3, 4))
        count = n * h * w
        unbiased = batch_var * (count / (count - 1))
        keep = 1.0 - self.momentum  # nn.BatchNorm2d stores 1 - momentum as self.momentum
        new_mean = self.moving_mean * keep + ops.stop_gradient(batch_mean) * self.momentum
        new_var = self.moving_variance * keep + ops.stop_gradient(unbiased) * self.momentum
        out = ops.depend(out, ops.assign(self.moving_mean, new_mean))
        out = ops.depend(out, ops.assign(self.moving_variance, new_var))
        return out.reshape(n, c, h, w)


def batch_norm_cell(num_features, ghost_batch=0):
    """The BatchNorm of a VGG feature extractor: nn.BatchNorm2d, or GhostBatchNorm2d when
    ghost_batch > 0 (the same parameters either way)."""
    if ghost_batch:
        return GhostBatchNorm2d(num_features, ghost_batch, eps=1e-5, momentum=0.9)
    return nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.9)
