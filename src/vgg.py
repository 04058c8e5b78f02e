"""VGG networks (VGG11/13/16/19, with or without BatchNorm) built from one layer table.

Cell names follow torchvision's layout (`features.N`, `classifier.0/3/6`) so that the
parameters line up one-to-one with its `vgg*` state dicts.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Dirac, HeNormal, Initializer, Normal, XavierUniform, Zero

from src.ghost_bn import batch_norm_cell

# Output channels of each 3x3 convolution; "M" is a 2x2 max-pool.
LAYER_TABLE = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
ARCHS = tuple(LAYER_TABLE)
FEATURE_STRIDE = 32
HIDDEN = 4096
# Classifier heads: "mlp" is upstream's and torchvision's (dense 4096, dense 4096, dense to
# the classes: classifier.0/3/6); "linear" is one dense layer from the flattened features to
# the classes (classifier.0), the usual head of VGG on 32x32 CIFAR-10 images, whose features
# are then the 512 values left by the last max-pool.
HEADS = ("mlp", "linear")
HEAD_LAYERS = {"mlp": ("classifier.0", "classifier.3", "classifier.6"),
               "linear": ("classifier.0",)}
# The activation after every convolution (+ BatchNorm) and hidden dense layer: "relu", or
# "gelu", the exact (erf) GELU. Neither has parameters: checkpoints are the same either way.
ACTIVATIONS = ("relu", "gelu")


def activation_cell(activation):
    """A new cell computing `activation` (one of ACTIVATIONS)."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "gelu":
        return nn.GELU(approximate=False)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def head_of_weights(names):
    """The head (one of HEADS) whose dense layers a checkpoint's parameter names show, None
    when it holds no classifier."""
    if "classifier.6.weight" in names:
        return "mlp"
    if "classifier.0.weight" in names and "classifier.3.weight" not in names:
        return "linear"
    return None


def _initializers(initialize_mode):
    """(conv weight, dense weight) initialisers for a mode."""
    if initialize_mode == "KaimingNormal":
        return HeNormal(mode="fan_out", nonlinearity="relu"), Normal(sigma=0.01)
    if initialize_mode == "XavierUniform":
        return XavierUniform(), XavierUniform()
    raise ValueError(f"initialize_mode must be XavierUniform or KaimingNormal, "
                     f"got {initialize_mode!r}")


class PartialIdentity(Initializer):
    """`base`'s draw for a (out, in, kh, kw) convolution weight, after which its first
    min(out, in) filters each pass their own input channel through unchanged: a one at the
    kernel centre, zeros elsewhere. A square layer (in == out) starts as the identity."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def _initialize(self, arr):
        if arr.ndim != 4:
            raise ValueError(f"PartialIdentity initialises 4-d convolution weights, "
                             f"got shape {arr.shape}")
        self.base(arr)
        Dirac()(arr[:min(arr.shape[0], arr.shape[1])])  # writes through the view
        return arr


def make_layers(layer_cfg, batch_norm=False, pad_mode="same", padding=0, has_bias=False,
                initialize_mode="XavierUniform", conv_cell=nn.Conv2d,
                features_cell=nn.SequentialCell, ghost_batch=0, identity_init=False,
                activation="relu"):
    """The convolutional feature extractor for one row of LAYER_TABLE: `conv_cell` for each
    convolution, the layers held (and run) by a `features_cell` sequence; ghost_batch > 0:
    ghost batch normalisation in training (src/ghost_bn.py); identity_init: every
    convolution drawn by PartialIdentity over initialize_mode's initialiser; `activation`
    (ACTIVATIONS) after each convolution (+ BatchNorm)."""
    activation_cell(activation)  # a wrong name fails before any layer is built
    conv_init, _ = _initializers(initialize_mode)
    if identity_init:
        conv_init = PartialIdentity(conv_init)
    layers = []
    in_channels = 3
    for item in layer_cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(conv_cell(in_channels, item, kernel_size=3, pad_mode=pad_mode,
                                padding=padding if pad_mode == "pad" else 0,
                                has_bias=has_bias, weight_init=conv_init, bias_init=Zero()))
        if batch_norm:
            layers.append(batch_norm_cell(item, ghost_batch))
        layers.append(activation_cell(activation))
        in_channels = item
    return features_cell(layers)


class VGG(nn.Cell):
    """VGG over a prebuilt feature extractor: features → flatten → the head (HEADS), whose
    hidden layers (mlp) are followed by `activation` (ACTIVATIONS)."""

    def __init__(self, features, num_classes=1000, image_size=(224, 224), dropout=True,
                 initialize_mode="XavierUniform", include_top=True, head="mlp",
                 logit_scale=1.0, activation="relu"):
        super().__init__()
        height, width = _check_image_size(image_size)
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        activation_cell(activation)
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale!r}")
        # a constant factor on the logits (1: none), part of the network so that training,
        # evaluation (whose TTA averages softmax scores) and exported models all see it
        self.logit_scale = float(logit_scale)
        # a tensor for ops.mul: in eager mode, a Tensor * float can be the first call to meet
        # MindSpore's failing NumPy C-API import (src/runtime.py's settle_numpy_bridge), a
        # primitive on two tensors is not, so the network needs no set-up to run eagerly
        self._logit_factor = ms.Tensor(np.array(self.logit_scale, np.float32))
        self.features = features
        self.flatten = nn.Flatten()
        self.include_top = include_top
        self.head = head
        self.activation = activation
        if include_top:
            _, dense_init = _initializers(initialize_mode)
            flat = 512 * (height // FEATURE_STRIDE) * (width // FEATURE_STRIDE)

            def dense(n_in, n_out):
                return nn.Dense(n_in, n_out, weight_init=dense_init, bias_init=Zero())

            def drop():
                return nn.Dropout(p=0.5) if dropout else nn.Identity()

            if head == "linear":
                self.classifier = nn.SequentialCell([dense(flat, num_classes)])
            else:
                self.classifier = nn.SequentialCell([
                    dense(flat, HIDDEN), activation_cell(activation), drop(),
                    dense(HIDDEN, HIDDEN), activation_cell(activation), drop(),
                    dense(HIDDEN, num_classes),
                ])

    def forward_features(self, x):
        return self.flatten(self.features(x))

    def forward_head(self, x):
        return self.classifier(x)

    def scale_logits(self, logits):
        if self.logit_scale == 1.0:
            return logits
        return ops.mul(logits, ops.cast(self._logit_factor, logits.dtype))

    def construct(self, x):
        x = self.forward_features(x)
        if self.include_top:
            x = self.scale_logits(self.forward_head(x))
        return x


def _check_image_size(image_size):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or any(s < FEATURE_STRIDE or s % FEATURE_STRIDE for s in image_size):
        raise ValueError(f"image_size must be two multiples of {FEATURE_STRIDE}, "
                         f"got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def build_vgg(arch, num_classes=1000, batch_norm=False, pad_mode="same", has_bias=False,
              initialize_mode="XavierUniform", dropout=True, image_size=(224, 224),
              include_top=True, padding=None, conv_cell=nn.Conv2d,
              features_cell=nn.SequentialCell, ghost_batch=0, head="mlp", identity_init=False,
              logit_scale=1.0, activation="relu"):
    """One VGG variant; `arch` is vgg11, vgg13, vgg16 or vgg19; `head` one of HEADS;
    `logit_scale` a constant factor on the logits; `activation` one of ACTIVATIONS."""
    if arch not in LAYER_TABLE:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if pad_mode not in ("same", "pad"):
        raise ValueError(f"pad_mode must be 'same' or 'pad', got {pad_mode!r}")
    if padding is None:
        padding = 1 if pad_mode == "pad" else 0
    features = make_layers(LAYER_TABLE[arch], batch_norm, pad_mode, padding, has_bias,
                           initialize_mode, conv_cell, features_cell, ghost_batch, identity_init,
                           activation)
    return VGG(features, num_classes, image_size, dropout, initialize_mode, include_top, head,
               logit_scale, activation)


def _builder(arch, batch_norm):
    def build(num_classes=1000, pad_mode="same", has_bias=False,
              initialize_mode="XavierUniform", dropout=True, image_size=(224, 224),
              include_top=True, padding=None, conv_cell=nn.Conv2d,
              features_cell=nn.SequentialCell, ghost_batch=0, head="mlp", identity_init=False,
              logit_scale=1.0, activation="relu"):
        return build_vgg(arch, num_classes, batch_norm, pad_mode, has_bias, initialize_mode,
                         dropout, image_size, include_top, padding, conv_cell, features_cell,
                         ghost_batch, head, identity_init, logit_scale, activation)
    build.__name__ = arch + ("_bn" if batch_norm else "")
    build.__doc__ = f"{arch.upper()}{' with BatchNorm' if batch_norm else ''}."
    return build


vgg11, vgg11_bn = _builder("vgg11", False), _builder("vgg11", True)
vgg13, vgg13_bn = _builder("vgg13", False), _builder("vgg13", True)
vgg16, vgg16_bn = _builder("vgg16", False), _builder("vgg16", True)
vgg19, vgg19_bn = _builder("vgg19", False), _builder("vgg19", True)

MODEL_NAMES = tuple(f"{arch}{suffix}" for arch in ARCHS for suffix in ("", "_bn"))


def count_parameters(net, trainable_only=True):
    params = net.trainable_params() if trainable_only else net.get_parameters()
    return sum(math.prod(p.shape) for p in params)
