"""MindSpore Hub entry: `create_network(name, **kwargs)` for every VGG variant.

With no keyword arguments it builds the standard ImageNet network (224x224, 1000 classes,
conv bias, 'pad' padding, KaimingNormal initialisation); no training YAML is read.
"""
from src import vgg as _vgg
from src.native.isa import cap_onednn_isa

IMAGENET_DEFAULTS = {"num_classes": 1000, "pad_mode": "pad", "has_bias": True,
                     "initialize_mode": "KaimingNormal", "dropout": True,
                     "image_size": (224, 224)}


def create_network(name, **kwargs):
    """Build `name` (vgg11 ... vgg19_bn); keyword arguments override the ImageNet defaults."""
    if name not in _vgg.MODEL_NAMES:
        raise ValueError(f"unknown network '{name}'; choose one of {', '.join(_vgg.MODEL_NAMES)}")
    # MindSpore Hub loads this file in the caller's process, which no entry point of ours
    # started: cap oneDNN for the stock convolutions here (it counts before oneDNN first runs)
    cap_onednn_isa()
    return getattr(_vgg, name)(**{**IMAGENET_DEFAULTS, **kwargs})
