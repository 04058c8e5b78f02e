"""Maps a torchvision VGG state dict (as NumPy arrays) onto this repository's parameter names.

The layouts are the same (`features.N`, `classifier.0/3/6`); only BatchNorm names differ, and
torchvision's `num_batches_tracked` counters have no counterpart. timm's VGG state dicts hold
the same tensors with the first two classifier layers as convolutions (`pre_logits.fc1`: 7x7
over the 512x7x7 features, `pre_logits.fc2`: 1x1) and the last as `head.fc`;
`from_timm_layout` turns them back. No torch import here: the caller turns tensors into
arrays, so training and evaluation never need PyTorch.
"""
import numpy as np

from src.errors import UserError
from src.vgg import HIDDEN, LAYER_TABLE

# torchvision BatchNorm2d name -> MindSpore BatchNorm2d name
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
            "running_var": "moving_variance"}
DROPPED_SUFFIX = ".num_batches_tracked"
# torchvision's AdaptiveAvgPool2d((7, 7)) feeds 512*7*7 values to the classifier.
TORCHVISION_FLAT = 512 * 7 * 7
CONV_COUNTS = {arch: sum(item != "M" for item in table) for arch, table in LAYER_TABLE.items()}


def split_model_name(name):
    """'vgg16_bn' -> ('vgg16', True); a UserError for a name that is not a VGG variant."""
    arch, batch_norm = (name[:-3], True) if name.endswith("_bn") else (name, False)
    if arch not in LAYER_TABLE:
        choices = ", ".join(a + s for a in LAYER_TABLE for s in ("", "_bn"))
        raise UserError(f"arch: {name!r} is not a VGG variant; choose one of {choices}")
    return arch, batch_norm


def torchvision_layout(model_name, num_classes):
    """{torchvision name: (shape, MindSpore name or None when dropped)} for one variant."""
    arch, batch_norm = split_model_name(model_name)
    layout = {}
    index, in_channels = 0, 3
    for item in LAYER_TABLE[arch]:
        if item == "M":
            index += 1
            continue
        conv = f"features.{index}"
        layout[f"{conv}.weight"] = ((item, in_channels, 3, 3), f"{conv}.weight")
        layout[f"{conv}.bias"] = ((item,), f"{conv}.bias")
        index += 1
        if batch_norm:
            bn = f"features.{index}"
            for torch_name, ms_name in BN_NAMES.items():
                layout[f"{bn}.{torch_name}"] = ((item,), f"{bn}.{ms_name}")
            layout[bn + DROPPED_SUFFIX] = ((), None)
            index += 1
        index += 1  # ReLU
        in_channels = item
    for position, (n_in, n_out) in zip((0, 3, 6), ((TORCHVISION_FLAT, HIDDEN), (HIDDEN, HIDDEN),
                                                  (HIDDEN, num_classes))):
        layer = f"classifier.{position}"
        layout[f"{layer}.weight"] = ((n_out, n_in), f"{layer}.weight")
        layout[f"{layer}.bias"] = ((n_out,), f"{layer}.bias")
    return layout


# timm name prefix -> torchvision classifier layer
TIMM_HEAD = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3",
             "head.fc": "classifier.6"}


def from_timm_layout(state_dict):
    """A timm VGG state dict renamed to torchvision's layout (its convolutional classifier
    weights flattened to dense ones: the 7x7 kernel over 512x7x7 features is the dense layer
    over the same values in channel-major order); any other state dict is returned as is."""
    if not any(name.startswith(tuple(TIMM_HEAD)) for name in state_dict):
        return state_dict
    renamed = {}
    for name, value in state_dict.items():
        prefix, dot, suffix = name.rpartition(".")
        if prefix in TIMM_HEAD:
            name = f"{TIMM_HEAD[prefix]}{dot}{suffix}"
            if suffix == "weight" and np.ndim(value) == 4:
                value = np.reshape(value, (np.shape(value)[0], -1))
        renamed[name] = value
    return renamed


def detect_variant(state_dict):
    """(model name such as 'vgg16_bn', class count) read from a torchvision VGG state dict."""
    convs = [k for k, v in state_dict.items()
             if k.startswith("features.") and k.endswith(".weight") and np.ndim(v) == 4]
    head = state_dict.get("classifier.6.weight")
    if not convs or head is None or np.ndim(head) != 2:
        sample = ", ".join(list(state_dict)[:3]) or "no keys"
        raise UserError(f"not a torchvision or timm VGG state dict: expected keys such as "
                        f"features.0.weight and classifier.6.weight (timm: head.fc.weight), "
                        f"found {sample}")
    batch_norm = any(k.endswith(".running_mean") for k in state_dict)
    for arch, count in CONV_COUNTS.items():
        if count == len(convs):
            return arch + ("_bn" if batch_norm else ""), int(np.shape(head)[0])
    raise UserError(f"not a torchvision or timm VGG state dict: {len(convs)} convolutions, but VGG "
                    f"variants have {', '.join(map(str, sorted(CONV_COUNTS.values())))}")


def load_torchvision_weights(state_dict, arch):
    """{MindSpore parameter name: float32 array} from a torchvision VGG state dict.

    `state_dict` maps torchvision names to NumPy arrays; `arch` is the variant it must hold
    ('vgg16_bn' ...). Every name and shape is checked: a missing, extra or misshapen tensor is
    a UserError naming it. The class count is whatever the last classifier layer holds.
    """
    split_model_name(arch)
    found, num_classes = detect_variant(state_dict)
    if found != arch:
        raise UserError(f"the state dict holds {found}, not {arch}; pass --arch={found} "
                        f"or the {arch} weights")
    layout = torchvision_layout(arch, num_classes)
    missing = [name for name in layout if name not in state_dict]
    extra = [name for name in state_dict if name not in layout]
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise UserError(f"the state dict does not match torchvision's {arch}: {'; '.join(parts)}")
    converted = {}
    for torch_name, (shape, ms_name) in layout.items():
        value = np.asarray(state_dict[torch_name])
        if value.shape != shape:
            raise UserError(f"the state dict does not match torchvision's {arch}: {torch_name} "
                            f"has shape {value.shape}, expected {shape}")
        if ms_name is not None:
            converted[ms_name] = np.ascontiguousarray(value, dtype=np.float32)
    return converted
