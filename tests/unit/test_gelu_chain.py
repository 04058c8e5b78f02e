"""activation=gelu: the exact (erf) GELU in the native blocked chains against MindSpore's own
cells (nn.Conv2d, nn.BatchNorm2d or GhostBatchNorm2d, nn.GELU(approximate=False)).

In this process (oneDNN capped at AVX2 by tests/conftest.py) the float32 kernels must match
the cells within float32 tolerance: the BatchNorm + GELU kernel's output, batch statistics and
gradients (input, gamma, beta), the training chain's output, gradients and moving statistics,
with and without ghost batches, and the inference chain. A worker process (this file re-run
as ``python tests/unit/test_gelu_chain.py --worker OUT.json``, oneDNN uncapped, as an entry
point runs it) repeats the chains on the layouts of the full instruction set, in float32 and,
where the CPU has bfloat16 instructions, in bfloat16 against the float32 cells.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RTOL = 1e-4
"""float32 kernels against MindSpore's float32 cells (tests/unit/test_native_layers.py's
bound): the same arithmetic in another summation order. Observed about 2e-6."""
BF16_RTOL = 3e-2
"""bfloat16 chains against the float32 cells, relative L2 error of the outputs and moving
statistics (tests/unit/test_bf16_kernels.py's CHAIN_RTOL): activations rounded to 8
significant bits at every layer. Observed at most 8e-3."""
SENSITIVITY_FACTOR = 2.0
"""The bfloat16 chain's parameter gradients: on an 8-image batch (4-image ghost batches) they
move by several per cent under any rounding-sized change, so they are bounded by this factor
times the move of the float32 chain's own gradients when its input and parameters are moved
by one bfloat16 unit roundoff (relative 2^-8, the larger of two draws), as in
test_bf16_kernels.py. Observed: bfloat16 0.005 to 0.11, at most 1.34 times that move."""
# (output channels, a 2x2 max pool after it) per group; no convolution bias
GROUPS = ((16, True), (32, False), (16, True))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------- shared by both processes

def gelu_layers(conv_cls, ghost=0, activation=None):
    """conv + BatchNorm + activation groups (GROUPS) with max pools; activation: a factory of
    the activation cell (default: the exact GELU)."""
    from mindspore import nn

    from src.ghost_bn import batch_norm_cell

    make = activation or (lambda: nn.GELU(approximate=False))
    layers, cin = [], 3
    for cout, pool in GROUPS:
        layers += [conv_cls(cin, cout, 3, pad_mode="same"), batch_norm_cell(cout, ghost), make()]
        if pool:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        cin = cout
    return layers


def chain_pair(ghost=0, seed=0, perturb=0.0, draw=0):
    """(NativeFeatures, nn.SequentialCell of MindSpore's cells) with the same random
    parameters, BatchNorm's far from their initial values so that a wrong one shows; perturb:
    the native chain's moved by that relative amount at random (random draw `draw`)."""
    import mindspore as ms
    from mindspore import nn

    from src.native.layers import NativeConv2d, NativeFeatures

    fast = NativeFeatures(gelu_layers(NativeConv2d, ghost))
    stock = nn.SequentialCell(gelu_layers(nn.Conv2d, ghost))
    rng, noise = np.random.default_rng(seed), np.random.default_rng(seed + 100 + draw)
    for p_fast, p_stock in zip(fast.get_parameters(), stock.get_parameters()):
        assert p_fast.name == p_stock.name
        if "weight" in p_stock.name:
            value = rng.standard_normal(p_stock.shape) * (2.0 / np.prod(p_stock.shape[1:])) ** 0.5
        elif "moving_variance" in p_stock.name or "gamma" in p_stock.name:
            value = rng.uniform(0.5, 2.0, p_stock.shape)
        else:
            value = rng.normal(0, 0.3, p_stock.shape)
        p_stock.set_data(ms.Tensor(value.astype(np.float32)))
        value = value * (1 + perturb * noise.uniform(-1, 1, value.shape))
        p_fast.set_data(ms.Tensor(value.astype(np.float32)))
    return fast, stock


def outputs_and_grads(net, x, r):
    """net(x), and the gradients of sum(net(x) * r) for each trainable parameter by name."""
    import mindspore as ms

    def loss_fn(v):
        y = net(v)
        return (y * r).sum(), y

    grad_fn = ms.value_and_grad(loss_fn, grad_position=None, weights=net.trainable_params(),
                                has_aux=True)
    (_, y), grads = grad_fn(x)
    return y.asnumpy(), {p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)}


def training_errors(ghost, precision="float32", err=rel_err, perturb=0.0, draw=0):
    """{what: error} of one training step of the chain (in `precision`; its input and
    parameters moved by `perturb` relative, random draw `draw`) against the cells."""
    import mindspore as ms

    fast, stock = chain_pair(ghost, perturb=perturb, draw=draw)
    assert fast.blocked_training and fast.activation == "gelu", fast.training_reason
    fast.set_precision(precision)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    x_fast = x * (1 + perturb * np.random.default_rng(200 + draw).uniform(-1, 1, x.shape))
    r = ms.Tensor(rng.standard_normal((8, 16, 3, 3)).astype(np.float32))
    errors = {}
    results = []
    for net, inputs in ((fast, x_fast), (stock, x)):
        net.set_train(True)
        results.append(outputs_and_grads(net, ms.Tensor(inputs.astype(np.float32)), r))
    (y_f, g_f), (y_s, g_s) = results
    errors["output"] = err(y_f, y_s)
    for name, g in g_s.items():
        errors[f"grad {name}"] = err(g_f[name], g)
    # the moving statistics, updated from the batch statistics by each forward pass
    for a, b in zip(fast.get_parameters(), stock.get_parameters()):
        if "moving" in a.name:
            errors[a.name] = err(a.asnumpy(), b.asnumpy())
    return errors


def inference_errors(precision="float32", err=rel_err):
    """{what: error} of the inference chain (in `precision`), a BatchNorm folded into each
    convolution, against the cells."""
    import mindspore as ms

    fast, stock = chain_pair(seed=2)
    assert fast.blocked_inference and fast.activation == "gelu", fast.inference_reason
    fast.set_precision(precision)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32))
    for net in (fast, stock):
        net.set_train(False)
    return {"inference": err(fast(x).asnumpy(), stock(x).asnumpy())}


def _worker(out_path):
    sys.path.insert(0, ROOT)
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    from src import native

    report = {"bf16_isa": native.bf16_isa(), "reference_before": native.reference_kernels()}
    for precision in ("float32", "bfloat16") if report["bf16_isa"] else ("float32",):
        err = rel_err if precision == "float32" else rel_l2
        for ghost in (0, 4):
            report[f"{precision} training ghost {ghost}"] = training_errors(ghost, precision, err)
        report[f"{precision} inference"] = inference_errors(precision, err)
    for ghost in (0, 4):  # the float32 chain's sensitivity to one bfloat16 rounding, 2 draws
        draws = [training_errors(ghost, err=rel_l2, perturb=2 ** -8, draw=d) for d in (0, 1)]
        report[f"sensitivity ghost {ghost}"] = {k: max(d[k] for d in draws) for k in draws[0]}
    report["reference_after"] = native.reference_kernels()
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)


# ---------------------------------------------------------------- tests in this process

@pytest.fixture(scope="module")
def graph_mode(library):
    import mindspore as ms

    import src.native as native

    native._load_result = None  # pick up a fresh build
    assert native.load_library()[0] is not None, native.load_library()[1]
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield ms
    ms.set_context(mode=old)


@pytest.fixture(autouse=True)
def chains_on(monkeypatch):
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("ghost", [0, 2])
def test_bn_gelu_kernel_matches_batchnorm_and_gelu_cells(graph_mode, ghost):
    """FastBnGeluTrain / FastBnGeluBwd between a block and an unblock: output, batch mean and
    biased variance, and the gradients of input, gamma and beta."""
    ms = graph_mode
    from mindspore import nn, ops

    from src.ghost_bn import batch_norm_cell
    from src.native import bn_workspace_bytes, layers

    shape = (8, 16, 5, 6)
    rng = np.random.default_rng(4)
    x_np = (rng.standard_normal(shape) * 1.5 + 0.5).astype(np.float32)
    gamma = ms.Parameter(ms.Tensor(rng.uniform(0.5, 1.5, 16).astype(np.float32)), name="gamma")
    beta = ms.Parameter(ms.Tensor(rng.normal(0, 0.3, 16).astype(np.float32)), name="beta")
    unblock = layers._unblock_op()  # blocked -> NCHW, its gradient NCHW -> blocked
    unblock_grad = layers._custom("FastUnblock", layers._same_shape)

    def block_bprop(v, out, dout):
        return (unblock_grad(dout),)

    block = layers._custom("FastBlock", layers._same_shape, bprop=block_bprop)
    bn_gelu = layers._blocked_train_ops(ghost=ghost, activation="gelu")[2]
    settings = ms.Tensor([1e-5, ghost], ms.float32)

    def native_forward(v):
        z, mean, var, workspace = bn_gelu(block(v), gamma, beta, settings)
        return unblock(ops.depend(z, workspace)), mean, var

    stock = nn.SequentialCell([batch_norm_cell(16, ghost), nn.GELU(approximate=False)])
    stock[0].gamma.set_data(ms.Tensor(gamma.asnumpy()))
    stock[0].beta.set_data(ms.Tensor(beta.asnumpy()))
    stock.set_train(True)
    r = ms.Tensor(rng.standard_normal(shape).astype(np.float32))

    def grads(forward, params):
        def loss_fn(v):
            outs = forward(v)
            return (outs[0] * r).sum(), outs

        fn = ms.value_and_grad(loss_fn, grad_position=0, weights=params, has_aux=True)
        (_, outs), (dx, dparams) = fn(ms.Tensor(x_np))
        return outs, dx.asnumpy(), [d.asnumpy() for d in dparams]

    (z_f, mean_f, var_f), dx_f, (dgamma_f, dbeta_f) = grads(native_forward, [gamma, beta])
    def stock_forward(v):
        return (stock(v),)

    (z_s,), dx_s, (dgamma_s, dbeta_s) = grads(stock_forward, stock.trainable_params())
    x64 = x_np.astype(np.float64)
    assert rel_err(z_f.asnumpy(), z_s.asnumpy()) < RTOL
    assert rel_err(mean_f.asnumpy(), x64.mean(axis=(0, 2, 3))) < RTOL
    assert rel_err(var_f.asnumpy(), x64.var(axis=(0, 2, 3))) < RTOL
    assert rel_err(dx_f, dx_s) < RTOL
    assert rel_err(dgamma_f, dgamma_s) < RTOL
    assert rel_err(dbeta_f, dbeta_s) < RTOL
    # the workspace keeps the BatchNorm output (its size: the activation's, with ghost runs'
    # statistics after it), far more than ReLU's bit mask
    assert bn_workspace_bytes(shape, ghost=ghost, activation="gelu") >= 4 * np.prod(shape)
    assert bn_workspace_bytes(shape, ghost=ghost) < 4 * np.prod(shape)


@pytest.mark.parametrize("ghost", [0, 2])
def test_training_chain_matches_the_cells(graph_mode, ghost):
    errors = training_errors(ghost)
    assert len(errors) == 1 + 9 + 6  # output, 3 x (weight, gamma, beta), 3 x moving mean/var
    assert max(errors.values()) < RTOL, errors


def test_inference_chain_matches_the_cells(graph_mode):
    errors = inference_errors()
    assert errors["inference"] < RTOL, errors


def test_chain_refuses_the_tanh_gelu_and_mixed_activations(graph_mode):
    from mindspore import nn

    from src.native.layers import NativeConv2d, NativeFeatures

    tanh = NativeFeatures(gelu_layers(NativeConv2d, activation=lambda: nn.GELU()))
    assert not tanh.blocked_inference and "exact GELU" in tanh.inference_reason
    mixed = gelu_layers(NativeConv2d)
    mixed[2] = nn.ReLU()
    mixed = NativeFeatures(mixed)
    assert not mixed.blocked_inference and "differ" in mixed.inference_reason
    relu = NativeFeatures(gelu_layers(NativeConv2d, activation=nn.ReLU))
    assert relu.blocked_training and relu.activation == "relu"


def test_vgg_with_gelu_builds_both_native_chains(graph_mode):
    from mindspore import nn

    from src import vgg
    from src.native.layers import NativeConv2d, NativeFeatures

    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), conv_cell=NativeConv2d,
                       features_cell=NativeFeatures, activation="gelu")
    features = net.features
    assert features.blocked_inference and features.blocked_training
    assert features.activation == "gelu" and net.activation == "gelu"
    acts = [c for c in features.cell_list if isinstance(c, (nn.ReLU, nn.GELU))]
    assert len(acts) == 8 and all(type(c) is nn.GELU and c.approximate == "none" for c in acts)
    assert [type(net.classifier[i]) for i in (1, 4)] == [nn.GELU, nn.GELU]
    default = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), conv_cell=NativeConv2d,
                           features_cell=NativeFeatures)
    assert default.features.activation == "relu" and type(default.classifier[1]) is nn.ReLU
    # no parameters come with either activation: the same checkpoints
    assert [p.name for p in net.get_parameters()] == [p.name for p in default.get_parameters()]


def test_precision_line_names_the_chains_activation(graph_mode):
    from mindspore import nn

    from src.native.layers import NativeConv2d, NativeFeatures
    from src.native.precision import _covered

    gelu = _covered(NativeFeatures(gelu_layers(NativeConv2d)), 0)
    relu = _covered(NativeFeatures(gelu_layers(NativeConv2d, activation=nn.ReLU)), 0)
    assert "BatchNorm+GELU" in gelu and "ReLU" not in gelu
    assert "BatchNorm+ReLU" in relu


def test_vgg_refuses_an_unknown_activation_in_one_line():
    from src import vgg

    for build in (lambda: vgg.make_layers([8, "M"], activation="swish"),
                  lambda: vgg.vgg11(num_classes=10, image_size=(32, 32), activation="Gelu")):
        with pytest.raises(ValueError, match=r"^activation must be one of relu, gelu, got ") as exc:
            build()
        assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- the uncapped worker

@pytest.fixture(scope="module")
def uncapped(library, tmp_path_factory):
    out = tmp_path_factory.mktemp("gelu") / "report.json"
    env = dict(os.environ, GLOG_v="3", ONEDNN_MAX_CPU_ISA="ALL")
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN", "VGG_NATIVE_BF16_LAYOUT",
                 "VGG_NATIVE_F32_LAYOUT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def test_float32_chains_match_on_the_full_instruction_set(uncapped):
    for name in ("float32 training ghost 0", "float32 training ghost 4", "float32 inference"):
        assert max(uncapped[name].values()) < RTOL, (name, uncapped[name])
    assert uncapped["reference_after"] == uncapped["reference_before"]


def test_bf16_chains_stay_close_to_the_float32_cells(uncapped):
    if not uncapped["bf16_isa"]:
        pytest.skip("no bfloat16 instructions on this CPU (the float32 fallback is tested in "
                    "test_bf16_kernels.py)")
    assert uncapped["bfloat16 inference"]["inference"] < BF16_RTOL, uncapped["bfloat16 inference"]
    for ghost in (0, 4):
        errors = uncapped[f"bfloat16 training ghost {ghost}"]
        sensitivity = uncapped[f"sensitivity ghost {ghost}"]
        for name, value in errors.items():
            limit = BF16_RTOL
            if name.startswith("grad "):
                limit = max(limit, SENSITIVITY_FACTOR * sensitivity[name])
            assert value < limit, (ghost, name, value, limit)
        # but not equal: the chain did run in bfloat16
        assert errors["output"] > 1e-4, (ghost, errors)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(sys.argv[2])
