"""Top-5 classes, with their names, for one image or a folder of images:

    python predict.py --model=CKPT_OR_MINDIR --image=FILE_OR_FOLDER [--class_names=FILE]
                      [--top_k=5] [--config_path=YAML] [--image_size=H,W]
                      [--device_target=CPU|GPU|Ascend] [--device_id=0]
                      [--cpu_precision=float32|bfloat16|auto]

Images are prepared by the ImageNet evaluation transform of src/dataset.py at the network's
input size. A checkpoint's network is described by the config that training stored in it
(`meta.config_yaml`), else by --config_path, else read off its weights (converted torchvision
checkpoints); an exported MindIR (or ONNX) file carries its own graph and input size. Class
names come from --class_names or from class_names.json beside the model (or one folder up,
where train.py writes it for per-rank checkpoint folders): a JSON list, index order.
"""
import argparse
import math
import os
import re
import sys
import tempfile

import numpy as np

from src.class_names import CLASS_NAMES_FILE, find_class_names, read_class_names
from src.cli import add_debug_option, run_entry
from src.errors import UserError
from src.evaluation import softmax, top_k_indices

IMAGENET_CONFIG = "imagenet2012_config.yaml"
CONV_WEIGHT = re.compile(r"^features\.\d+\.weight$")


# ---------------------------------------------------------------- inputs

def list_images(path):
    """[path] for an image file, or the images under a folder (sorted, sub-folders too)."""
    from src.dataset import IMAGE_EXTENSIONS, find_images

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"image: {path} is neither an image file nor a folder")
    found = find_images(path)
    if not found:
        raise UserError(f"image: folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


# ---------------------------------------------------------------- models

def _config_from_yaml_text(text, overrides):
    """The Config a training run stored in its checkpoint, validated like any YAML file."""
    from model_utils.config import get_config

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return get_config([f"--config_path={path}"] + overrides)


def settings_from_weights(entries, path):
    """Config overrides (arch, batch_norm, has_bias, classes, head, input size) read off a
    checkpoint that stores no config, such as one made by convert_torchvision.py."""
    from src.torchvision_weights import CONV_COUNTS
    from src.vgg import HEAD_LAYERS, head_of_weights

    convs = sum(1 for name, value in entries.items()
                if CONV_WEIGHT.match(name) and len(value.shape) == 4)
    arch = next((a for a, count in CONV_COUNTS.items() if count == convs), None)
    kind = head_of_weights(entries)
    first = entries.get("classifier.0.weight")
    if arch is None or kind is None or first is None:
        raise UserError(f"model: {path} is not a VGG classifier checkpoint ({convs} "
                        "convolutions, classifier.0 (and .6) weights needed)")
    head = entries[HEAD_LAYERS[kind][-1] + ".weight"]
    cells = first.shape[1] // 512  # the classifier input is 512 * (H/32) * (W/32)
    side = math.isqrt(cells)
    batch_norm = any(name.startswith("features.") and name.endswith(".moving_mean")
                     for name in entries)
    overrides = [f"--arch={arch}", f"--batch_norm={batch_norm}",
                 f"--has_bias={'features.0.bias' in entries}",
                 f"--num_classes={head.shape[0]}", f"--head={kind}"]
    if side * side == cells:
        overrides.append(f"--image_size={32 * side},{32 * side}")
    return overrides


def network_config(entries, path, config_path=None, image_size=None, cpu_precision="float32"):
    """(Config, where it came from) for a checkpoint: the config training stored in it, else
    the YAML given, else the ImageNet config fitted to what the weights show."""
    from model_utils.config import get_config
    from src import checkpoint as ckpt

    # float32: stock operators, the same on every device; bfloat16 (or auto) runs on the
    # native kernels where the CPU has it (src/native/precision.py)
    kernels = "off" if cpu_precision == "float32" else "auto"
    overrides = [f"--native_kernels={kernels}", f"--cpu_precision={cpu_precision}"]
    if image_size:
        overrides.append(f"--image_size={image_size[0]},{image_size[1]}")
    stored = ckpt.checkpoint_meta(entries).get("config_yaml")
    if stored:
        return _config_from_yaml_text(stored, overrides), "the config stored in the checkpoint"
    if config_path:
        return get_config([f"--config_path={config_path}"] + overrides), config_path
    # overrides last: an explicit --image_size wins over the inferred one
    return get_config([f"--config_path={IMAGENET_CONFIG}"] + settings_from_weights(entries, path)
                      + overrides), "its weights"


class CheckpointModel:
    """A checkpoint's network in inference mode: array (N,3,H,W) -> [logits]."""

    def __init__(self, path, config_path=None, image_size=None, device_target=None,
                 device_id=0, cpu_precision="float32"):
        import mindspore as ms
        from mindspore.nn.utils import no_init_parameters

        from src import checkpoint as ckpt
        from src.factory import build_network, model_name
        from src.runtime import setup_runtime

        entries = ckpt.read_checkpoint(path)
        config, self.source = network_config(entries, path, config_path, image_size,
                                             cpu_precision)
        if device_target is not None:  # else the caller's process has set MindSpore up already
            setup_runtime(device_target, device_id, "graph")
        with no_init_parameters():  # every parameter is loaded next
            self.net = build_network(config)
        ckpt.load_weights(self.net, entries, path)
        self.net.set_train(False)
        self.name = model_name(config)
        self.input_shape = [1, 3, *config.image_size]
        self._tensor = ms.Tensor

    def __call__(self, array):
        return [self.net(self._tensor(array)).asnumpy()]


def load_predictor(path, config_path=None, image_size=None, device_target=None, device_id=0,
                   cpu_precision="float32"):
    """(model, input shape N,C,H,W, description) for a .ckpt, .mindir or .onnx file."""
    from src import infer_runner

    if not os.path.isfile(path):
        raise UserError(f"model: {path} is not a file")
    if path.lower().endswith(".ckpt"):
        model = CheckpointModel(path, config_path, image_size, device_target, device_id,
                                cpu_precision)
        return model, model.input_shape, f"{model.name} (network from {model.source})"
    model = infer_runner.load_model(path, device_target, device_id)
    shape = model.input_shape
    if image_size and (shape is None or len(shape) != 4):
        shape = [1, 3, *image_size]
    shape = infer_runner.check_shape(shape, path)
    return model, shape, os.path.basename(path)


# ---------------------------------------------------------------- prediction

def top_classes(probabilities, k):
    """[(index, probability)] of the k most likely classes, most likely first."""
    return [(int(i), float(probabilities[i])) for i in top_k_indices(probabilities, k)]


def predict(model, shape, image_paths):
    """Yield (image path, class probabilities) one image at a time."""
    from src.infer_runner import imagenet_loader

    load = imagenet_loader(shape)
    batch = shape[0] if shape[0] > 0 else 1
    for path in image_paths:
        image = load(path)
        if batch > 1:  # a graph exported for a fixed batch: fill it with copies
            image = np.repeat(image, batch, axis=0)
        logits = np.asarray(model(image)[0], np.float64)[0]
        yield path, softmax(logits)


def format_prediction(path, top, names):
    lines = [path]
    for index, probability in top:
        name = names[index] if names else f"class {index}"
        lines.append(f"  {probability:.4f}  {name}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", required=True,
                        help="checkpoint (.ckpt) or exported model (.mindir, .onnx)")
    parser.add_argument("--image", required=True, help="an image file or a folder of images")
    parser.add_argument("--class_names", default=None,
                        help=f"JSON list of class names (default: {CLASS_NAMES_FILE} "
                        "beside the model)")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown per image")
    parser.add_argument("--config_path", default=None,
                        help="YAML describing the network of a checkpoint that stores none")
    parser.add_argument("--image_size", type=_size_arg, default=None,
                        help="H,W network input size when the model does not say")
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"))
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--cpu_precision", default="float32",
                        choices=("float32", "bfloat16", "auto"),
                        help="checkpoints on CPU: float32 (stock operators), or bfloat16 "
                        "through the native kernels (auto: where the CPU has AVX512-BF16 or "
                        "AMX-BF16)")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {args.top_k}")
    return args


def _size_arg(text):
    try:
        size = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not H,W") from None
    if len(size) == 1:
        size *= 2
    if len(size) != 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not H,W")
    return size


def run(model_path, image_path, class_names=None, top_k=5, config_path=None, image_size=None,
        device_target="CPU", device_id=0, cpu_precision="float32"):
    """Print the top_k classes of every image; device_target None keeps the MindSpore setup
    the calling process already made."""
    images = list_images(image_path)
    names_file = find_class_names(model_path, class_names)
    model, shape, description = load_predictor(model_path, config_path, image_size,
                                               device_target, device_id, cpu_precision)
    names = None
    for count, (path, probabilities) in enumerate(predict(model, shape, images)):
        if count == 0:
            num_classes = len(probabilities)
            if names_file:
                names = read_class_names(names_file, num_classes)
            where = (f"class names from {names_file}" if names_file else
                     f"no {CLASS_NAMES_FILE} beside the model: classes by index "
                     "(pass --class_names=FILE)")
            print(f"model {description}: {num_classes} classes, input "
                  f"{shape[2]}x{shape[3]}; {where}", flush=True)
        print(format_prediction(path, top_classes(probabilities, top_k), names), flush=True)


def main(argv=None):
    args = parse_args(argv)
    run(args.model, args.image, args.class_names, args.top_k, args.config_path,
        args.image_size, args.device_target, args.device_id, args.cpu_precision)


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
