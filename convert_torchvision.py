"""Convert torchvision or timm VGG weights into a MindSpore checkpoint of the same variant:

    python convert_torchvision.py --weights=vgg16_bn.pth [--arch=vgg16_bn] [--num_classes=1000]
                                  --output=vgg16_bn.ckpt
    python convert_torchvision.py --weights=model.safetensors --output=vgg16_bn.ckpt

--weights (or --pth) is a state dict saved by PyTorch (.pth, .pt, .bin) or a .safetensors file,
in torchvision's layout or timm's (`pre_logits.fc1/fc2`, `head.fc`). The variant is read from
the file; --arch and --num_classes, when given, must agree with it. A PyTorch file is opened
with torch.load(weights_only=True), which unpickles tensors and plain containers only, so one
that would run code is refused; PyTorch is needed for those files and by this script alone. A
.safetensors file needs no PyTorch. The checkpoint fits `mindspore_hub_conf.create_network(arch)`
(224x224, conv bias) and train.py/eval.py with imagenet2012_config.yaml and the matching
--arch/--batch_norm.
"""
import argparse
import os
import sys
from collections.abc import Mapping

from src import checkpoint as ckpt
from src.cli import add_debug_option, run_entry
from src.errors import UserError
from src.safetensors_io import is_safetensors, read_safetensors
from src.torchvision_weights import (
    detect_variant,
    from_timm_layout,
    load_torchvision_weights,
    split_model_name,
)

# Containers that training scripts commonly wrap a state dict in.
WRAPPER_KEYS = ("state_dict", "model")


# Boilerplate lines of torch.load's weights_only error around the one that says what was refused.
TORCH_LOAD_NOISE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal_reason(err):
    """The informative line of torch.load's multi-line weights_only error: the global or
    pickle operand it refused (e.g. 'Trying to load unsupported GLOBAL posix.system ...')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "nsupported" in line and not line.startswith(TORCH_LOAD_NOISE):
            return line
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line
    return lines[0] if lines else type(err).__name__


def read_state_dict(path):
    """{name: ndarray} of a weights file: .safetensors (by name or by content) read directly,
    anything else as a PyTorch state dict."""
    if path.lower().endswith(".safetensors") or (os.path.isfile(path) and is_safetensors(path)):
        return read_safetensors(path)
    return read_torch_state_dict(path)


def read_torch_state_dict(path):
    """{name: ndarray} of a .pth state dict, loaded with torch.load(weights_only=True)."""
    try:
        import torch
    except ImportError:
        raise UserError("convert_torchvision.py needs PyTorch to read .pth files: "
                        "pip install torch") from None
    if not os.path.isfile(path):
        raise UserError(f"weights: {path} is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike mean "not a safe state dict"
        raise UserError(f"weights: {path} refused by torch.load(weights_only=True), which loads "
                        f"only tensors and plain containers: {_refusal_reason(err)}") from None
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            if len(loaded) == 1 and isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded or \
            not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"weights: {path} holds a {type(loaded).__name__}, not a state dict of "
                        "tensors (save it with torch.save(model.state_dict(), path))")
    return {str(name): _to_numpy(tensor) for name, tensor in loaded.items()}


def _to_numpy(tensor):
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()  # float16/bfloat16 files; NumPy has no bfloat16
    return tensor.numpy()


def convert(pth, output, arch=None, num_classes=None):
    """Write `output` from the torchvision or timm weights in `pth`; returns (variant, class
    count)."""
    import mindspore as ms

    if arch:
        split_model_name(arch)
    state_dict = from_timm_layout(read_state_dict(pth))
    found, classes = detect_variant(state_dict)
    if arch and arch != found:
        raise UserError(f"weights: {pth} holds {found} weights, not --arch={arch}; "
                        f"pass --arch={found} or the {arch} file")
    if num_classes is not None and num_classes != classes:
        raise UserError(f"weights: {pth} has a {classes}-class classifier, not --num_classes="
                        f"{num_classes}; convert as is and fine-tune with "
                        "--reinit_classifier=True for another class count")
    weights = load_torchvision_weights(state_dict, found)
    params = [{"name": name, "data": ms.Tensor(value)} for name, value in weights.items()]
    ckpt.save_checkpoint(params, output, {"arch": found})
    return found, classes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="torchvision or timm VGG weights (.pth or .safetensors)")
    source.add_argument("--pth", dest="weights", help="the same as --weights")
    parser.add_argument("--output", required=True, help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--arch", default=None,
                        help="expected variant (vgg11 ... vgg19_bn); read from the file if absent")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="expected class count of the classifier (checked, not changed)")
    add_debug_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    output = args.output if args.output.endswith(".ckpt") else args.output + ".ckpt"
    found, classes = convert(args.weights, output, args.arch, args.num_classes)
    print(f"converted {args.weights} ({found}, {classes} classes) to {os.path.abspath(output)}",
          flush=True)


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
