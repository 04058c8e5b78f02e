"""A faster CPU 2-D convolution: ``FastConv2d``, a drop-in ``nn.Conv2d``.

On CPU in graph mode, MindSpore 2.10 runs Conv2d as oneDNN im2col+GEMM on plain NCHW.
``FastConv2d`` instead calls oneDNN's direct convolutions on the blocked layouts oneDNN
prefers (``jit:avx512_core`` where the CPU has it), through MindSpore "aot" custom
operators built by ``python -m src.ops.build``: one for the forward pass and one that
computes both input and weight gradients (one reorder of the incoming gradient).

``FastConv2d`` *is* an ``nn.Conv2d`` (same arguments, same ``weight``/``bias`` parameters
and initialisation), so checkpoints are interchangeable and code that looks for
``nn.Conv2d`` cells still finds it. Where the fast path cannot be used it behaves exactly
like ``nn.Conv2d`` and logs one line saying why:

- the library is not built or does not load (no compiler or headers at install time),
- ``FAST_CONV=0`` in the environment,
- the device target is not CPU, or the mode is PyNative (the check is made when the cell
  is created: set the context first),
- a configuration the kernels do not cover: stride or dilation other than 1, groups,
  NHWC, a dtype other than float32, asymmetric padding.

ISA: ``ONEDNN_MAX_CPU_ISA`` is process-wide and read when MindSpore first runs oneDNN.
When every convolution of the network is a FastConv2d on the fast path, leave AVX-512 on
(``preferred_onednn_isa()`` returns ``"ALL"``); stock NCHW convolutions need ``"AVX2"``.
"""
import logging

import mindspore as ms
from mindspore import nn, ops

from src.ops import LIB_PATH, library_status, onednn_version, preferred_onednn_isa  # noqa: F401

__all__ = ["FastConv2d", "fast_conv_available", "fast_conv_status", "preferred_onednn_isa",
           "onednn_version"]

logger = logging.getLogger(__name__)
_reported = set()


def _report_once(reason):
    if reason not in _reported:
        _reported.add(reason)
        logger.warning("FastConv2d falls back to the stock nn.Conv2d kernel: %s", reason)


def fast_conv_status():
    """(available, reason): whether FastConv2d cells created now take the fast path."""
    usable, reason = library_status()
    if not usable:
        return False, reason
    target = ms.get_context("device_target")
    if target != "CPU":
        return False, f"device target is {target}, the fast kernels are CPU-only"
    if ms.get_context("mode") != ms.GRAPH_MODE:
        return False, "PyNative mode (the fast kernels are used in graph mode only)"
    return True, ""


def fast_conv_available():
    """True when FastConv2d cells created now use the oneDNN custom operators."""
    return fast_conv_status()[0]


def _config_reason(conv):
    """Why this cell's configuration is outside the fast kernels, or ''."""
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
            return f"padding {conv.padding} (the bottom/right side must equal top/left or exceed it by 1)"
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


class FastConv2d(nn.Conv2d):
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
            available, reason = fast_conv_status()
            if available:
                reason = _config_reason(self)
        self.uses_fast_path = not reason
        if reason:
            if fast:
                _report_once(reason)
            self.fast_conv = None
        else:
            self.fast_conv = _make_ops(_pad_totals(self))

    def construct(self, x):
        if self.uses_fast_path:
            output = self.fast_conv(x, self.weight)
        else:
            output = self.conv2d(x, self.weight)
        if self.has_bias:
            output = self.bias_add(output, self.bias)
        return output
