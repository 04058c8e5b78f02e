"""NativeConv2d: the oneDNN custom-operator convolution and its fallback; NativeFeatures,
the blocked inference and training chains.

Forward outputs and gradients (input, weight, bias) must match the stock nn.Conv2d within
float tolerance, on the fast path and on the fallback, and training losses must match on a
fixed seed. The library is built by ``python -m src.native.build``; the fast-path tests build
it if needed and skip (with the build's one-line reason) where it cannot be built.
"""
import logging
import os
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import src.native as native
import src.native.layers as native_layers
from src.native import build as native_build
from src.native import isa
from src.native.layers import NativeConv2d, NativeFeatures
from tests.helpers import REPO

RTOL = 1e-4


@pytest.fixture(scope="module")
def library(library):
    """conftest's built library, loaded afresh in this process (fails, never skips)."""
    native._load_result = None  # pick up a fresh build
    lib, reason = native.load_library()
    if lib is None:
        pytest.fail(f"native kernel library not loadable: {reason}")
    return library


@pytest.fixture
def graph_mode(monkeypatch):
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN"):
        monkeypatch.delenv(name, raising=False)
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=old)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def copy_params(dst, src_cell):
    for p_dst, p_src in zip(dst.get_parameters(), src_cell.get_parameters()):
        assert p_dst.name == p_src.name and p_dst.shape == p_src.shape
        p_dst.set_data(ms.Tensor(p_src.asnumpy()))


def value_and_grads(cell, x):
    def loss_fn(inp):
        y = cell(inp)
        return (y * y).sum() * 0.5, y

    grad_fn = ms.value_and_grad(loss_fn, grad_position=0, weights=cell.trainable_params(),
                                has_aux=True)
    (_, y), (dx, dws) = grad_fn(x)
    return y.asnumpy(), dx.asnumpy(), [g.asnumpy() for g in dws]


def train_losses(net, x, y, lr, steps):
    """Losses of `steps` momentum-SGD steps of `net` on one batch (softmax cross-entropy)."""
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss),
                               nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9))
    step.set_train()
    return [float(step(x, y).asnumpy()) for _ in range(steps)]


def assert_same_as_stock(fast, stock, x):
    y_f, dx_f, dw_f = value_and_grads(fast, x)
    y_s, dx_s, dw_s = value_and_grads(stock, x)
    assert y_f.shape == y_s.shape
    assert rel_err(y_f, y_s) < RTOL
    assert rel_err(dx_f, dx_s) < RTOL
    assert len(dw_f) == len(dw_s)
    for a, b in zip(dw_f, dw_s):
        assert rel_err(a, b) < RTOL


CASES = [
    # in, out, pad_mode, padding, bias, input shape
    (3, 16, "same", 0, False, (4, 3, 16, 16)),       # first VGG layer: 3 input channels
    (16, 32, "pad", 1, True, (2, 16, 9, 11)),         # VGG 'pad' mode, bias, odd sizes
    (32, 32, "valid", 0, False, (3, 32, 7, 7)),
    (8, 24, "pad", 2, True, (1, 8, 6, 5)),            # batch 1, wider padding
    (16, 16, "pad", (1, 2, 1, 2), False, (2, 16, 8, 8)),  # bottom/right one wider
    (64, 128, "same", 0, False, (8, 64, 4, 4)),
]


@pytest.mark.parametrize("cin,cout,pad_mode,padding,bias,shape", CASES)
def test_forward_and_gradients_match_stock(library, graph_mode, cin, cout, pad_mode, padding, bias,
                                          shape):
    ms.set_seed(3)
    stock = nn.Conv2d(cin, cout, 3, pad_mode=pad_mode, padding=padding, has_bias=bias)
    fast = NativeConv2d(cin, cout, 3, pad_mode=pad_mode, padding=padding, has_bias=bias)
    assert fast.uses_fast_path
    copy_params(fast, stock)
    x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    assert_same_as_stock(fast, stock, x)


def test_kernel_size_5_and_1(library, graph_mode):
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 8, 10, 10)).astype(np.float32))
    for k, pad_mode in ((5, "same"), (1, "valid")):
        stock = nn.Conv2d(8, 12, k, pad_mode=pad_mode, has_bias=True)
        fast = NativeConv2d(8, 12, k, pad_mode=pad_mode, has_bias=True)
        assert fast.uses_fast_path
        copy_params(fast, stock)
        assert_same_as_stock(fast, stock, x)


def test_same_parameters_and_checkpoint_interchange(library, graph_mode, tmp_path):
    ms.set_seed(5)
    fast = NativeConv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=True)
    ms.set_seed(5)
    stock = nn.Conv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=True)
    assert isinstance(fast, nn.Conv2d)
    assert [(p.name, p.shape) for p in fast.get_parameters()] == \
        [(p.name, p.shape) for p in stock.get_parameters()] == \
        [("weight", (6, 4, 3, 3)), ("bias", (6,))]
    # same seed, same initialisers, same values
    for a, b in zip(fast.get_parameters(), stock.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    ckpt = str(tmp_path / "fast.ckpt")
    ms.save_checkpoint(fast, ckpt)
    other = nn.Conv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=True, weight_init="zeros",
                      bias_init="zeros")
    assert ms.load_param_into_net(other, ms.load_checkpoint(ckpt)) == ([], [])
    np.testing.assert_array_equal(other.weight.asnumpy(), fast.weight.asnumpy())


def test_train_steps_match_stock(library, graph_mode):
    def net(conv_cls):
        ms.set_seed(7)
        return nn.SequentialCell([
            conv_cls(3, 16, 3, pad_mode="pad", padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            conv_cls(16, 32, 3, pad_mode="same"), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2, 2), nn.Flatten(), nn.Dense(32 * 4 * 4, 10)])

    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 10, 16).astype(np.int32))
    losses = {name: train_losses(net(cls), x, y, 0.01, 6)
              for name, cls in (("stock", nn.Conv2d), ("fast", NativeConv2d))}
    assert losses["fast"][-1] < losses["fast"][0]
    np.testing.assert_allclose(losses["fast"], losses["stock"], rtol=RTOL)


def test_fallback_when_disabled_gives_same_results(library, graph_mode, monkeypatch, caplog):
    ms.set_seed(11)
    fast = NativeConv2d(8, 8, 3, pad_mode="pad", padding=1, has_bias=True)
    monkeypatch.setenv("VGG_NATIVE_KERNELS", "0")
    native_layers._reported.clear()
    with caplog.at_level(logging.WARNING, logger="src.native.layers"):
        fallback = NativeConv2d(8, 8, 3, pad_mode="pad", padding=1, has_bias=True)
    assert fast.uses_fast_path and not fallback.uses_fast_path
    monkeypatch.delenv("VGG_NATIVE_KERNELS")
    assert not NativeConv2d(8, 8, 3, fast=False).uses_fast_path  # asked for, so not logged
    monkeypatch.setenv("VGG_NATIVE_KERNELS", "off")
    assert not native_layers.native_conv_available()
    assert isa.preferred_onednn_isa() == "AVX2"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "VGG_NATIVE_KERNELS=0" in messages[0] and "\n" not in messages[0]
    copy_params(fallback, fast)
    x = ms.Tensor(np.random.default_rng(4).standard_normal((2, 8, 6, 6)).astype(np.float32))
    y_f, dx_f, dw_f = value_and_grads(fast, x)
    y_s, dx_s, dw_s = value_and_grads(fallback, x)
    assert rel_err(y_f, y_s) < RTOL and rel_err(dx_f, dx_s) < RTOL
    for a, b in zip(dw_f, dw_s):
        assert rel_err(a, b) < RTOL


def test_fallback_reasons(graph_mode, monkeypatch, caplog):
    native_layers._reported.clear()
    usable = native.library_status()[0]
    with caplog.at_level(logging.WARNING, logger="src.native.layers"):
        # configurations outside the kernels (only when the library is usable)
        if usable:
            assert not NativeConv2d(4, 4, 3, stride=2).uses_fast_path
            assert not NativeConv2d(4, 4, 3, dilation=2).uses_fast_path
            assert not NativeConv2d(4, 4, 3, group=2).uses_fast_path
            assert not NativeConv2d(4, 4, 3, pad_mode="pad", padding=(2, 0, 1, 1)).uses_fast_path
        # PyNative mode
        ms.set_context(mode=ms.PYNATIVE_MODE)
        cell = NativeConv2d(4, 4, 3)
        assert not cell.uses_fast_path
        x = ms.Tensor(np.ones((1, 4, 5, 5), np.float32))
        assert cell(x).shape == (1, 4, 5, 5)
        ms.set_context(mode=ms.GRAPH_MODE)
        # library missing
        monkeypatch.setattr(native, "LIB_PATH", "/nonexistent/libvgg_native.so")
        monkeypatch.setattr(native, "_load_result", None)
        assert not NativeConv2d(4, 4, 3).uses_fast_path
        assert isa.preferred_onednn_isa() == "AVX2"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "python -m src.native.build" in text
    if usable:
        assert "PyNative" in text and "stride" in text and "dilation" in text and "group" in text


def stock_features_net():
    net = nn.Cell()
    net.features = nn.SequentialCell([nn.Conv2d(3, 4, 3), nn.ReLU()])
    return net


def test_precision_line_names_why_the_stock_kernels_run(graph_mode, monkeypatch):
    """A network on MindSpore's own kernels says why in its precision line, with the way out:
    a library not built names the build command, a usable one names the config key."""
    from src.native.precision import bfloat16_status

    if native.library_status()[0]:
        assert bfloat16_status(stock_features_net()) == (
            False, "the network runs MindSpore's own kernels (native_kernels is off)")
    monkeypatch.setattr(native, "LIB_PATH", "/nonexistent/libvgg_native.so")
    monkeypatch.setattr(native, "_load_result", None)
    usable, why = bfloat16_status(stock_features_net())
    assert not usable and why == (
        "the network runs MindSpore's own kernels (/nonexistent/libvgg_native.so is not built "
        "(run: python -m src.native.build))")


def test_preferred_isa_when_usable(library, monkeypatch):
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV"):
        monkeypatch.delenv(name, raising=False)
    assert isa.preferred_onednn_isa() == "ALL"
    assert native.onednn_version().startswith("3.")


@pytest.mark.parametrize("env, mode", [
    ({}, "on"), ({"VGG_NATIVE_KERNELS": "1"}, "on"), ({"VGG_NATIVE_KERNELS": "auto"}, "on"),
    ({"VGG_NATIVE_KERNELS": "Off"}, "off"), ({"VGG_NATIVE_KERNELS": "layers"}, "layers"),
    ({"FAST_CONV": "0"}, "off"), ({"FAST_CONV_CHAIN": "0"}, "layers"),  # the old names
    ({"FAST_CONV": "1"}, "on"), ({"FAST_CONV": "0", "VGG_NATIVE_KERNELS": "on"}, "on"),
])
def test_environment_switch_and_its_old_names(env, mode, monkeypatch):
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert native.env_mode()[0] == mode
    if mode == "off":
        assert native.library_status() == (False, f"disabled by {native.env_mode()[1]}")


def test_environment_switch_rejects_unknown_values(monkeypatch):
    from src.errors import UserError

    monkeypatch.setenv("VGG_NATIVE_KERNELS", "chain")
    with pytest.raises(UserError, match="VGG_NATIVE_KERNELS=chain"):
        native.library_status()


def test_isa_rule_keeps_the_users_choice(monkeypatch):
    """Capped at AVX2 for stock convolutions, lifted when every convolution is native; a
    value the user set before the first call stays as it is."""
    monkeypatch.setattr(isa, "_chosen_by_user", None)
    monkeypatch.delenv(isa.ISA_VAR, raising=False)
    isa.cap_onednn_isa()
    assert os.environ[isa.ISA_VAR] == "AVX2"
    isa.lift_onednn_isa_cap()
    isa.cap_onednn_isa()  # a later call keeps the lift
    assert os.environ[isa.ISA_VAR] == "ALL"
    monkeypatch.setattr(isa, "_chosen_by_user", None)
    monkeypatch.setenv(isa.ISA_VAR, "SSE41")
    isa.cap_onednn_isa()
    isa.lift_onednn_isa_cap()
    assert os.environ[isa.ISA_VAR] == "SSE41"


def test_build_reports_missing_compiler_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(native_build.shutil, "which", lambda name: None)
    assert native_build.main(["--strict"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "compiler" in err


def test_avx512_kernels_match_stock_in_fresh_process(library, tmp_path):
    """With no ISA cap (as when every convolution is fast), oneDNN picks its AVX-512
    kernels where the CPU has them: check them against the stock convolution."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {REPO!r})
        import numpy as np, mindspore as ms
        from mindspore import nn
        ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
        from src.native.layers import NativeConv2d
        from tests.unit.test_native_layers import copy_params, value_and_grads, rel_err
        for cin, cout, shape in ((3, 32, (4, 3, 12, 12)), (32, 48, (2, 32, 6, 6))):
            stock = nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=True)
            fast = NativeConv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=True)
            assert fast.uses_fast_path
            copy_params(fast, stock)
            x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
            a, b = value_and_grads(fast, x), value_and_grads(stock, x)
            errs = [rel_err(a[0], b[0]), rel_err(a[1], b[1])]
            errs += [rel_err(p, q) for p, q in zip(a[2], b[2])]
            assert max(errs) < {RTOL}, errs
        from src.native.layers import NativeFeatures
        from tests.unit.test_native_layers import feature_layers, randomise_batchnorm
        fast = NativeFeatures(feature_layers(NativeConv2d, channels=(32, 64, 16)))
        stock = nn.SequentialCell(feature_layers(nn.Conv2d, channels=(32, 64, 16)))
        assert fast.blocked_inference
        randomise_batchnorm(stock)
        copy_params(fast, stock)
        fast.set_train(False)
        stock.set_train(False)
        x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32))
        assert rel_err(fast(x).asnumpy(), stock(x).asnumpy()) < {RTOL}
        print("OK")
    """)
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="ALL", GLOG_v="3")
    for name in ("VGG_NATIVE_KERNELS", "FAST_CONV", "FAST_CONV_CHAIN"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------- blocked inference chain

def feature_layers(conv_cls, batch_norm=True, channels=(16, 32, 16)):
    """conv [+BN] + ReLU groups with max pools, the shape of a small VGG feature extractor."""
    layers, cin = [], 3
    for i, cout in enumerate(channels):
        layers.append(conv_cls(cin, cout, 3, pad_mode="same" if i % 2 == 0 else "pad",
                               padding=0 if i % 2 == 0 else 1, has_bias=(i == 1)))
        if batch_norm and i != 1:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU())
        if i != 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        cin = cout
    return layers


def randomise_batchnorm(cell, seed=0):
    """Moving statistics and affine parameters far from their initial values, so that a
    wrong folding shows."""
    rng = np.random.default_rng(seed)
    for p in cell.get_parameters():
        if "moving_variance" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.3, 3.0, p.shape).astype(np.float32)))
        elif "moving_mean" in p.name or "beta" in p.name or "bias" in p.name:
            p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
        elif "gamma" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_blocked_inference_matches_stock(library, graph_mode, batch_norm):
    fast = NativeFeatures(feature_layers(NativeConv2d, batch_norm))
    stock = nn.SequentialCell(feature_layers(nn.Conv2d, batch_norm))
    assert fast.blocked_inference
    assert not fast.blocked_training  # layer 1 has a bias and no BatchNorm: trains cell by cell
    assert [p.name for p in fast.get_parameters()] == [p.name for p in stock.get_parameters()]
    randomise_batchnorm(stock)
    copy_params(fast, stock)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 3, 12, 12)).astype(np.float32))
    for training in (False, True, False):  # the chain in inference, cell by cell in training
        fast.set_train(training)
        stock.set_train(training)
        y_f, y_s = fast(x).asnumpy(), stock(x).asnumpy()
        assert y_f.shape == y_s.shape == (3, 16, 3, 3)
        assert rel_err(y_f, y_s) < RTOL, training


def test_blocked_inference_falls_back_outside_its_pattern(library, graph_mode, caplog):
    cases = {
        "channels not a multiple of the block": feature_layers(NativeConv2d, channels=(16, 20, 16)),
        "no ReLU after a convolution": feature_layers(NativeConv2d)[:2] + [nn.MaxPool2d(2, 2)],
        "a stock convolution": [nn.Conv2d(3, 16, 3), nn.ReLU()],
    }
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32))
    for name, layers in cases.items():
        with caplog.at_level(logging.INFO, logger="src.native.layers"):
            fast = NativeFeatures(layers)
        assert not fast.blocked_inference, name
        assert "blocked inference chain not used" in caplog.text
        stock = nn.SequentialCell([nn.Conv2d(c.in_channels, c.out_channels, 3, pad_mode=c.pad_mode,
                                             padding=c.padding, has_bias=c.has_bias)
                                   if isinstance(c, nn.Conv2d) else c for c in layers])
        copy_params(stock, fast)
        fast.set_train(False)
        stock.set_train(False)
        assert rel_err(fast(x).asnumpy(), stock(x).asnumpy()) < RTOL, name


def test_vgg_uses_the_blocked_chain_with_unchanged_parameter_names(library, graph_mode):
    from src import vgg

    fast = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), conv_cell=NativeConv2d,
                        features_cell=NativeFeatures)
    stock = vgg.vgg11_bn(num_classes=10, image_size=(32, 32))
    assert isinstance(fast.features, NativeFeatures) and fast.features.blocked_inference
    assert [p.name for p in fast.get_parameters()] == [p.name for p in stock.get_parameters()]
    randomise_batchnorm(stock, seed=4)
    copy_params(fast, stock)
    fast.set_train(False)
    stock.set_train(False)
    x = ms.Tensor(np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32))
    assert rel_err(fast(x).asnumpy(), stock(x).asnumpy()) < RTOL


def test_factory_passes_the_native_chain_with_the_native_convolution(library, graph_mode,
                                                                    monkeypatch):
    from model_utils.config import get_config
    from src.factory import build_network

    monkeypatch.setenv(isa.ISA_VAR, os.environ.get(isa.ISA_VAR, "AVX2"))  # restored after
    config = get_config([f"--config_path={os.path.join(REPO, 'cifar10_config.yaml')}",
                         "--arch=vgg11", "--image_size=32,32", "--device_target=CPU",
                         "--context_mode=graph", "--native_kernels=auto"])
    native_net = build_network(config, "CPU")
    assert type(native_net.features) is NativeFeatures and native_net.features.blocked_inference
    convs = [c for c in native_net.features.cell_list if isinstance(c, nn.Conv2d)]
    assert len(convs) == 8 and all(type(c) is NativeConv2d for c in convs)
    stock = build_network(config.replace(native_kernels="off"), "CPU")
    assert type(stock.features) is nn.SequentialCell
    assert all(type(c) is nn.Conv2d for c in stock.features.cell_list if isinstance(c, nn.Conv2d))


def small_bn_net(conv_cls, features_cls):
    """conv+BN+ReLU groups (no conv bias) with pools, then a dense layer."""
    layers = [conv_cls(3, 16, 3, pad_mode="same"), nn.BatchNorm2d(16), nn.ReLU(),
              nn.MaxPool2d(2, 2),
              conv_cls(16, 32, 3, pad_mode="pad", padding=1), nn.BatchNorm2d(32), nn.ReLU(),
              conv_cls(32, 16, 3, pad_mode="same"), nn.BatchNorm2d(16, momentum=0.8), nn.ReLU(),
              nn.MaxPool2d(2, 2)]
    return nn.SequentialCell([features_cls(layers), nn.Flatten(), nn.Dense(16 * 3 * 3, 5)])


def test_blocked_training_matches_stock(library, graph_mode):
    """Losses, gradients (through the updated weights) and the BatchNorm moving statistics
    of the blocked training chain follow the stock cells step for step."""
    fast = small_bn_net(NativeConv2d, NativeFeatures)
    stock = small_bn_net(nn.Conv2d, nn.SequentialCell)
    assert fast[0].blocked_inference and fast[0].blocked_training
    randomise_batchnorm(stock, seed=6)
    copy_params(fast, stock)
    rng = np.random.default_rng(7)
    x = ms.Tensor(rng.standard_normal((4, 3, 12, 12)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 5, 4).astype(np.int32))
    losses = [train_losses(net, x, y, 0.05, 4) for net in (fast, stock)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=RTOL)
    assert losses[0][-1] < 0.5 * losses[0][0]  # it learns
    for a, b in zip(fast.get_parameters(), stock.get_parameters()):
        assert a.name == b.name
        assert rel_err(a.asnumpy(), b.asnumpy()) < RTOL, a.name
    fast.set_train(False)
    stock.set_train(False)
    assert rel_err(fast(x).asnumpy(), stock(x).asnumpy()) < RTOL


@pytest.mark.parametrize("name, value", [("VGG_NATIVE_KERNELS", "layers"),
                                         ("FAST_CONV_CHAIN", "0")])  # the old name
def test_chain_can_be_turned_off(library, graph_mode, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    features = small_bn_net(NativeConv2d, NativeFeatures)[0]
    assert not features.blocked_inference and not features.blocked_training
    assert all(c.uses_fast_path for c in features.cell_list if isinstance(c, NativeConv2d))


def test_chain_avoids_reference_kernels_on_small_images(library, graph_mode):
    """With 8-channel blocks (this process caps oneDNN at AVX2), backward weights on 2x2
    images has no fast kernel for the blocked layout; the chain then lets oneDNN pick the
    layout and reorders, instead of running its reference kernel (100x slower)."""
    chain = [NativeConv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, 2),
             NativeConv2d(16, 512, 3), nn.BatchNorm2d(512), nn.ReLU(),
             NativeConv2d(512, 512, 3), nn.BatchNorm2d(512), nn.ReLU()]
    stock_layers = [nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, 2),
                    nn.Conv2d(16, 512, 3), nn.BatchNorm2d(512), nn.ReLU(),
                    nn.Conv2d(512, 512, 3), nn.BatchNorm2d(512), nn.ReLU()]
    fast = nn.SequentialCell([NativeFeatures(chain), nn.Flatten(), nn.Dense(512 * 4, 3)])
    stock = nn.SequentialCell([nn.SequentialCell(stock_layers), nn.Flatten(), nn.Dense(512 * 4, 3)])
    assert fast[0].blocked_training
    copy_params(fast, stock)
    before = native.reference_kernels()
    rng = np.random.default_rng(8)
    x = ms.Tensor(rng.standard_normal((4, 3, 4, 4)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 3, 4).astype(np.int32))
    losses = [train_losses(net, x, y, 0.01, 3) for net in (fast, stock)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=RTOL)
    assert native.reference_kernels() == before
