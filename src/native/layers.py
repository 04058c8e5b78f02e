"""The native cells: ``NativeConv2d``, a drop-in ``nn.Conv2d`` computed by the project's
oneDNN kernels, ``NativeFeatures``, a VGG feature extractor that runs on oneDNN's
channel-blocked layout end to end (in float32 or bfloat16), and ``NativeDense``, a drop-in
``nn.Dense`` computed in bfloat16.

On CPU in graph mode, MindSpore 2.10 runs Conv2d as oneDNN im2col+GEMM on plain NCHW.
``NativeConv2d`` instead calls oneDNN's direct convolutions on the blocked layouts oneDNN
prefers (``jit:avx512_core`` where the CPU has it), through MindSpore "aot" custom
operators built by ``python -m src.native.build``: one for the forward pass and one that
computes both input and weight gradients (one reorder of the incoming gradient).

``NativeConv2d`` *is* an ``nn.Conv2d`` (same arguments, same ``weight``/``bias`` parameters
and initialisation), so checkpoints are interchangeable and code that looks for
``nn.Conv2d`` cells still finds it. Where the native kernel cannot be used it behaves
exactly like ``nn.Conv2d`` and logs one line saying why:

- the library is not built or does not load (no compiler or headers at install time),
- ``VGG_NATIVE_KERNELS=0`` (or the old ``FAST_CONV=0``) in the environment,
- the device target is not CPU, or the mode is PyNative (the check is made when the cell
  is created: set the context first),
- a configuration the kernels do not cover: stride or dilation other than 1, groups,
  NHWC, a dtype other than float32, asymmetric padding.

``NativeFeatures`` is the ``nn.SequentialCell`` that holds a VGG feature extractor built of
NativeConv2d cells and runs it on oneDNN's channel-blocked layout end to end, with one
reorder back to NCHW at the end, so that no activation is reordered between layers.
Inference (``set_train(False)``) folds each convolution's BatchNorm (moving statistics) and
bias into one oneDNN convolution with its activation fused; training (when every convolution
has a BatchNorm and no bias) chains convolution, BatchNorm with its activation and max
pooling, each with its gradient. The activation is a ReLU (fused into the BatchNorm) or the
exact GELU (``nn.GELU(approximate=False)``, run after it), one kind for the whole chain.
Same cells, same parameter names: checkpoints are unchanged.

``NativeFeatures.set_precision("bfloat16")`` runs both chains in bfloat16: the activations
between layers (and their gradients) are bfloat16 tensors, computed by oneDNN's bfloat16
kernels; the weights stay float32 parameters, cast to bfloat16 inside each kernel, and the
weight gradients, BatchNorm statistics and moving averages stay float32. ``NativeDense`` does
the same for a dense layer (float32 tensors in and out). ``src.native.precision`` decides when.

ISA: when every convolution of the network is a NativeConv2d on the native path, oneDNN
may use AVX-512 (see ``src.native.isa``); stock NCHW convolutions need the AVX2 cap.
"""
import logging

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.native import LIB_PATH, block_size, bn_workspace_bytes, env_mode, library_status

__all__ = ["NativeConv2d", "NativeDense", "NativeFeatures", "native_conv_available",
           "native_conv_status"]
PRECISIONS = {"float32": ms.float32, "bfloat16": ms.bfloat16}

logger = logging.getLogger(__name__)
_reported = set()


def _report_once(reason):
    if reason not in _reported:
        _reported.add(reason)
        logger.warning("NativeConv2d falls back to the stock nn.Conv2d kernel: %s", reason)


def native_conv_status():
    """(available, reason): whether NativeConv2d cells created now take the native path."""
    usable, reason = library_status()
    if not usable:
        return False, reason
    target = ms.get_context("device_target")
    if target != "CPU":
        return False, f"device target is {target}, the native kernels are CPU-only"
    if ms.get_context("mode") != ms.GRAPH_MODE:
        return False, "PyNative mode (the native kernels are used in graph mode only)"
    return True, ""


def native_conv_available():
    """True when NativeConv2d cells created now use the oneDNN custom operators."""
    return native_conv_status()[0]


def _config_reason(conv):
    """Why this cell's configuration is outside the native kernels, or ''."""
    if tuple(conv.stride) != (1, 1):
        return f"stride {conv.stride} (only 1 is supported)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {conv.dilation} (only 1 is supported)"
    if conv.group != 1:
        return f"group {conv.group} (only 1 is supported)"
    if conv.data_format != "NCHW":
        return f"data_format {conv.data_format} (only NCHW is supported)"
    if conv.weight.dtype != ms.float32:
        return f"dtype {conv.weight.dtype} (only float32 is supported)"
    if conv.pad_mode == "pad" and isinstance(conv.padding, tuple):
        top, bottom, left, right = conv.padding
        # the kernels derive padding from the shapes as top = total // 2
        if bottom - top not in (0, 1) or right - left not in (0, 1):
            return (f"padding {conv.padding} (the bottom/right side must equal top/left or "
                    "exceed it by 1)")
    return ""


def _pad_totals(conv):
    """Total padding along H and W for stride 1 (None for 'same', where output = input)."""
    if conv.pad_mode == "same":
        return None
    if conv.pad_mode == "valid":
        return 0, 0
    if isinstance(conv.padding, tuple):
        top, bottom, left, right = conv.padding
        return top + bottom, left + right
    return 2 * conv.padding, 2 * conv.padding


def _make_ops(totals):
    """Forward custom op (with its bprop) for one padding configuration."""

    def fwd_shape(x, w):
        if totals is None:
            return [x[0], w[0], x[2], x[3]]
        return [x[0], w[0], x[2] + totals[0] - w[2] + 1, x[3] + totals[1] - w[3] + 1]

    bwd = ops.Custom(f"{LIB_PATH}:FastConvBwd", out_shape=lambda dy, x, w: (x, w),
                     out_dtype=lambda dy, x, w: (x, w), func_type="aot")

    def bprop(x, w, out, dout):
        dx, dw = bwd(dout, x, w)
        return dx, dw

    fwd = ops.Custom(f"{LIB_PATH}:FastConvFwd", out_shape=fwd_shape, out_dtype=lambda x, w: x,
                     func_type="aot", bprop=bprop)
    return fwd


class NativeConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by oneDNN's direct convolution on CPU in graph mode.

    Same arguments and parameters as ``mindspore.nn.Conv2d`` (``weight`` of shape
    (out_channels, in_channels, kh, kw), ``bias`` of shape (out_channels,)). The fast path
    covers stride 1, dilation 1, one group, NCHW, float32 with 'same', 'valid' or
    symmetric 'pad' padding; anything else, and any other device or mode, runs the stock
    kernel. ``self.uses_fast_path`` says which was chosen. ``fast=False`` asks for the
    stock kernel (for instance to export MINDIR/ONNX, which must not depend on the
    custom library); checkpoints are the same either way.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, pad_mode="same",
                 padding=0, dilation=1, group=1, has_bias=False, weight_init=None,
                 bias_init=None, data_format="NCHW", dtype=ms.float32, fast=True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                         padding=padding, dilation=dilation, group=group, has_bias=has_bias,
                         weight_init=weight_init, bias_init=bias_init, data_format=data_format,
                         dtype=dtype)
        if not fast:
            reason = "fast=False"
        else:
            available, reason = native_conv_status()
            if available:
                reason = _config_reason(self)
        self.uses_fast_path = not reason
        if reason:
            if fast:
                _report_once(reason)
            self.native_conv = None
        else:
            self.native_conv = _make_ops(_pad_totals(self))

    def construct(self, x):
        if self.uses_fast_path:
            output = self.native_conv(x, self.weight)
        else:
            output = self.conv2d(x, self.weight)
        if self.has_bias:
            output = self.bias_add(output, self.bias)
        return output


def _same_shape(*args):
    """The first input's shape (or dtype): out_shape/out_dtype of shape-keeping operators."""
    return args[0]


def _custom(symbol, shape, dtype=None, bprop=None):
    return ops.Custom(f"{LIB_PATH}:{symbol}", out_shape=shape, out_dtype=dtype or _same_shape,
                      func_type="aot", bprop=bprop)


def _conv_shape(x, w, *rest):
    return [x[0], w[0], x[2], x[3]]  # 'same' padding, stride 1


def _pool_shape(x):
    return [x[0], x[1], x[2] // 2, x[3] // 2]


# The activation after each convolution (+ BatchNorm) of the chains, "relu" or "gelu" (the
# exact, erf GELU), and the suffix of its kernels' symbols (FastBn + suffix + Train / Bwd).
ACTIVATION_SYMBOLS = {"relu": "Relu", "gelu": "Gelu"}


def activation_kind(cell):
    """"relu" for nn.ReLU, "gelu" for the exact nn.GELU(approximate=False), else None."""
    if isinstance(cell, nn.ReLU):
        return "relu"
    if isinstance(cell, nn.GELU) and cell.approximate == "none":
        return "gelu"
    return None


def _blocked_ops(act=ms.float32, activation="relu"):
    """Custom operators of the blocked inference chain (see NativeFeatures) with activations
    of type act, each convolution followed by `activation`: (first convolution, later
    convolutions, max pool, unblock)."""
    suffix = "" if activation == "relu" else ACTIVATION_SYMBOLS[activation]
    return (_custom(f"FastConvInferPlain{suffix}", _conv_shape, lambda *dtypes: act),
            _custom(f"FastConvInferBlocked{suffix}", _conv_shape),
            _custom("FastMaxPool2Blocked", _pool_shape),
            _unblock_op(act))


def _unblock_op(act=ms.float32):
    """Blocked (of type act) -> float32 NCHW, whose gradient is NCHW -> blocked."""
    block = _custom("FastBlock", _same_shape, lambda x: act)

    def bprop(x, out, dout):
        return (block(dout),)

    return _custom("FastUnblock", _same_shape, lambda x: ms.float32, bprop=bprop)


def _blocked_train_ops(act=ms.float32, ghost=0, activation="relu"):
    """Custom operators of the blocked training chain with activations of type act, each
    with its gradient: (first convolution, later convolutions, BatchNorm + activation, max
    pool); ghost > 0: the BatchNorm in ghost batches of that many images (src/ghost_bn.py);
    activation "relu" (fused into the BatchNorm) or "gelu"."""
    act_symbol = ACTIVATION_SYMBOLS[activation]

    def conv(blocked):
        kind = "Blocked" if blocked else "Plain"
        bwd = _custom(f"FastConvTrainBwd{kind}", lambda dy, x, w: (x, w),
                      lambda dy, x, w: (x, w))

        def bprop(x, w, out, dout):
            dx, dw = bwd(dout, x, w)
            return dx, dw

        # the first convolution takes the float32 network input and gives act
        return _custom(f"FastConvTrainFwd{kind}", _conv_shape,
                       _same_shape if blocked else lambda x, w: act, bprop=bprop)

    bn_bwd = _custom(f"FastBn{act_symbol}Bwd", lambda dz, ws, y, g, m, v, e: (y, g, g),
                     lambda dz, ws, y, g, m, v, e: (y, g, g))

    def bn_bprop(y, gamma, beta, eps, out, dout):
        _, mean, var, workspace = out
        dy, dgamma, dbeta = bn_bwd(dout[0], workspace, y, gamma, mean, var, eps)
        return dy, dgamma, dbeta, ops.zeros_like(eps)

    bf16 = act == ms.bfloat16
    bn_act = _custom(f"FastBn{act_symbol}Train",
                     lambda y, g, b, e: (y, g, g, [bn_workspace_bytes(y, bf16, ghost, activation)]),
                     lambda y, g, b, e: (y, g, g, ms.uint8), bprop=bn_bprop)

    pool_bwd = _custom("FastMaxPool2Bwd", lambda dy, ws: [dy[0], dy[1], 2 * dy[2], 2 * dy[3]],
                       lambda dy, ws: dy)

    def pool_bprop(x, out, dout):
        return (pool_bwd(dout[0], out[1]),)

    pool = _custom("FastMaxPool2Train", lambda x: (_pool_shape(x), _pool_shape(x)),
                   lambda x: (x, ms.uint8), bprop=pool_bprop)
    return conv(False), conv(True), bn_act, pool


def _inference_plan(layers):
    """((conv index, BatchNorm index or -1, pool follows), ...) when `layers` is a chain of
    [NativeConv2d on the native path, optional BatchNorm2d, activation, optional 2x2 MaxPool2d]
    groups that the blocked inference chain covers, the activation one kind (activation_kind)
    throughout; else (None, reason)."""
    block = block_size()
    if not block:
        return None, "no channel-blocked layout on this CPU"
    plan, kinds, i = [], set(), 0
    while i < len(layers):
        conv = layers[i]
        if not (isinstance(conv, NativeConv2d) and conv.uses_fast_path):
            return None, f"layer {i} is not a NativeConv2d on the native path"
        if tuple(conv.kernel_size) != (3, 3) or conv.pad_mode not in ("same", "pad") or (
                conv.pad_mode == "pad" and conv.padding not in (1, (1, 1, 1, 1))):
            return None, f"layer {i}: only 3x3 convolutions with 'same' padding are chained"
        if conv.out_channels % block:
            return None, f"layer {i}: {conv.out_channels} channels is not a multiple of {block}"
        j, bn = i + 1, -1
        if j < len(layers) and isinstance(layers[j], nn.BatchNorm2d):
            if layers[j].use_batch_statistics:
                return None, f"layer {j}: BatchNorm2d(use_batch_statistics=True)"
            bn, j = j, j + 1
        kind = activation_kind(layers[j]) if j < len(layers) else None
        if kind is None:
            return None, (f"layer {j}: a ReLU or an exact GELU (approximate=False) must follow "
                          "each convolution")
        kinds.add(kind)
        if len(kinds) > 1:
            return None, f"layer {j}: the activations differ ({' and '.join(sorted(kinds))})"
        j += 1
        pool = j < len(layers) and isinstance(layers[j], nn.MaxPool2d)
        if pool:
            cell = layers[j]
            if (cell.kernel_size, cell.stride, cell.pad_mode.upper()) != (2, 2, "VALID"):
                return None, f"layer {j}: only 2x2 stride-2 max pooling is chained"
            j += 1
        plan.append((i, bn, pool))
        i = j
    return (tuple(plan), "") if plan else (None, "no layers")


def _plan_activation(layers, plan):
    """The activation kind of a plan of _inference_plan (one for the whole chain)."""
    conv_i, bn_i, _ = plan[0]
    return activation_kind(layers[max(conv_i, bn_i) + 1])


def _ghost_batch(cell):
    """Images per ghost batch of a BatchNorm cell (0: the whole batch)."""
    return getattr(cell, "ghost_batch", 0)


def _training_chain_reason(layers, plan):
    """Why the blocked training chain cannot run `plan` (it needs a BatchNorm after every
    convolution, no convolution bias, and one ghost batch size for all), or ''."""
    for conv_i, bn_i, _ in plan:
        if bn_i < 0:
            return f"layer {conv_i} has no BatchNorm after it"
        if layers[conv_i].has_bias:
            return f"layer {conv_i} has a bias"
    if len({_ghost_batch(layers[bn_i]) for _, bn_i, _ in plan}) > 1:
        return "the BatchNorm layers have different ghost batch sizes"
    return ""


class NativeFeatures(nn.SequentialCell):
    """A VGG feature extractor (``nn.SequentialCell``) that runs on oneDNN's channel-blocked
    layout end to end, in inference and, when every convolution is followed by a BatchNorm,
    in training too.

    Training: per group, a convolution, a BatchNorm with batch statistics and its activation
    (``self.activation``: "relu", fused, or "gelu"), and 2x2 max pooling, each a custom
    operator with its gradient, all on the blocked layout; the moving statistics are updated
    as ``nn.BatchNorm2d`` updates them (momentum, unbiased variance).
    ``self.blocked_inference`` / ``self.blocked_training`` say whether each chain is used
    (``self.inference_reason`` / ``self.training_reason`` why not); otherwise the cells run
    one by one, as in a SequentialCell. ``VGG_NATIVE_KERNELS=layers`` (or the old
    ``FAST_CONV_CHAIN=0``) turns both chains off (the per-layer NativeConv2d path remains).

    Precision: float32 (``self.precision``) until ``set_precision("bfloat16")``, which runs
    the chains in bfloat16 (see the module doc); the cells run one by one stay float32."""

    def __init__(self, *args):
        super().__init__(*args)
        layers = list(self.cell_list)
        mode, setting = env_mode()
        if mode == "layers":
            self.plan, reason = None, f"disabled by {setting}"
        else:
            self.plan, reason = _inference_plan(layers)
        self.blocked_inference = self.plan is not None
        self.blocked_training = False
        self.inference_reason, self.training_reason = reason, reason
        self.precision = "float32"
        # "relu" or "gelu" after every convolution (+ BatchNorm) of the chains
        self.activation = _plan_activation(layers, self.plan) if self.plan else None
        if not self.blocked_inference:
            logger.info("blocked inference chain not used: %s", reason)
            return
        self.training_reason = _training_chain_reason(layers, self.plan)
        if self.training_reason:
            logger.info("blocked training chain not used: %s", self.training_reason)
        self.blocked_training = not self.training_reason
        # each BatchNorm's (eps, images per ghost batch or 0) for the BatchNorm + activation
        self.ghost = _ghost_batch(layers[self.plan[0][1]]) if self.blocked_training else 0
        self.bn_settings = tuple(ms.Tensor([layers[bn_i].eps, self.ghost], ms.float32)
                                 for _, bn_i, _ in self.plan if bn_i >= 0)
        if self.blocked_training:
            # (1 - momentum, momentum) of each BatchNorm's moving statistics (see _train)
            self.stat_rates = tuple(ms.Tensor([1 - layers[bn_i].momentum, layers[bn_i].momentum],
                                              ms.float32) for _, bn_i, _ in self.plan)
            self.bn_stats = _custom("FastBnStatsUpdate", lambda *shapes: [1],
                                    lambda *dtypes: ms.float32)
        self._make_ops(ms.float32)

    def _make_ops(self, act):
        (self.conv_first, self.conv_next, self.pool,
         self.unblock) = _blocked_ops(act, self.activation)
        if self.blocked_training:
            (self.train_conv_first, self.train_conv_next, self.bn_act,
             self.train_pool) = _blocked_train_ops(act, self.ghost, self.activation)

    def set_precision(self, precision):
        """Run the blocked chains in "float32" or "bfloat16" from now on (call it before the
        cell first runs). Parameters and checkpoints are the same either way."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not self.blocked_inference:
            raise ValueError(f"no blocked chain to run in {precision}: {self.inference_reason}")
        self._make_ops(PRECISIONS[precision])
        self.precision = precision

    def construct(self, x):
        if self.training:
            if self.blocked_training:
                return self._train(x)
        elif self.blocked_inference:
            return self._infer(x)
        for cell in self.cell_list:
            x = cell(x)
        return x

    def _train(self, x):
        n = 0
        for conv_i, bn_i, pool in self.plan:
            weight = self.cell_list[conv_i].weight
            if n == 0:
                y = self.train_conv_first(x, weight)
            else:
                y = self.train_conv_next(x, weight)
            bn = self.cell_list[bn_i]
            x, mean, var, workspace = self.bn_act(y, bn.gamma, bn.beta, self.bn_settings[n])
            # the activation's workspace is read by the gradient only; a dependency keeps graph
            # mode's side-effect analysis from reporting it as eliminated
            x = ops.depend(x, workspace)
            # the moving statistics, updated in place as nn.BatchNorm2d updates them
            # (momentum, unbiased variance) by one kernel rather than a dozen operators
            # and two Assigns, which VGG16-BN's graph compilation needed ~25 MiB more for
            done = self.bn_stats(bn.moving_mean, bn.moving_variance, ops.stop_gradient(mean),
                                 ops.stop_gradient(var), ops.stop_gradient(y),
                                 self.stat_rates[n])
            x = ops.depend(x, done)
            if pool:
                x, _ = self.train_pool(x)
            n += 1
        return self.unblock(x)

    def _folded(self, conv_i, bn_i):
        """Per-channel (scale, shift) with BatchNorm and the convolution bias folded in."""
        conv = self.cell_list[conv_i]
        if bn_i >= 0:
            bn = self.cell_list[bn_i]
            scale = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
            shift = bn.beta - bn.moving_mean * scale
            if conv.has_bias:
                shift = shift + conv.bias * scale
            return scale, shift
        scale = ops.ones((conv.out_channels,), ms.float32)
        if conv.has_bias:
            return scale, conv.bias
        return scale, ops.zeros((conv.out_channels,), ms.float32)

    def _infer(self, x):
        first = True
        for conv_i, bn_i, pool in self.plan:
            scale, shift = self._folded(conv_i, bn_i)
            weight = self.cell_list[conv_i].weight
            if first:
                x = self.conv_first(x, weight, scale, shift)
                first = False
            else:
                x = self.conv_next(x, weight, scale, shift)
            if pool:
                x = self.pool(x)
        return self.unblock(x)


class NativeDense(nn.Dense):
    """``nn.Dense`` computed by oneDNN's inner product in bfloat16 on CPU in graph mode.

    Same arguments and parameters as ``mindspore.nn.Dense`` (float32 ``weight`` (out, in)
    and ``bias``), float32 input and output: inside, the input, the weights and the incoming
    gradient are cast to bfloat16, and the output and every gradient are written in float32
    (``precision="float32"`` computes in float32 instead, for comparisons). Needs the native
    library (see ``native_conv_status``) and no activation.
    """

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True,
                 precision="bfloat16", dtype=ms.float32):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, dtype=dtype)
        available, reason = native_conv_status()
        if not available:
            raise ValueError(f"NativeDense needs the native kernels: {reason}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.zero_bias = ms.Tensor(np.zeros((out_channels,), np.float32))
        self.dense = _dense_op("Bf16" if precision == "bfloat16" else "F32")

    @classmethod
    def replacing(cls, dense, precision="bfloat16"):
        """A NativeDense holding `dense`'s own parameters (same objects, names and values)."""
        if dense.activation_flag:
            raise ValueError("NativeDense has no activation")
        cell = cls(dense.in_channels, dense.out_channels, weight_init="zeros",
                   bias_init="zeros", has_bias=dense.has_bias, precision=precision)
        cell.weight = dense.weight
        if dense.has_bias:
            cell.bias = dense.bias
        return cell

    def construct(self, x):
        shape = x.shape
        if len(shape) != 2:
            x = x.reshape(-1, shape[-1])
        y = self.dense(x, self.weight, self.bias if self.has_bias else self.zero_bias)
        if len(shape) != 2:
            y = y.reshape(shape[:-1] + (-1,))
        return y


def _dense_op(kind):
    """y = x w^T + b on float32 tensors, computed in bfloat16 ("Bf16") or float32 ("F32")."""
    bwd = _custom(f"FastDenseBwd{kind}", lambda dy, x, w: (x, w, [w[0]]),
                  lambda dy, x, w: (x, w, w))

    def bprop(x, w, b, out, dout):
        return bwd(dout, x, w)

    return _custom(f"FastDenseFwd{kind}", lambda x, w, b: [x[0], w[0]], lambda x, w, b: x,
                   bprop=bprop)


def use_native_dense(sequence, precision="bfloat16"):
    """Replace every ``nn.Dense`` of an ``nn.SequentialCell`` (a VGG classifier) by a
    NativeDense holding the same parameters; returns how many were replaced."""
    replaced = 0
    for index, cell in enumerate(sequence.cell_list):
        if type(cell) is nn.Dense:
            sequence[index] = NativeDense.replacing(cell, precision)
            replaced += 1
    return replaced
