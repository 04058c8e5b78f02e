"""The native kernels in bfloat16 against the same kernels in float32.

On a CPU whose oneDNN runs bfloat16 instructions (AVX512-BF16 or AMX-BF16), a worker process
(this file re-invoked as ``python tests/test_bf16_kernels.py --worker OUT.json``, oneDNN
uncapped) runs every kernel of the blocked chain and the dense layer in bfloat16 and in
float32 on the same inputs and records the errors; the tests here assert them. On a CPU
without those instructions the same worker records that, and the tests assert the float32
fallback instead (``cpu_precision=auto`` gives float32 with its one-line reason). The fallback
is also checked on this CPU with oneDNN capped by ``ONEDNN_MAX_CPU_ISA`` (AVX2, AVX512_CORE).

Errors are ``max|bf16 - f32| / max|f32|`` over a whole tensor (float64 arithmetic), except
for whole chains (see CHAIN_*). Two kinds of inputs:

- "exact": inputs, weights and incoming gradients rounded to bfloat16 beforehand, so both
  precisions multiply the same numbers and the difference is the kernel's own arithmetic:
  the bfloat16 kernels accumulate in float32 and round their bfloat16 outputs once. This
  isolates a wrong layout, channel or reorder in the bfloat16 path with a tight bound.
- "float32": the float32 inputs a user has, rounded by the kernels themselves (inputs and
  weights each to 8 significant bits): the difference a user sees, bounded loosely.

Gradients are those of ``sum(output * r)`` for a fixed random r. BatchNorm inputs keep their
pre-ReLU values away from 0 (as in tests/test_native_kernels.py).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATMUL_WEIGHTS_VAR = "VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS"

# ---------------------------------------------------------------- error bounds
# bfloat16 keeps 8 significant bits: one rounding to nearest is off by at most u = 2^-8 =
# 3.9e-3 of the value. Each bound is about 2x the theory or about 3x the worst error observed on
# the development machine (AMD EPYC, avx512_core_bf16; worst case named), whichever is larger,
# and far below what a real mistake gives (a wrong channel, tap or layout: 0.1 to 1).
ROUNDED_OUTPUT_RTOL = 4.2e-3
"""exact inputs, bfloat16 outputs (convolution forward and backward data, BatchNorm+ReLU
output and input gradient): one rounding to 8 significant bits, off by at most u = 2^-8 =
3.9e-3 of the value (just above a power of two), plus float32 summation-order noise.
Observed at most 3.2e-3 (BatchNorm+ReLU output)."""
FLOAT32_OUTPUT_RTOL = 1e-4
"""exact inputs, float32 outputs (convolution and dense weight gradients, dense output and
input gradient, BatchNorm batch mean, variance, gamma and beta gradients): products of
bfloat16 numbers are exact in float32, so only the summation order differs, as between two
float32 kernels (tests/test_native_kernels.py: 1e-4). Observed at most 6e-7; BatchNorm's
statistics and parameter gradients came out identical."""
POOL_RTOL = 0.0
"""max pooling selects and routes values: exact in any precision."""
USER_INPUT_RTOL = 2e-2
"""float32 inputs: both factors of every product rounded (each off by up to 2^-8), then
bfloat16 outputs rounded once more; relative to the largest output value. Observed at most
5.7e-3 (convolution forward, 5 input channels: short sums average little of it out)."""
CHAIN_RTOL = 3e-2
"""Whole blocked training chain (three conv + BatchNorm+ReLU + pool groups), float32 inputs
and parameters: relative L2 error ``|bf16 - f32| / |f32|`` of the output and of the moving
statistics it updates. Observed at most 7e-3 (output)."""
CHAIN_SENSITIVITY_FACTOR = 2.0
"""The chain's parameter gradients: where rounding moves a value across a ReLU's 0, or makes
two values of a pooling window equal (bfloat16 has 256 values per octave), that element's
gradient changes by O(1), so on a small batch the gradients move by several per cent in L2
under any rounding-sized change. The reference is the float32 chain itself with its inputs
and parameters moved by one bfloat16 unit roundoff (relative 2^-8, two draws): the bfloat16
gradients must stay within this factor of that (and within CHAIN_RTOL where it is smaller).
Observed: bfloat16 0.06 to 0.12 against a float32 sensitivity of 0.07 to 0.13."""
INFERENCE_RTOL = 2e-2
"""Blocked inference chain (BatchNorm folded into bfloat16 weights, ReLU fused), three
groups, float32 inputs, max-norm: rounding compounds over the layers. Observed at most
5.3e-3."""

CHAIN_GROUPS = ((16, True), (32, True), (48, True))  # (channels, pool after?) per group
BF16_ISA_WORDS = ("bf16", "amx", "avx10", "fp16")  # oneDNN ISA names with bfloat16 arithmetic
CAPPED_ISAS = {"AVX2": ("avx2", "fma"), "AVX512_CORE": ("avx512f", "avx512bw", "avx512vl",
                                                         "avx512dq")}


def to_bf16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ================================================================ worker

def _worker(out_path):
    sys.path.insert(0, ROOT)
    import logging

    import mindspore as ms
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    from src import native
    from src.native import layers
    from src.native.precision import apply_cpu_precision

    report = {"isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"), "bf16_isa": native.bf16_isa(),
              "checks": [], "failures": []}
    if not report["bf16_isa"]:
        report["fallback"] = _fallback_check(ms, nn, layers, apply_cpu_precision, logging)
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        return
    checks = _KernelChecks(ms, nn, ops, layers, np.random.default_rng(2025))
    for name, fn in checks.all():
        before = native.reference_kernels()
        try:
            for kernel, inputs, value, err, *reference in fn():
                report["checks"].append({"kernel": kernel, "inputs": inputs, "case": name,
                                         "err": err, "value_max": value,
                                         "reference": reference[0] if reference else 0.0})
        except Exception:  # recorded, so that the other checks still run
            import traceback
            report["failures"].append(f"{name}: {traceback.format_exc(limit=-4)[:3000]}")
        report["checks"].append({"kernel": "reference_kernels", "case": name, "inputs": "",
                                 "err": float(native.reference_kernels() - before),
                                 "value_max": 0.0})
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)


def _fallback_check(ms, nn, layers, apply_cpu_precision, logging):
    """No bfloat16 here: auto and bfloat16 give float32 with one line, and the network runs."""
    from src import vgg

    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), conv_cell=layers.NativeConv2d,
                       features_cell=layers.NativeFeatures)

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append((record.levelname, record.getMessage()))

    handler = Lines()
    logging.getLogger("vgg").addHandler(handler)
    logging.getLogger("vgg").setLevel(logging.INFO)
    chosen = {requested: apply_cpu_precision(net, requested)
              for requested in ("auto", "bfloat16")}
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    net.set_train(False)
    y = net(x).asnumpy()
    return {"chosen": chosen, "lines": handler.lines, "features_precision": net.features.precision,
            "dense_types": sorted({type(c).__name__ for c in net.classifier.cell_list}),
            "finite": bool(np.isfinite(y).all())}


class _KernelChecks:
    """Each check returns [(kernel, inputs kind, max |f32 value|, error)]."""

    def __init__(self, ms, nn, ops, layers, rng):
        self.ms, self.nn, self.ops, self.layers, self.rng = ms, nn, ops, layers, rng
        self.acts = {"float32": ms.float32, "bfloat16": ms.bfloat16}
        self.ops_by = {}
        for name, act in self.acts.items():
            self.ops_by[name] = {"block": _block_op(ms, layers, act),
                                 "unblock": layers._unblock_op(act),
                                 "train": layers._blocked_train_ops(act),
                                 "infer": layers._blocked_ops(act)}

    def all(self):
        checks = []
        for blocked, cin, cout, shape in ((False, 3, 16, (2, 3, 16, 16)),
                                          (False, 5, 32, (2, 5, 2, 2)),
                                          (True, 16, 32, (2, 16, 8, 8)),
                                          (True, 48, 32, (3, 48, 11, 13)),
                                          (True, 48, 32, (3, 48, 7, 5)),
                                          (True, 64, 64, (8, 64, 4, 4)),
                                          (True, 512, 512, (4, 512, 2, 2))):
            for kind in ("exact", "float32"):
                checks.append((f"conv {'blocked' if blocked else 'plain'} {cin}->{cout} "
                               f"x{shape} {kind}",
                               lambda b=blocked, i=cin, o=cout, s=shape, k=kind:
                               self.conv(b, i, o, s, k)))
        for shape in ((1, 16, 2, 2), (4, 32, 8, 8), (64, 64, 2, 2), (2, 16, 32, 32)):
            checks.append((f"bn_relu x{shape}", lambda s=shape: self.bn_relu(s)))
        for shape in ((1, 16, 2, 2), (3, 48, 6, 10)):
            checks.append((f"maxpool x{shape}", lambda s=shape: self.pool(s)))
        # (3, 1100, 2048): a bfloat16 weight over 4 MiB, run in chunks of rows (1904 + 144)
        for n, k, o in ((5, 64, 10), (64, 512, 4096), (3, 17, 33), (3, 1100, 2048)):
            for kind in ("exact", "float32"):
                checks.append((f"dense {n}x{k}->{o} {kind}",
                               lambda n=n, k=k, o=o, kind=kind: self.dense(n, k, o, kind)))
        checks.append(("chain training x(4,3,32,32)", self.chain))
        checks.append(("chain inference x(3,3,16,16)", self.inference))
        return checks

    # ------------------------------------------------------------ helpers
    def data(self, shape, kind, scale=1.0, offset=0.0):
        values = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return to_bf16(values) if kind == "exact" else values

    def grads(self, forward, x, params, cotangent, wrt_x=True):
        """(outputs, dx or None, parameter gradients) of sum(forward(x)[0] * cotangent)."""
        ms = self.ms

        def loss(v, r):
            outs = forward(v)
            return (outs[0] * r).sum(), outs

        fn = ms.value_and_grad(loss, grad_position=0 if wrt_x else None, weights=params,
                               has_aux=True)
        (_, outs), grads = fn(ms.Tensor(x), ms.Tensor(cotangent))
        if params is None:  # input gradient only
            dx, dws = grads.asnumpy(), ()
        elif wrt_x:
            dx, dws = grads
            dx = dx.asnumpy()
        else:
            dx, dws = None, grads
        return [o.asnumpy() for o in outs], dx, [g.asnumpy() for g in dws]

    @staticmethod
    def compare(kernel, kind, bf16_value, f32_value, measure=rel_err):
        return (kernel, kind, float(np.abs(f32_value).max()), measure(bf16_value, f32_value))

    # ------------------------------------------------------------ kernels
    def conv(self, blocked, cin, cout, shape, kind):
        ms = self.ms
        x = self.data(shape, kind)
        w_np = self.data((cout, cin, 3, 3), kind, scale=(2.0 / (9 * cin)) ** 0.5)
        r = self.data((shape[0], cout, shape[2], shape[3]), "exact")
        results = {}
        for name in self.acts:
            o = self.ops_by[name]
            weight = ms.Parameter(ms.Tensor(w_np), name="weight")
            forward = _conv_forward(o["block"], o["train"][1 if blocked else 0], o["unblock"],
                                    weight, blocked)
            results[name] = self.grads(forward, x, [weight], r, wrt_x=blocked)
        b, f = results["bfloat16"], results["float32"]
        out = [self.compare("conv_forward", kind, b[0][0], f[0][0]),
               self.compare("conv_backward_weights", kind, b[2][0], f[2][0])]
        if blocked:
            out.append(self.compare("conv_backward_data", kind, b[1], f[1]))
        return out

    def bn_relu(self, shape):
        ms = self.ms
        c, eps = shape[1], 1e-5
        gamma_np = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta_np = self.rng.normal(0, 0.3, c).astype(np.float32)
        x = to_bf16(_away_from_relu_zero(
            self.rng.standard_normal(shape) * self.rng.uniform(0.2, 3, (1, c, 1, 1))
            + self.rng.normal(0, 2, (1, c, 1, 1)), gamma_np, beta_np, eps))
        r = self.data(shape, "exact")
        results = {}
        for name in self.acts:
            o = self.ops_by[name]
            gamma = ms.Parameter(ms.Tensor(gamma_np), name="gamma")
            beta = ms.Parameter(ms.Tensor(beta_np), name="beta")
            eps_t = ms.Tensor([eps, 0.0], ms.float32)  # (eps, no ghost batches)
            forward = _bn_forward(o["block"], o["train"][2], o["unblock"], gamma, beta, eps_t)
            results[name] = self.grads(forward, x, [gamma, beta], r)
        b, f = results["bfloat16"], results["float32"]
        return [self.compare("bn_relu_forward", "exact", b[0][0], f[0][0]),
                self.compare("bn_relu_batch_mean", "exact", b[0][1], f[0][1]),
                self.compare("bn_relu_batch_variance", "exact", b[0][2], f[0][2]),
                self.compare("bn_relu_backward_data", "exact", b[1], f[1]),
                self.compare("bn_relu_backward_gamma", "exact", b[2][0], f[2][0]),
                self.compare("bn_relu_backward_beta", "exact", b[2][1], f[2][1])]

    def pool(self, shape):
        x = self.data(shape, "exact")
        r = self.data((shape[0], shape[1], shape[2] // 2, shape[3] // 2), "exact")
        results = {}
        for name in self.acts:
            o = self.ops_by[name]
            results[name] = self.grads(_pool_forward(o["block"], o["train"][3], o["unblock"]),
                                       x, None, r)
        b, f = results["bfloat16"], results["float32"]
        return [self.compare("maxpool_forward", "exact", b[0][0], f[0][0]),
                self.compare("maxpool_backward", "exact", b[1], f[1])]

    def dense(self, n, k, o, kind):
        ms = self.ms
        x = self.data((n, k), kind)
        w_np = self.data((o, k), kind, scale=k ** -0.5)
        b_np = self.data((o,), kind, scale=0.1)
        r = self.data((n, o), "exact")
        results = {}
        for name in self.acts:
            cell = self.layers.NativeDense(k, o, weight_init=ms.Tensor(w_np),
                                           bias_init=ms.Tensor(b_np), precision=name)
            results[name] = self.grads(_cell_forward(cell), x, cell.trainable_params(), r)
        b, f = results["bfloat16"], results["float32"]
        return [self.compare("dense_forward", kind, b[0][0], f[0][0]),
                self.compare("dense_backward_data", kind, b[1], f[1]),
                self.compare("dense_backward_weights", kind, b[2][0], f[2][0]),
                self.compare("dense_backward_bias", kind, b[2][1], f[2][1])]

    def _features(self, precision, groups, cin, seed, perturb=0.0):
        """conv + BatchNorm + ReLU (+ pool) groups with random parameters (each multiplied by
        1 + perturb * U(-1, 1) when perturb is given), in `precision`."""
        nn, layers = self.nn, self.layers
        cells = []
        for cout, pooled in groups:
            cells += [layers.NativeConv2d(cin, cout, 3, pad_mode="same"),
                      nn.BatchNorm2d(cout, momentum=0.9), nn.ReLU()]
            if pooled:
                cells.append(nn.MaxPool2d(kernel_size=2, stride=2))
            cin = cout
        features = layers.NativeFeatures(cells)
        assert features.blocked_training
        rng = np.random.default_rng(seed)
        noise = np.random.default_rng(seed + int(perturb * 1e6))
        for p in features.get_parameters():
            if "weight" in p.name:
                fan_in = int(np.prod(p.shape[1:]))
                value = rng.standard_normal(p.shape) * (2.0 / fan_in) ** 0.5
            elif "moving_variance" in p.name or "gamma" in p.name:
                value = rng.uniform(0.5, 2.0, p.shape)
            else:
                value = rng.normal(0, 0.3, p.shape)
            value = value * (1 + perturb * noise.uniform(-1, 1, p.shape))
            p.set_data(self.ms.Tensor(value.astype(np.float32)))
        features.set_precision(precision)
        return features

    def _chain_run(self, precision, x, r, perturb=0.0):
        net = self._features(precision, CHAIN_GROUPS, 3, seed=11, perturb=perturb)
        net.set_train(True)
        outs, _, grads = self.grads(_cell_forward(net), x, net.trainable_params(), r,
                                    wrt_x=False)
        moving = [p.asnumpy() for p in net.get_parameters() if "moving" in p.name]
        names = [p.name for p in net.trainable_params()]
        return outs[0], dict(zip(names, grads)), moving

    def chain(self):
        x = self.data((4, 3, 32, 32), "float32", 1.5, 0.5)
        r = self.data((4, 48, 4, 4), "exact")
        f_out, f_grads, f_moving = self._chain_run("float32", x, r)
        b_out, b_grads, b_moving = self._chain_run("bfloat16", x, r)
        # the float32 chain's own sensitivity: inputs and parameters moved by one bfloat16
        # unit roundoff (see CHAIN_SENSITIVITY_FACTOR)
        sensitivity = {name: 0.0 for name in f_grads}
        for seed in (1, 2):
            noise = np.random.default_rng(seed).uniform(-1, 1, x.shape)
            x_moved = (x * (1 + 2 ** -8 * noise)).astype(np.float32)
            _, grads, _ = self._chain_run("float32", x_moved, r, perturb=2 ** -8)
            for name, g in grads.items():
                sensitivity[name] = max(sensitivity[name], rel_l2(g, f_grads[name]))
        out = [self.compare("chain_forward", "float32", b_out, f_out, rel_l2)]
        for name, g in b_grads.items():
            kind = "conv_weight" if "weight" in name else name.rsplit(".", 1)[-1]
            check = self.compare(f"chain_grad_{kind}", "float32", g, f_grads[name], rel_l2)
            out.append(check + (sensitivity[name],))
        for i, (a, b) in enumerate(zip(b_moving, f_moving)):
            kind = "moving_mean" if i % 2 == 0 else "moving_variance"
            out.append(self.compare(f"chain_{kind}", "float32", a, b, rel_l2))
        return out

    def inference(self):
        x = self.data((3, 3, 16, 16), "float32")
        outs = {}
        for name in self.acts:
            net = self._features(name, ((16, True), (32, False), (16, True)), 3, seed=12)
            net.set_train(False)
            outs[name] = net(self.ms.Tensor(x)).asnumpy()
        return [self.compare("inference_chain", "float32", outs["bfloat16"], outs["float32"])]


# Forward functions for graph mode, each closing over its operators (no default arguments).
def _block_op(ms, layers, act):
    """float32 NCHW -> blocked act, whose gradient is blocked act -> float32 NCHW."""
    unblock = layers._custom("FastUnblock", layers._same_shape, lambda x: ms.float32)

    def bprop(x, out, dout):
        return (unblock(dout),)

    return layers._custom("FastBlock", layers._same_shape, lambda x: act, bprop=bprop)


def _conv_forward(block, conv, unblock, weight, blocked):
    def forward(v):
        return (unblock(conv(block(v) if blocked else v, weight)),)
    return forward


def _bn_forward(block, bn_relu, unblock, gamma, beta, eps):
    from mindspore import ops

    def forward(v):
        z, mean, var, workspace = bn_relu(block(v), gamma, beta, eps)
        return unblock(ops.depend(z, workspace)), mean, var
    return forward


def _pool_forward(block, pool, unblock):
    from mindspore import ops

    def forward(v):
        y, workspace = pool(block(v))
        return (unblock(ops.depend(y, workspace)),)
    return forward


def _cell_forward(cell):
    def forward(v):
        return (cell(v),)
    return forward


def _away_from_relu_zero(x64, gamma, beta, eps, margin=1e-2):
    """x with every pre-ReLU BatchNorm value at least `margin` from 0 (see the module doc);
    the margin covers the bfloat16 rounding of the inputs that follows."""
    g = gamma.astype(np.float64)[None, :, None, None]
    b = beta.astype(np.float64)[None, :, None, None]
    for _ in range(5):
        mu, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
        std = np.sqrt(var + eps)[None, :, None, None]
        pre = (x64 - mu[None, :, None, None]) / std * g + b
        near = np.abs(pre) < margin
        if not near.any():
            break
        x64 = np.where(near, x64 + np.sign(pre + 1e-30) * 3 * margin * std / g, x64)
    return x64.astype(np.float32)


# ================================================================ tests (this process)

BOUNDS = {
    ("conv_forward", "exact"): ROUNDED_OUTPUT_RTOL,
    ("conv_backward_data", "exact"): ROUNDED_OUTPUT_RTOL,
    ("conv_backward_weights", "exact"): FLOAT32_OUTPUT_RTOL,
    ("bn_relu_forward", "exact"): ROUNDED_OUTPUT_RTOL,
    ("bn_relu_backward_data", "exact"): ROUNDED_OUTPUT_RTOL,
    ("bn_relu_batch_mean", "exact"): FLOAT32_OUTPUT_RTOL,
    ("bn_relu_batch_variance", "exact"): FLOAT32_OUTPUT_RTOL,
    ("bn_relu_backward_gamma", "exact"): FLOAT32_OUTPUT_RTOL,
    ("bn_relu_backward_beta", "exact"): FLOAT32_OUTPUT_RTOL,
    ("maxpool_forward", "exact"): POOL_RTOL,
    ("maxpool_backward", "exact"): POOL_RTOL,
    ("dense_forward", "exact"): FLOAT32_OUTPUT_RTOL,
    ("dense_backward_data", "exact"): FLOAT32_OUTPUT_RTOL,
    ("dense_backward_weights", "exact"): FLOAT32_OUTPUT_RTOL,
    ("dense_backward_bias", "exact"): FLOAT32_OUTPUT_RTOL,
    **{(k, "float32"): USER_INPUT_RTOL for k in (
        "conv_forward", "conv_backward_data", "conv_backward_weights", "dense_forward",
        "dense_backward_data", "dense_backward_weights", "dense_backward_bias")},
    **{(k, "float32"): CHAIN_RTOL for k in (
        "chain_forward", "chain_grad_conv_weight", "chain_grad_gamma", "chain_grad_beta",
        "chain_moving_mean", "chain_moving_variance")},
    ("inference_chain", "float32"): INFERENCE_RTOL,
}


def bound(check):
    """The bound of one recorded check (chain gradients: see CHAIN_SENSITIVITY_FACTOR)."""
    fixed = BOUNDS[check["kernel"], check["inputs"]]
    if check["kernel"].startswith("chain_grad_"):
        return max(fixed, CHAIN_SENSITIVITY_FACTOR * check["reference"])
    return fixed


def cpu_flags():
    from src.native.precision import cpu_flags as flags  # here: workers run this file as a script

    return flags()


def has_bf16_cpu():
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def run_worker(tmp_path, isa=None, verbose=False, layout=None, matmul_weights=None):
    """The worker's report, and its stderr, with oneDNN uncapped or capped at `isa`, the
    bfloat16 activations in `layout` (VGG_NATIVE_BF16_LAYOUT) or the default, and the
    im2col + matmul weight gradients up to `matmul_weights` output pixels
    (VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS; 0: never) or the default."""
    out = tmp_path / "report.json"
    env = dict(os.environ, GLOG_v="3", ONEDNN_MAX_CPU_ISA=isa or "ALL")
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN", "VGG_NATIVE_BF16_LAYOUT",
                 MATMUL_WEIGHTS_VAR):
        env.pop(name, None)
    if verbose:
        env["VGG_NATIVE_VERBOSE"] = "1"
    if layout:
        env["VGG_NATIVE_BF16_LAYOUT"] = layout
    if matmul_weights is not None:
        env[MATMUL_WEIGHTS_VAR] = str(matmul_weights)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle), proc.stderr


# variant: (VGG_NATIVE_BF16_LAYOUT, VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS), None: the default
VARIANTS = {"default": (None, None), "blocked": ("blocked", None), "nhwc": ("nhwc", None),
            "nhwc_conv_weights": ("nhwc", 0)}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def measured(request, library, tmp_path_factory):
    """The worker's report with the kernels this CPU gets (nChw16c without AMX, NHWC with it;
    im2col + matmul weight gradients on outputs of at most 64 pixels with AVX-512), with each
    of the two layouts forced (both are checked on any bfloat16 CPU), and with NHWC and the
    convolution kernel for every weight gradient (VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS=0)."""
    layout, matmul_weights = VARIANTS[request.param]
    return request.param, *run_worker(tmp_path_factory.mktemp(f"bf16_{request.param}"),
                                      verbose=True, layout=layout,
                                      matmul_weights=matmul_weights)


def test_bf16_is_used_exactly_where_the_cpu_has_it(measured):
    _, report, _ = measured
    if has_bf16_cpu():
        assert report["bf16_isa"], "the CPU has AVX512-BF16/AMX-BF16 but oneDNN runs no bf16 ISA"
        assert not report["failures"], "\n".join(report["failures"])
    else:
        assert report["bf16_isa"] == ""
        assert_float32_fallback(report)


def test_bf16_kernels_match_float32_kernels(measured):
    _, report, _ = measured
    if not report["bf16_isa"]:
        pytest.skip("no bfloat16 on this CPU: the fallback is asserted instead")
    checks = [c for c in report["checks"] if c["kernel"] != "reference_kernels"]
    assert {(c["kernel"], c["inputs"]) for c in checks} == set(BOUNDS), report["failures"]
    over = [f"{c['kernel']} {c['case']}: {c['err']:.3g} > {bound(c):g}"
            for c in checks if not c["err"] <= bound(c)]
    assert not over, "\n".join(over)
    # a check that compares zeros with zeros would pass whatever the kernel did
    assert all(c["value_max"] > 0 for c in checks)


def test_bf16_primitives_run_bf16_kernels_never_reference(measured):
    """Every bfloat16 primitive oneDNN built runs a bfloat16 implementation (its ISA name
    has bf16 or AMX in it: jit_bf16:avx512_core_bf16, brg_matmul:avx512_core_amx, ...)."""
    variant, report, stderr = measured
    if not report["bf16_isa"]:
        pytest.skip("no bfloat16 on this CPU")
    assert not [c for c in report["checks"] if c["kernel"] == "reference_kernels" and c["err"]]
    lines = [line for line in stderr.splitlines() if line.startswith("vgg_native:")
             and re.search(r" bf16[ 0-9]", line)]
    kinds = {re.sub(r" (bf16|f32).*", "", line[len("vgg_native: "):]) for line in lines}
    assert {"training forward (plain in)", "training forward (blocked in)",
            "training backward data", "training backward weights", "batch norm + relu forward",
            "batch norm + relu backward", "max pool forward", "max pool backward",
            "max pool inference", "inference (plain in)", "inference (blocked in)",
            "dense forward", "dense backward data", "dense backward weights"} <= kinds
    # the weight gradients of outputs of at most 64 pixels (8x8, 4x4, 2x2 here) as one matrix
    # product by default (AVX-512, with AMX too), never when turned off; larger outputs (11x13
    # here) on the convolution kernel either way
    copied = "training backward weights (im2col + matmul)" in kinds
    in_place = "training backward weights (im2col + matmul, NHWC in place)" in kinds
    assert (copied or in_place) == (VARIANTS[variant][1] != 0), kinds
    # the matrix product reads NHWC activations in place, and copies blocked ones to NHWC
    layout = VARIANTS[variant][0] or ("nhwc" if "amx" in report["bf16_isa"] else "blocked")
    if VARIANTS[variant][1] != 0:
        assert (in_place, copied) == (layout == "nhwc", layout == "blocked"), kinds
    wrong = [line for line in lines
             if line.split("-> ")[-1].startswith("ref")
             or not any(word in line.split("-> ")[-1] for word in BF16_ISA_WORDS)]
    assert not wrong, "\n".join(wrong)


def assert_float32_fallback(report):
    fallback = report["fallback"]
    assert fallback["chosen"] == {"auto": "float32", "bfloat16": "float32"}
    assert fallback["features_precision"] == "float32" and fallback["finite"]
    assert fallback["dense_types"] == ["Dense", "Dropout", "ReLU"]
    lines = [text for _, text in fallback["lines"]]
    assert len(lines) == 2 and all("\n" not in text for text in lines)
    for requested, text in zip(("auto", "bfloat16"), lines):
        assert text.startswith(f"precision: float32 on CPU (cpu_precision={requested}, but "
                               "bfloat16 is not available: no bfloat16 instructions"), text
    # asking for bfloat16 and not getting it is a warning; auto falling back is not
    assert [level for level, _ in fallback["lines"]] == ["INFO", "WARNING"]


@pytest.mark.parametrize("isa", sorted(CAPPED_ISAS))
def test_capped_isa_falls_back_to_float32_in_one_line(library, tmp_path, isa):
    missing = [f for f in CAPPED_ISAS[isa] if f not in cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}")
    report, _ = run_worker(tmp_path, isa=isa)
    assert report["isa_env"] == isa and report["bf16_isa"] == ""
    assert_float32_fallback(report)
    # the one line names the real reason: the cap where the CPU has bfloat16, else the CPU
    reason = report["fallback"]["lines"][0][1]
    if has_bf16_cpu():
        assert f"ONEDNN_MAX_CPU_ISA={isa}" in reason, reason
    else:
        assert "the CPU has neither AVX512-BF16 nor AMX-BF16" in reason, reason


def worst_errors(report):
    """{(kernel, inputs): worst error} of a worker report (for the record)."""
    worst = {}
    for c in report["checks"]:
        key = (c["kernel"], c["inputs"])
        worst[key] = max(worst.get(key, 0.0), c["err"])
    return worst


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python tests/test_bf16_kernels.py --worker OUT.json")
