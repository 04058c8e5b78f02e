"""Every native kernel against stock MindSpore, on both oneDNN code paths (AVX2, AVX-512).

tests/unit/test_native_layers.py checks NativeConv2d and the blocked chains through whole-layer
outputs and training losses, in this process (ISA capped at AVX2) and one AVX-512 case.
This file checks each kernel on its own, with its forward result and each of its gradients
measured separately, on random inputs and shapes that stress the edges: batch 1, odd
channel counts (3, 5, 17), 2x2 maps and 224x224 maps (few channels there, to stay quick):

- convolution forward / backward-data / backward-weights: ``FastConvFwd``/``FastConvBwd``
  (NativeConv2d) and the training chain's ``FastConvTrain{Fwd,Bwd}{Plain,Blocked}``;
- BatchNorm fused with ReLU (``FastBnReluTrain``/``FastBnReluBwd``): output, batch mean and
  variance, input gradient, gamma and beta gradients;
- 2x2 max pooling (``FastMaxPool2Train``/``FastMaxPool2Bwd``): output and gradient;
- the blocked training chain as a whole (``NativeFeatures`` vs the same cells in an
  ``nn.SequentialCell``): output, every parameter gradient, and the BatchNorm moving
  statistics it updates (momentum, unbiased variance, as ``nn.BatchNorm2d``);
- the fused optimizer (``FastMomentumUpdate`` through ``FusedMomentum``) vs ``nn.Momentum``,
  and its Nesterov form (``FastNesterovUpdate``) vs the same update in MindSpore ops, with
  per-group weight decay and a loss scale: parameters and momentum accumulators.

oneDNN fixes its instruction set once per process (``ONEDNN_MAX_CPU_ISA``, read when it
first runs), so each ISA runs in its own worker process: this file re-invoked as
``python tests/unit/test_native_kernels.py --worker OUT.json`` with ``ONEDNN_MAX_CPU_ISA=AVX2``
or ``=AVX512_CORE`` (oneDNN's names). AVX2 runs twice: with its own float32 activation layout
(NHWC) and with the channel-blocked one it falls back to (``VGG_NATIVE_F32_LAYOUT=blocked``),
the layout AVX-512 uses with 16-channel blocks. The worker measures and records; the tests
here assert. The worker also records which activation block and layout the library ended up
with (proof of the path taken) and how many oneDNN primitives the library built on reference
(slow) kernels during each check, which must stay 0. (The optimizer
kernel is compiled for AVX-512 and AVX2 and picks by CPU, not by the oneDNN cap.)

Errors are ``max|native - stock| / max|stock|`` over a whole tensor (float64 arithmetic).
Gradients are those of ``sum(output * r)`` for a fixed random r. The BatchNorm batch mean and
variance are compared with float64 NumPy (stock BatchNorm does not return them); BatchNorm
inputs keep every pre-ReLU value at least RELU_MARGIN from 0, since a value that rounding
puts on different sides of 0 is legitimately passed by one side's ReLU and blocked by the
other's. The chain's input gradient is not compared: its first convolution returns zeros for
the network input by design (nothing consumes it).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

# the repository (this file also runs as a script, the worker, where tests.helpers is not
# importable before this folder is on sys.path)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---------------------------------------------------------------- error bounds
# float32 has a unit roundoff of 6e-8. Both sides compute the same sums in different orders
# (oneDNN's direct/blocked kernels vs MindSpore's im2col+GEMM and its own BatchNorm), so
# they differ by rounding that grows with the length of the sums. Each bound is about 10x
# the worst error observed on this machine (AMD EPYC, AVX2 and AVX-512 paths; the worst
# case named beside it) and orders of magnitude below what a real mistake gives (a wrong
# padding, a missed channel, a dropped batch item, a transposed weight: 1e-2 to 1; a biased
# instead of an unbiased moving variance: 2e-4 at 4,096 values per channel, 0.14 at 8).
FORWARD_RTOL = 1e-5
"""Convolution output and input gradient: sums of at most C*KH*KW (576 here) products.
Observed at most 8e-7."""
WEIGHT_GRAD_RTOL = 1e-4
"""Convolution weight gradient: a reduction over N*H*W, up to 50,176 terms at 224x224,
whose rounding grows about with the square root of the count. Observed at most 8e-6."""
BN_RTOL = 2e-4
"""BatchNorm+ReLU output, batch mean and variance, input gradient. Batch statistics are
reductions over N*H*W (100,352 values per channel at 2x224x224); oneDNN's float32
accumulation is the less accurate side there: against float64, its mean is off by 8e-6
(AVX2) where stock MindSpore's output is off by 9e-7 (both recorded as info_* checks).
Observed at most 1.6e-5 (AVX2, 2x16x224x224); 1e-6 or less up to 4,096 values per channel."""
BN_PARAM_GRAD_RTOL = 4e-4
"""gamma and beta gradients: a second reduction over N*H*W on top of the statistics.
Observed at most 3.8e-5 (AVX2, 2x16x224x224)."""
CHAIN_RTOL = 3e-5
"""The blocked chain's output and the moving statistics it updates: up to three
convolution + BatchNorm layers, each BatchNorm dividing by a batch standard deviation,
compound the per-kernel errors. Observed at most 2.4e-6."""
CHAIN_GRAD_RTOL = 1e-4
"""Parameter gradients through the chain: the backward pass crosses every layer (each
BatchNorm backward subtracts batch means of products, which cancels digits) and ends in a
reduction over N*H*W. Observed at most 9.5e-6 where no ReLU flips (below)."""
CHAIN_PERTURBATION = 1e-5
"""Inside the chain the BatchNorm+ReLU inputs cannot be kept away from 0 as in the per-kernel
check: a pre-ReLU value within rounding of 0 is passed by one side and blocked by the other,
and one such flip moves a parameter gradient by a whole cotangent term. The expected number
of flips grows with the values per layer: about 0.6 at 1x16x224x224 (where one flip gave
1e-3 to 3e-2, and the 1e-4 bound failed in some runs), about 0.05 at 1x16x64x64, fewer
below. So each chain case also measures stock MindSpore against itself, its input and
parameters moved by this relative amount (about the native-vs-stock BatchNorm difference on
AVX-512, 1.5e-5), with two seeds: the gradient change that the same near-zero values
produce with no kernel difference at all."""
CHAIN_SENSITIVITY_FACTOR = 3.0
"""A chain gradient's bound is max(CHAIN_GRAD_RTOL, this x the stock sensitivity above): it
stays CHAIN_GRAD_RTOL up to 64x64 (sensitivity at most 3.3e-5, native at most 5.6e-6 there)
and widens only where stock itself is that unstable, at 224x224: sensitivity 2.0e-3 to
5.3e-3 for the data drawn now, where native happens to show no flip (at most 9.3e-6); on
other data the sensitivity was 1.1e-2 to 5.3e-2 and native 6.8e-3 to 3.1e-2 (both ISAs).
Mistakes show at every size, so the small cases and the per-kernel 224x224 checks still
catch them at the strict bounds."""
POOL_RTOL = 0.0
"""Max pooling selects (forward) and routes (backward) values without arithmetic: exact."""
OPTIMIZER_RTOL = 1e-6
"""accum = m*accum + g + wd*w; w -= lr*accum, elementwise, three steps: a few ulps from
fused multiply-adds (the native loop) vs separate operations (nn.Momentum). Observed 1.3e-7."""

AVX2_FLAGS, AVX512_FLAGS = ("avx2", "fma"), ("avx512f", "avx512bw", "avx512vl", "avx512dq")
WORKERS = {
    # name: (ONEDNN_MAX_CPU_ISA, VGG_NATIVE_F32_LAYOUT or None, CPU flags it needs, the
    # activation block and float32 activation layout the library must use)
    "AVX2": ("AVX2", None, AVX2_FLAGS, 8, "nhwc"),
    "AVX2_BLOCKED": ("AVX2", "blocked", AVX2_FLAGS, 8, "nChw8c"),
    "AVX512_CORE": ("AVX512_CORE", None, AVX512_FLAGS, 16, "nChw16c"),
}
# output pixels up to which a blocked training convolution computes its float32 weight
# gradient as one im2col + matmul (engine.cc, MatmulWeightsMaxPixels), per ISA
MATMUL_WEIGHTS_MAX_PIXELS = {"AVX2": 16, "AVX512_CORE": 64}
# the training chain's convolution kernels: blocked input?, cin, cout, input shape ('same'
# padding, as in the chain)
CHAIN_CONV_CASES = [
    (False, 3, 16, (1, 3, 224, 224)),
    (False, 5, 32, (2, 5, 2, 2)),
    (False, 17, 16, (3, 17, 9, 7)),
    (True, 16, 32, (2, 16, 2, 2)),
    (True, 32, 16, (1, 32, 2, 2)),
    (True, 64, 64, (8, 64, 4, 4)),
    (True, 16, 16, (1, 16, 224, 224)),
    (True, 48, 32, (3, 48, 11, 13)),
    (True, 48, 32, (3, 48, 7, 5)),  # non-square, within the AVX-512 im2col + matmul limit
    # non-square, within the AVX2 im2col + matmul limit; blocked inputs need whole blocks
    # of channels (16 with AVX-512), so 32 rather than 24
    (True, 32, 16, (2, 32, 3, 5)),
]


RELU_MARGIN = 1e-3  # BatchNorm+ReLU inputs keep their pre-ReLU values this far from 0


def bn_relu_float64(x, gamma, beta, eps, cotangent, ghost=0):
    """relu(batch_norm(x)) in training mode and the gradients of sum(out * cotangent), in
    float64: {forward, mean, var (biased), backward_data, backward_gamma, backward_beta}.
    ghost > 0: each run of `ghost` images normalised on its own (ghost batch normalisation);
    mean and var stay the whole batch's."""
    if 0 < ghost < len(x):
        runs = [bn_relu_float64(x[i:i + ghost], gamma, beta, eps, cotangent[i:i + ghost])
                for i in range(0, len(x), ghost)]
        whole = np.asarray(x, np.float64)
        return {"forward": np.concatenate([r["forward"] for r in runs]),
                "backward_data": np.concatenate([r["backward_data"] for r in runs]),
                "backward_gamma": sum(r["backward_gamma"] for r in runs),
                "backward_beta": sum(r["backward_beta"] for r in runs),
                "mean": whole.mean(axis=(0, 2, 3)), "var": whole.var(axis=(0, 2, 3))}
    x, r = np.asarray(x, np.float64), np.asarray(cotangent, np.float64)
    g = np.asarray(gamma, np.float64)[None, :, None, None]
    b = np.asarray(beta, np.float64)[None, :, None, None]
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv = 1 / np.sqrt(var + eps)[None, :, None, None]
    xhat = (x - mean[None, :, None, None]) * inv
    pre = g * xhat + b
    dpre = r * (pre > 0)
    dxhat = dpre * g
    dx = inv * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    return {"forward": np.maximum(pre, 0), "mean": mean, "var": var, "backward_data": dx,
            "backward_gamma": (dpre * xhat).sum(axis=axes), "backward_beta": dpre.sum(axis=axes)}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ================================================================ worker (one ISA)

def _worker(out_path):
    """Runs every check in this process (ISA fixed by the caller's environment) and writes
    {"block", "layout", "isa_env", "checks": [{kernel, case, err, reference_kernels}],
    "failures"}."""
    import traceback

    sys.path.insert(0, ROOT)
    import mindspore as ms
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(2024)  # the cells' initial weights, so that a run can be repeated
    # graph mode resolves names used in the cells defined below among this module's globals
    globals().update(ms=ms, nn=nn, ops=ops)
    from src import native
    from src.ghost_bn import GhostBatchNorm2d
    from src.momentum import nesterov_momentum_class
    from src.native import layers as fast_conv
    from src.native.optimizer import FusedMomentum
    FastConv2d, FastFeatures = fast_conv.NativeConv2d, fast_conv.NativeFeatures

    report = {"isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"), "block": native.block_size(),
              "layout": native.activation_layout("float32"), "checks": [], "failures": []}
    rng = np.random.default_rng(2024)

    def tensor(shape, scale=1.0, offset=0.0):
        return ms.Tensor((rng.standard_normal(shape) * scale + offset).astype(np.float32))

    def record(kernel, case, native_value, stock_value, refs, sensitivity=None):
        check = {"kernel": kernel, "case": case, "reference_kernels": refs,
                 "err": rel_err(native_value, stock_value)}
        if sensitivity is not None:
            check["stock_sensitivity"] = sensitivity
        report["checks"].append(check)

    def run(kernel, case, fn):
        before = native.reference_kernels()
        try:
            results = fn()
        except Exception:  # recorded, so that the other checks still run
            report["failures"].append(f"{kernel} {case}: {traceback.format_exc(limit=-3)[:3000]}")
            return
        refs = native.reference_kernels() - before
        for name, a, b, *sensitivity in results:
            record(name, case, a, b, refs, *sensitivity)

    def copy_params(dst, src_cell):
        for p_dst, p_src in zip(dst.get_parameters(), src_cell.get_parameters()):
            assert p_dst.name == p_src.name and p_dst.shape == p_src.shape
            p_dst.set_data(ms.Tensor(p_src.asnumpy()))

    def value_and_grads(forward, params, *inputs, grad_position=0):
        """forward(*inputs) -> (y, *aux); loss = sum(y * r) with a fixed random cotangent
        r; returns (y, aux, input gradients, parameter gradients) as NumPy."""
        def loss_fn(*args):
            outs = forward(*args[:-1])
            return (outs[0] * args[-1]).sum(), outs

        y_shape = forward(*inputs)[0].shape
        cotangent = ms.Tensor(np.random.default_rng(7).standard_normal(y_shape).astype(np.float32))
        grad_fn = ms.value_and_grad(loss_fn, grad_position=grad_position, weights=params,
                                    has_aux=True)
        (_, outs), grads = grad_fn(*inputs, cotangent)
        if grad_position is None:  # parameter gradients only
            dx, dws = None, grads
        elif params is None:  # input gradient only
            dx, dws = grads, ()
        else:
            dx, dws = grads
        return ([o.asnumpy() for o in outs], dx.asnumpy() if dx is not None else None,
                [g.asnumpy() for g in dws], cotangent.asnumpy())

    def single(cell):
        def forward(v):
            return (cell(v),)
        return forward

    # The blocked activations travel as NCHW-shaped tensors holding blocked bytes:
    # FastBlock / FastUnblock convert, each with the other as its gradient.
    unblock_plain = fast_conv._custom("FastUnblock", fast_conv._same_shape)

    def block_bprop(x, out, dout):
        return (unblock_plain(dout),)

    block = fast_conv._custom("FastBlock", fast_conv._same_shape, bprop=block_bprop)
    unblock = fast_conv._unblock_op()
    conv_first, conv_next, bn_relu, pool = fast_conv._blocked_train_ops()

    # ------------------------------------------------ convolution: FastConv2d
    conv_cases = [
        # cin, cout, pad_mode, padding, input shape
        (3, 5, "same", 0, (1, 3, 2, 2)),          # batch 1, odd channels, 2x2 map
        (5, 17, "pad", 1, (2, 5, 7, 9)),
        (17, 3, "same", 0, (3, 17, 2, 2)),
        (17, 17, "valid", 0, (1, 17, 5, 4)),
        (16, 16, "same", 0, (1, 16, 2, 2)),
        (64, 64, "same", 0, (2, 64, 2, 2)),       # the last VGG block at 32x32 input
        (32, 32, "pad", 1, (4, 32, 32, 32)),
        (3, 8, "same", 0, (1, 3, 224, 224)),      # first ImageNet layer, few channels
        (8, 5, "pad", 1, (1, 8, 224, 224)),
    ]
    for cin, cout, pad_mode, padding, shape in conv_cases:
        case = f"FastConv2d {cin}->{cout} {pad_mode} x{shape}"

        def conv_check(cin=cin, cout=cout, pad_mode=pad_mode, padding=padding, shape=shape):
            stock = nn.Conv2d(cin, cout, 3, pad_mode=pad_mode, padding=padding)
            fast = FastConv2d(cin, cout, 3, pad_mode=pad_mode, padding=padding)
            assert fast.uses_fast_path
            copy_params(fast, stock)
            x = tensor(shape)
            f = value_and_grads(single(fast), fast.trainable_params(), x)
            s = value_and_grads(single(stock), stock.trainable_params(), x)
            return [("conv_forward", f[0][0], s[0][0]), ("conv_backward_data", f[1], s[1]),
                    ("conv_backward_weights", f[2][0], s[2][0])]

        run("conv", case, conv_check)

    # ------------------------------------------------ convolution: training chain kernels
    for blocked, cin, cout, shape in CHAIN_CONV_CASES:
        kind = "Blocked" if blocked else "Plain"
        case = f"FastConvTrain{kind} {cin}->{cout} x{shape}"

        def chain_conv_check(blocked=blocked, cin=cin, cout=cout, shape=shape):
            stock = nn.Conv2d(cin, cout, 3, pad_mode="same")
            weight = ms.Parameter(ms.Tensor(stock.weight.asnumpy()), name="weight")
            op = conv_next if blocked else conv_first

            def native_forward(v):
                return (unblock(op(block(v) if blocked else v, weight)),)

            x = tensor(shape)
            f = value_and_grads(native_forward, [weight], x)
            s = value_and_grads(single(stock), stock.trainable_params(), x)
            checks = [("conv_forward", f[0][0], s[0][0]),
                      ("conv_backward_weights", f[2][0], s[2][0])]
            if blocked:  # the plain (network input) variant returns no input gradient
                checks.append(("conv_backward_data", f[1], s[1]))
            return checks

        run("chain conv", case, chain_conv_check)

    # ------------------------------------------------ BatchNorm + ReLU
    bn_cases = [  # input shape, eps, ghost batch (0: none; stock is then GhostBatchNorm2d)
        ((1, 16, 2, 2), 1e-5, 0),
        ((4, 32, 8, 8), 1e-5, 0),
        ((3, 48, 5, 7), 1e-3, 0),
        ((64, 64, 2, 2), 1e-5, 0),
        ((2, 16, 224, 224), 1e-5, 0),
        ((8, 32, 4, 4), 1e-5, 2),
        ((6, 48, 5, 7), 1e-3, 3),
        ((4, 16, 8, 8), 1e-5, 4),  # one ghost batch: the whole batch
    ]
    ghost_bn_relu = {}
    for shape, eps, ghost in bn_cases:
        case = f"BatchNorm+ReLU x{shape} eps {eps:g}" + (f" ghost {ghost}" if ghost else "")

        def bn_check(shape=shape, eps=eps, ghost=ghost):
            c = shape[1]
            if ghost:
                norm = GhostBatchNorm2d(c, ghost, eps=eps)
                op = ghost_bn_relu.setdefault(ghost, fast_conv._blocked_train_ops(ghost=ghost)[2])
            else:
                norm, op = nn.BatchNorm2d(c, eps=eps), bn_relu
            stock = nn.SequentialCell([norm, nn.ReLU()])
            stock.set_train(True)
            gamma_np = rng.uniform(0.5, 1.5, c).astype(np.float32)
            beta_np = rng.normal(0, 0.3, c).astype(np.float32)
            stock[0].gamma.set_data(ms.Tensor(gamma_np))
            stock[0].beta.set_data(ms.Tensor(beta_np))
            gamma = ms.Parameter(ms.Tensor(gamma_np), name="gamma")
            beta = ms.Parameter(ms.Tensor(beta_np), name="beta")
            settings = ms.Tensor([eps, ghost], ms.float32)

            def native_forward(v):
                z, mean, var, workspace = op(block(v), gamma, beta, settings)
                z = ops.depend(z, workspace)
                return unblock(z), mean, var

            # per-channel offsets and scales, so that a wrong mean or variance shows
            offsets = rng.normal(0, 2, (1, c, 1, 1))
            scales = rng.uniform(0.2, 3, (1, c, 1, 1))
            x64 = rng.standard_normal(shape) * scales + offsets
            # Keep every pre-ReLU value at least RELU_MARGIN from 0: where rounding puts a
            # value on different sides of 0 in the two implementations, its gradient is
            # passed by one and blocked by the other (a legitimate O(1) difference that
            # says nothing about the kernels; at 2x16x224x224 about one element in 10^6).
            gamma64, beta64 = gamma_np.astype(np.float64), beta_np.astype(np.float64)
            run_size = ghost or shape[0]  # images normalised together
            for _ in range(3):
                runs = x64.reshape(-1, run_size, *shape[1:])
                mu = runs.mean(axis=(1, 3, 4), keepdims=True)
                std = np.sqrt(runs.var(axis=(1, 3, 4), keepdims=True) + eps)
                pre = ((runs - mu) / std * gamma64[None, None, :, None, None]
                       + beta64[None, None, :, None, None]).reshape(shape)
                std = np.broadcast_to(std, runs.shape).reshape(shape)
                near = np.abs(pre) < RELU_MARGIN
                if not near.any():
                    break
                x64 = np.where(near, x64 + np.sign(pre + 1e-30) * 2 * RELU_MARGIN * std
                               / gamma64[None, :, None, None], x64)
            x_np = x64.astype(np.float32)
            x = ms.Tensor(x_np)
            f = value_and_grads(native_forward, [gamma, beta], x)
            s = value_and_grads(single(stock), stock.trainable_params(), x)
            exact = bn_relu_float64(x_np, gamma_np, beta_np, eps, f[3], ghost)
            checks = [("bn_relu_forward", f[0][0], s[0][0]),
                      ("bn_relu_batch_mean", f[0][1], exact["mean"]),
                      ("bn_relu_batch_variance", f[0][2], exact["var"]),
                      ("bn_relu_backward_data", f[1], s[1]),
                      ("bn_relu_backward_gamma", f[2][0], s[2][0]),
                      ("bn_relu_backward_beta", f[2][1], s[2][1])]
            # for the record: each side against float64 arithmetic
            for side, res in (("native", f), ("stock", s)):
                for name, value in (("forward", res[0][0]), ("backward_data", res[1]),
                                    ("backward_gamma", res[2][0]), ("backward_beta", res[2][1])):
                    checks.append((f"info_{side}_vs_float64_bn_relu_{name}", value, exact[name]))
            return checks

        run("bn_relu", case, bn_check)

    # ------------------------------------------------ 2x2 max pooling
    for shape in ((1, 16, 2, 2), (2, 32, 8, 8), (3, 48, 6, 10), (1, 16, 224, 224)):
        case = f"MaxPool2 x{shape}"

        def pool_check(shape=shape):
            stock = nn.MaxPool2d(kernel_size=2, stride=2)

            def native_forward(v):
                y, workspace = pool(block(v))
                return (unblock(ops.depend(y, workspace)),)

            x = tensor(shape)
            f = value_and_grads(native_forward, None, x)
            s = value_and_grads(single(stock), None, x)
            return [("maxpool_forward", f[0][0], s[0][0]), ("maxpool_backward", f[1], s[1])]

        run("maxpool", case, pool_check)

    # ------------------------------------------------ the blocked chain as a whole
    def layers(conv_cls, cin, groups, ghost=0):
        """groups: (out channels, BatchNorm momentum, pool after?) per convolution; ghost > 0:
        GhostBatchNorm2d with ghost batches of that many images."""
        out = []
        for i, (cout, momentum, pooled) in enumerate(groups):
            norm = (GhostBatchNorm2d(cout, ghost, momentum=momentum) if ghost
                    else nn.BatchNorm2d(cout, momentum=momentum))
            out += [conv_cls(cin, cout, 3, pad_mode="same" if i % 2 == 0 else "pad",
                             padding=0 if i % 2 == 0 else 1), norm, nn.ReLU()]
            if pooled:
                out.append(nn.MaxPool2d(kernel_size=2, stride=2))
            cin = cout
        return out

    chain_cases = [
        # input shape, groups, ghost batch (0: none; stock is then GhostBatchNorm2d)
        ((4, 3, 32, 32), ((16, 0.9, True), (32, 0.9, True), (48, 0.7, True)), 0),
        ((2, 5, 2, 2), ((16, 0.9, False), (32, 0.5, True)), 0),
        ((1, 17, 8, 8), ((32, 0.9, True), (16, 0.9, False), (16, 0.8, True)), 0),
        ((1, 3, 64, 64), ((16, 0.9, True), (16, 0.9, True)), 0),
        ((1, 3, 224, 224), ((16, 0.9, True), (16, 0.9, True)), 0),
        ((8, 3, 16, 16), ((16, 0.9, True), (32, 0.8, True), (32, 0.9, False)), 2),
    ]
    for shape, groups, ghost in chain_cases:
        case = f"FastFeatures x{shape} {[g[0] for g in groups]}" + (
            f" ghost {ghost}" if ghost else "")

        def chain_check(shape=shape, groups=groups, ghost=ghost):
            fast = FastFeatures(layers(FastConv2d, shape[1], groups, ghost))
            stock = nn.SequentialCell(layers(nn.Conv2d, shape[1], groups, ghost))
            assert fast.blocked_training, "the blocked training chain is not used"
            assert fast.ghost == ghost, "the chain does not run the ghost batches"
            for p in stock.get_parameters():  # everything away from its initial value
                if "moving_variance" in p.name or "gamma" in p.name:
                    p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
                elif "moving_mean" in p.name or "beta" in p.name:
                    p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
            copy_params(fast, stock)
            start = {p.name: p.asnumpy() for p in stock.get_parameters()}
            fast.set_train(True)
            stock.set_train(True)
            x = tensor(shape, 1.5, 0.5)
            f = value_and_grads(single(fast), fast.trainable_params(), x,
                                grad_position=None)
            s = value_and_grads(single(stock), stock.trainable_params(), x,
                                grad_position=None)
            sensitivity = [0.0] * len(s[2])
            for seed in (1, 2):  # stock against itself, moved by CHAIN_PERTURBATION
                noise = np.random.default_rng(seed)

                def moved(v, noise=noise):
                    return ms.Tensor((v * (1 + CHAIN_PERTURBATION * noise.uniform(
                        -1, 1, v.shape))).astype(np.float32))

                probe = nn.SequentialCell(layers(nn.Conv2d, shape[1], groups, ghost))
                for p in probe.get_parameters():
                    p.set_data(moved(start[p.name]))
                probe.set_train(True)
                m = value_and_grads(single(probe), probe.trainable_params(),
                                    moved(x.asnumpy()), grad_position=None)
                sensitivity = [max(old, rel_err(g, b)) for old, g, b in
                               zip(sensitivity, m[2], s[2])]
            checks = [("chain_forward", f[0][0], s[0][0])]
            names = [p.name for p in stock.trainable_params()]
            for name, a, b, moved_by in zip(names, f[2], s[2], sensitivity):
                kind = "conv_weight" if "weight" in name else name.rsplit(".", 1)[-1]
                checks.append((f"chain_grad_{kind}", a, b, moved_by))
            for a, b in zip(fast.get_parameters(), stock.get_parameters()):
                if "moving" in a.name:  # updated by the forward pass above
                    checks.append((f"chain_{a.name.rsplit('.', 1)[-1]}", a.asnumpy(), b.asnumpy()))
            return checks

        run("chain", case, chain_check)

    # ------------------------------------------------ fused optimizer
    shapes = {"big.weight": (300, 301), "conv.weight": (17, 5, 3, 3), "bn.gamma": (17,),
              "long.bias": (70001,)}  # > 65,536 elements: several parallel chunks
    decay = {"big.weight": 0.01, "conv.weight": 0.01, "bn.gamma": 0.0, "long.bias": 0.0}
    for loss_scale, nesterov in ((1.0, False), (8.0, False), (1.0, True), (8.0, True)):
        kernel = "FastNesterovUpdate" if nesterov else "FastMomentumUpdate"
        case = f"{kernel} loss_scale {loss_scale:g}"

        def optimizer_check(loss_scale=loss_scale, nesterov=nesterov):
            lrs = np.array([0.1, 0.05, 0.02], np.float32)
            start = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            grads = [[rng.standard_normal(s).astype(np.float32) * loss_scale
                      for s in shapes.values()] for _ in lrs]

            def params():
                return [ms.Parameter(ms.Tensor(v), name=n) for n, v in start.items()]

            class Apply(nn.Cell):
                def __init__(self, opt):
                    super().__init__()
                    self.opt = opt

                def construct(self, *gradients):
                    return self.opt(gradients)

            ours = params()
            fused = FusedMomentum(ours, ms.Tensor(lrs), 0.9, loss_scale, decay, nesterov=nesterov)
            theirs = params()
            if nesterov:  # the same update in MindSpore ops
                reference = nesterov_momentum_class()(theirs, ms.Tensor(lrs), 0.9, loss_scale,
                                                      decay)
            else:
                groups = [{"params": [p for p in theirs if decay[p.name]], "weight_decay": 0.01},
                          {"params": [p for p in theirs if not decay[p.name]],
                           "weight_decay": 0.0},
                          {"order_params": theirs}]
                reference = nn.Momentum(groups, learning_rate=ms.Tensor(lrs), momentum=0.9,
                                        loss_scale=loss_scale)
            for opt in (fused, reference):
                step = Apply(opt)
                for g in grads:
                    step(*[ms.Tensor(v) for v in g])
            checks = [("optimizer_params", a.asnumpy(), b.asnumpy()) for a, b in zip(ours, theirs)]
            checks += [("optimizer_moments", a.asnumpy(), b.asnumpy())
                       for a, b in zip(fused.moments, reference.moments)]
            return checks

        run("optimizer", case, optimizer_check)

    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)


# ================================================================ tests (this process)

BOUNDS = {
    "conv_forward": FORWARD_RTOL, "conv_backward_data": FORWARD_RTOL,
    "conv_backward_weights": WEIGHT_GRAD_RTOL,
    "bn_relu_forward": BN_RTOL, "bn_relu_batch_mean": BN_RTOL,
    "bn_relu_batch_variance": BN_RTOL, "bn_relu_backward_data": BN_RTOL,
    "bn_relu_backward_gamma": BN_PARAM_GRAD_RTOL, "bn_relu_backward_beta": BN_PARAM_GRAD_RTOL,
    "maxpool_forward": POOL_RTOL, "maxpool_backward": POOL_RTOL,
    "chain_forward": CHAIN_RTOL, "chain_moving_mean": CHAIN_RTOL,
    "chain_moving_variance": CHAIN_RTOL, "chain_grad_conv_weight": CHAIN_GRAD_RTOL,
    "chain_grad_gamma": CHAIN_GRAD_RTOL, "chain_grad_beta": CHAIN_GRAD_RTOL,
    "optimizer_params": OPTIMIZER_RTOL, "optimizer_moments": OPTIMIZER_RTOL,
}
GROUPS = {
    "convolution": ("conv_forward", "conv_backward_data", "conv_backward_weights"),
    "bn_relu": ("bn_relu_forward", "bn_relu_batch_mean", "bn_relu_batch_variance",
                "bn_relu_backward_data", "bn_relu_backward_gamma", "bn_relu_backward_beta"),
    "maxpool": ("maxpool_forward", "maxpool_backward"),
    "chain": ("chain_forward", "chain_moving_mean", "chain_moving_variance",
              "chain_grad_conv_weight", "chain_grad_gamma", "chain_grad_beta"),
    "optimizer": ("optimizer_params", "optimizer_moments"),
}


def bound(check):
    """The bound of one recorded check: BOUNDS, or for a chain gradient at least
    CHAIN_SENSITIVITY_FACTOR times stock's own sensitivity (see CHAIN_PERTURBATION)."""
    fixed = BOUNDS[check["kernel"]]
    return max(fixed, CHAIN_SENSITIVITY_FACTOR * check.get("stock_sensitivity", 0.0))


def cpu_flags():
    from src.native.precision import cpu_flags as flags  # here: workers run this file as a script

    return flags()


def test_blocked_chain_cases_hold_whole_blocks_on_every_isa():
    """Runs on any CPU: a blocked-input case must have whole activation blocks of channels for
    every worker's ISA (8 with AVX2, 16 with AVX-512), or a worker skipped on this machine
    (AVX512_CORE on an AVX2-only CPU) would refuse it elsewhere."""
    largest = max(block for *_, block, _ in WORKERS.values())
    odd = [case for case in CHAIN_CONV_CASES if case[0] and case[1] % largest]
    assert not odd, f"blocked inputs need channels in multiples of {largest}: {odd}"


@pytest.fixture(scope="module", params=sorted(WORKERS))
def measured(request, library, tmp_path_factory):
    """The report of one worker of WORKERS (one process each, shared by the tests below)."""
    name = request.param
    isa, layout, needed, _, _ = WORKERS[name]
    missing = [f for f in needed if f not in cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: no {isa} code path to test")
    out = tmp_path_factory.mktemp(f"native_{name}") / "report.json"
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, GLOG_v="3", VGG_NATIVE_VERBOSE="1")
    for var in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN",
                "VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS", "VGG_NATIVE_F32_LAYOUT"):
        env.pop(var, None)
    if layout:
        env["VGG_NATIVE_F32_LAYOUT"] = layout
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, encoding="utf-8") as handle:
        report = json.load(handle)
    report["isa"], report["worker"] = isa, name
    report["native_lines"] = [line for line in proc.stderr.splitlines()
                              if line.startswith("vgg_native: ")]
    return report


def test_small_weight_gradients_run_as_one_matmul_per_the_isa_rule(measured):
    """A blocked training convolution's weight gradient is one im2col + matmul exactly when
    its output has at most MATMUL_WEIGHTS_MAX_PIXELS[isa] pixels (the checks above cover its
    values); the first convolution, whose input is plain, never is. The matrix product reads
    NHWC activations in place and copies blocked ones to NHWC first."""
    limit = MATMUL_WEIGHTS_MAX_PIXELS[measured["isa"]]
    pattern = re.compile(r"vgg_native: training backward weights( \(im2col \+ matmul"
                         r"(, NHWC in place)?\))? f32 n\d+ c(\d+) h(\d+) w(\d+) ")
    in_place = WORKERS[measured["worker"]][4] == "nhwc"
    taken = {}  # (channels, height, width) -> {took the matmul?}
    for line in measured["native_lines"]:
        match = pattern.match(line)
        if match:
            key = tuple(int(v) for v in match.groups()[2:])
            taken.setdefault(key, set()).add(bool(match.group(1)))
            if match.group(1):
                assert bool(match.group(2)) == in_place, line
    wrong = [f"{key}: {sorted(kinds)}" for key, kinds in taken.items()
             if True in kinds and key[1] * key[2] > limit]
    assert not wrong, "matmul above the limit: " + ", ".join(wrong)
    for blocked, cin, _, (_, _, height, width) in CHAIN_CONV_CASES:
        want = blocked and height * width <= limit
        assert taken.get((cin, height, width)) == {want}, (cin, height, width, taken)


def test_worker_ran_the_requested_isa_and_layout(measured):
    assert measured["isa_env"] == measured["isa"]
    _, _, _, block, layout = WORKERS[measured["worker"]]
    assert (measured["block"], measured["layout"]) == (block, layout), \
        (f"worker {measured['worker']}: the library uses {measured['block']}-channel blocks and "
         f"{measured['layout']} float32 activations")
    assert not measured["failures"], "\n".join(measured["failures"])
    assert {c["kernel"] for c in measured["checks"] if not c["kernel"].startswith("info_")} \
        == set(BOUNDS)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_kernel_matches_stock(measured, group):
    checks = [c for c in measured["checks"] if c["kernel"] in GROUPS[group]]
    assert {c["kernel"] for c in checks} == set(GROUPS[group]), measured["failures"]
    over = [f"{c['kernel']} {c['case']}: {c['err']:.3g} > {bound(c):g}"
            for c in checks if not c["err"] <= bound(c)]
    assert not over, "\n".join(over)


def test_no_reference_kernels(measured):
    """No check made the library build a oneDNN primitive on a reference kernel."""
    slow = sorted({f"{c['case']}: {c['reference_kernels']}" for c in measured["checks"]
                   if c["reference_kernels"]})
    assert not slow, "\n".join(slow)


def worst_errors(report):
    """{kernel: worst error} of one worker report (for the record, e.g. the README)."""
    worst = {}
    for c in report["checks"]:
        worst[c["kernel"]] = max(worst.get(c["kernel"], 0.0), c["err"])
    return worst


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python tests/unit/test_native_kernels.py --worker OUT.json")
