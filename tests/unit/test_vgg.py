"""Networks: shapes, standard parameter counts, torchvision order, initialiser statistics."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import mindspore_hub_conf
from src import vgg

ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")

TORCHVISION_VGG16_BN_FIRST = ["features.0.weight", "features.0.bias", "features.1.weight",
                              "features.1.bias", "features.3.weight"]


@pytest.mark.parametrize("name", vgg.MODEL_NAMES)
def test_forward_shape_every_variant_at_32(name):
    net = getattr(vgg, name)(num_classes=10, image_size=(32, 32))
    net.set_train(False)
    out = net(ms.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32)))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn"])
def test_forward_shape_at_224_and_rectangular(name):
    net = getattr(vgg, name)(num_classes=7, image_size=(224, 224), pad_mode="pad",
                             has_bias=True)
    net.set_train(False)
    assert net(ms.Tensor(np.zeros((1, 3, 224, 224), np.float32))).shape == (1, 7)
    wide = getattr(vgg, name)(num_classes=3, image_size=(64, 96))
    wide.set_train(False)
    assert wide(ms.Tensor(np.zeros((1, 3, 64, 96), np.float32))).shape == (1, 3)


def test_standard_parameter_counts_through_the_hub():
    plain = mindspore_hub_conf.create_network("vgg16")
    assert vgg.count_parameters(plain) == 138_357_544
    with_bn = mindspore_hub_conf.create_network("vgg16_bn")
    assert vgg.count_parameters(with_bn) == 138_365_992
    # Trainable parameters come in torchvision's state-dict order (BN: weight=gamma, bias=beta).
    names = [p.name for p in with_bn.trainable_params()]
    renamed = [n.replace("gamma", "weight").replace("beta", "bias") for n in names]
    assert renamed[:5] == TORCHVISION_VGG16_BN_FIRST
    assert names[-6:] == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                          "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"]


def test_hub_builds_every_variant_name_and_rejects_others():
    for name in vgg.MODEL_NAMES:
        net = mindspore_hub_conf.create_network(name, num_classes=4, image_size=(32, 32))
        assert net.classifier[6].weight.shape == (4, 4096)
    with pytest.raises(ValueError, match="unknown network"):
        mindspore_hub_conf.create_network("resnet50")


def test_include_top_false_gives_features():
    net = vgg.vgg11(image_size=(64, 64), include_top=False)
    assert not hasattr(net, "classifier")
    assert net(ms.Tensor(np.zeros((1, 3, 64, 64), np.float32))).shape == (1, 512 * 2 * 2)


def test_kaiming_fan_out_conv_std():
    ms.set_seed(0)
    net = vgg.vgg11(num_classes=10, image_size=(32, 32), initialize_mode="KaimingNormal")
    weight = net.features[3].weight.asnumpy()  # 64 -> 128 channels, 3x3
    expected = np.sqrt(2.0 / (128 * 9))
    assert abs(weight.std() / expected - 1) < 0.03
    dense = net.classifier[0].weight.asnumpy()
    assert abs(dense.std() / 0.01 - 1) < 0.03


def test_xavier_uniform_bounds():
    ms.set_seed(0)
    net = vgg.vgg11(num_classes=10, image_size=(32, 32), initialize_mode="XavierUniform")
    weight = net.features[3].weight.asnumpy()
    bound = np.sqrt(6.0 / (64 * 9 + 128 * 9))
    assert weight.max() <= bound and weight.min() >= -bound
    assert abs(weight.std() / (bound / np.sqrt(3)) - 1) < 0.03


def test_dropout_is_off_in_eval_and_on_in_training():
    net = vgg.vgg11(num_classes=10, image_size=(32, 32))
    x = ms.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32))
    net.set_train(False)
    assert np.array_equal(net(x).asnumpy(), net(x).asnumpy())
    assert isinstance(net.classifier[2], nn.Dropout)
    no_dropout = vgg.vgg11(num_classes=10, image_size=(32, 32), dropout=False)
    assert isinstance(no_dropout.classifier[2], nn.Identity)


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="multiples of 32"):
        vgg.vgg16(image_size=(100, 100))


def test_cells_are_chosen_by_plain_arguments():
    """conv_cell and features_cell are arguments of make_layers and of every builder; the
    defaults are MindSpore's own cells."""
    class Features(nn.SequentialCell):
        pass

    class Conv(nn.Conv2d):
        pass

    assert type(vgg.make_layers([8, "M", 16])) is nn.SequentialCell
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), conv_cell=Conv, features_cell=Features)
    assert type(net.features) is Features
    assert [type(c) for c in net.features.cell_list][:3] == [Conv, nn.BatchNorm2d, nn.ReLU]


def test_linear_head_is_one_dense_layer_on_the_features():
    net = vgg.vgg16_bn(num_classes=10, image_size=(32, 32), head="linear")
    net.set_train(False)
    dense = [(name, p.shape) for name, p in net.parameters_and_names() if "classifier" in name]
    assert dense == [("classifier.0.weight", (10, 512)), ("classifier.0.bias", (10,))]
    x = ms.Tensor(np.random.default_rng(0).random((2, 3, 32, 32), np.float32))
    features = net.forward_features(x).asnumpy()
    weight, bias = net.classifier[0].weight.asnumpy(), net.classifier[0].bias.asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), features @ weight.T + bias, rtol=1e-5,
                               atol=1e-5)
    mlp = vgg.vgg16_bn(num_classes=10, image_size=(32, 32))
    assert vgg.count_parameters(mlp) - vgg.count_parameters(net) == (
        512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10 - 512 * 10 - 10)
    with pytest.raises(ValueError, match="head must be one of mlp, linear, got 'conv'"):
        vgg.vgg11(image_size=(32, 32), head="conv")


def test_head_of_weights_reads_the_classifier_names():
    mlp = [n for n, _ in vgg.vgg11(image_size=(32, 32)).parameters_and_names()]
    linear = [n for n, _ in vgg.vgg11(image_size=(32, 32), head="linear").parameters_and_names()]
    assert vgg.head_of_weights(set(mlp)) == "mlp"
    assert vgg.head_of_weights(set(linear)) == "linear"
    assert vgg.head_of_weights({n for n in mlp if n.startswith("features.")}) is None


def _arrays(net):
    return {name: p.asnumpy() for name, p in net.parameters_and_names()}


def _entries(arrays):
    """Checkpoint entries (as ms.load_checkpoint returns them) holding these arrays."""
    return {name: ms.Parameter(ms.Tensor(value), name=name) for name, value in arrays.items()}


def test_weights_of_another_head_need_reinit_classifier_and_keep_the_features():
    from src import checkpoint as ckpt
    from src.errors import UserError

    ms.set_seed(1)
    mlp = _arrays(vgg.vgg11(num_classes=10, image_size=(32, 32)))
    ms.set_seed(2)
    linear = vgg.vgg11(num_classes=3, image_size=(32, 32), head="linear")
    fresh = _arrays(linear)
    with pytest.raises(UserError) as refused:
        ckpt.load_weights(linear, _entries(mlp), "w.ckpt")
    assert str(refused.value) == (
        "checkpoint w.ckpt has the mlp head (classifier.0/classifier.3/classifier.6) but the "
        "network has head=linear; set --head=mlp, or --reinit_classifier=True to train a new "
        "linear head on its features")
    skipped = ckpt.load_weights(linear, _entries(mlp), "w.ckpt", reinit_classifier=True)
    assert skipped == ["classifier.0.weight", "classifier.0.bias"]
    loaded = _arrays(linear)
    for name, value in loaded.items():
        expected = fresh[name] if name.startswith("classifier.") else mlp[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    # and back: an mlp network from linear weights re-creates its three layers
    back = vgg.vgg11(num_classes=10, image_size=(32, 32))
    skipped = ckpt.load_weights(back, _entries(loaded), "l.ckpt", reinit_classifier=True)
    assert sorted(skipped) == sorted(f"classifier.{i}.{kind}" for i in (0, 3, 6)
                                     for kind in ("weight", "bias"))
    np.testing.assert_array_equal(back.features[0].weight.asnumpy(), mlp["features.0.weight"])


def _dirac_rows(weight):
    """How many leading filters of a (out, in, 3, 3) weight are a one at the centre of their
    own input channel and zeros elsewhere."""
    expected = np.zeros(weight.shape[1:], np.float32)
    rows = 0
    for i in range(min(weight.shape[:2])):
        expected[:] = 0
        expected[i, 1, 1] = 1
        rows += bool(np.array_equal(weight[i], expected))
    return rows


def test_identity_init_starts_each_convolution_as_a_partial_identity():
    """The first min(in, out) filters pass their own channel through: a square convolution
    gives back its input, a widening one its input in the first channels and initialize_mode's
    draw in the rest; the other filters keep that draw's bounds and spread."""
    ms.set_seed(0)
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), identity_init=True)
    convs = [c for c in net.features.cell_list if isinstance(c, nn.Conv2d)]
    for conv in convs:
        weight = conv.weight.asnumpy()
        assert _dirac_rows(weight) == min(weight.shape[:2]), conv.weight.name
    square = next(c for c in convs if c.in_channels == c.out_channels == 256)
    x = np.random.default_rng(0).standard_normal((2, 256, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(square(ms.Tensor(x)).asnumpy(), x, atol=1e-6)
    widening = convs[1]  # 64 -> 128
    x = np.random.default_rng(1).standard_normal((2, 64, 8, 8)).astype(np.float32)
    y = widening(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(y[:, :64], x, atol=1e-6)
    assert np.abs(y[:, 64:]).mean() > 0.1
    rest = widening.weight.asnumpy()[64:]
    bound = np.sqrt(6.0 / (64 * 9 + 128 * 9))
    assert rest.max() <= bound and rest.min() >= -bound
    assert abs(rest.std() / (bound / np.sqrt(3)) - 1) < 0.05
    plain = vgg.vgg11_bn(num_classes=10, image_size=(32, 32))
    assert all(_dirac_rows(c.weight.asnumpy()) == 0 for c in plain.features.cell_list
               if isinstance(c, nn.Conv2d))


def test_identity_init_comes_from_the_config_key():
    from src.factory import build_network
    from tests.helpers import quick_config

    for value, rows in (("True", 64), ("False", 0)):
        config = quick_config("--arch=vgg11", f"--identity_init={value}", "--native_kernels=off")
        net = build_network(config, "CPU", training=True)
        convs = [c for c in net.features.cell_list if isinstance(c, nn.Conv2d)]
        assert _dirac_rows(convs[1].weight.asnumpy()) == rows


def _assert_dropout_loss_is_the_networks(net, x):
    """The masked-dropout loss cell (masks all ones, no smoothing), which runs the head's
    layers itself, gives the cross-entropy of the network's own logits for 4 images."""
    from src.train_loss import create_loss_cell

    logits = net(x).asnumpy().astype(np.float64)
    label = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    keep = ms.Tensor(np.ones((4, 4096), np.float32))
    ms.set_context(mode=ms.GRAPH_MODE)  # as train.py runs it
    try:
        loss = create_loss_cell(net, 0.0, masked_dropout=True)(x, label, keep, keep)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert abs(float(loss.asnumpy()) + logp[np.arange(4), [0, 1, 2, 3]].mean()) < 1e-5


def test_logit_scale_multiplies_the_logits_in_inference_and_in_the_dropout_loss():
    """The same weights give the logits times logit_scale (so the same top-1), from the config
    key; the masked-dropout loss cell, which runs the head's layers itself, scales them too."""
    from src.factory import build_network
    from tests.helpers import quick_config

    x = ms.Tensor(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    nets = {}
    for scale in (1.0, 0.125):
        ms.set_seed(3)
        config = quick_config("--arch=vgg11", "--has_dropout=True", "--native_kernels=off",
                              f"--logit_scale={scale}")
        nets[scale] = build_network(config, "CPU")
        nets[scale].set_train(False)
    plain, scaled = (nets[s](x).asnumpy() for s in (1.0, 0.125))
    assert np.abs(plain).max() > 1e-3
    np.testing.assert_allclose(scaled, plain * 0.125, rtol=1e-6, atol=1e-7)
    assert (scaled.argmax(1) == plain.argmax(1)).all()
    for net in nets.values():
        _assert_dropout_loss_is_the_networks(net, x)


def test_activation_gelu_from_the_config_reaches_every_activation_and_the_dropout_loss():
    """activation=gelu puts the exact GELU after every convolution and hidden dense layer
    (no parameter changes), and the masked-dropout loss cell, which runs the head's layers
    itself, uses the network's own activation."""
    from src.factory import build_network
    from tests.helpers import quick_config

    config = quick_config("--arch=vgg11", "--has_dropout=True", "--native_kernels=off",
                          "--activation=gelu")
    ms.set_seed(3)
    net = build_network(config, "CPU")
    acts = [c for c in net.cells_and_names() if isinstance(c[1], (nn.ReLU, nn.GELU))]
    assert len(acts) == 8 + 2
    assert all(type(c) is nn.GELU and c.approximate == "none" for _, c in acts)
    relu = build_network(config.replace(activation="relu"), "CPU")
    assert [p.name for p in net.get_parameters()] == [p.name for p in relu.get_parameters()]
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    _assert_dropout_loss_is_the_networks(net, x)


def test_logit_scale_must_be_positive():
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        vgg.vgg11(num_classes=10, image_size=(32, 32), logit_scale=0.0)
