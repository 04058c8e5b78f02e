"""Export a checkpoint as MindIR, ONNX or AIR:
python export.py --config_path=cifar10_config.yaml --ckpt_file=CKPT --file_name=vgg16
                 --file_format=MINDIR|ONNX|AIR [--export_batch_size=1] [--image_size=224,224]

The graph takes export_batch_size x 3 x image_size float32 images, normalised as in eval.py,
and returns logits. ONNX files leave the batch axis free (input `image`, output `logits`).
The network is always built from MindSpore's own operators (no native custom kernels) in
inference mode, so the file runs wherever MindSpore or onnxruntime does. AIR is written by
MindSpore only on Ascend. ONNX is refused for activation gelu, whose Erf MindSpore's ONNX
converter lacks.
"""
import os
import shutil

import numpy as np

from model_utils.entry import run_with_config
from src import checkpoint as ckpt
from src.class_names import CLASS_NAMES_FILE, find_class_names, read_class_names
from src.cli import run_entry
from src.errors import UserError
from src.factory import build_network
from src.runtime import setup_runtime

SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
ONNX_INPUT, ONNX_OUTPUT = "image", "logits"


def output_path(file_name, file_format):
    """Absolute path of the exported file: file_name plus the format's suffix (once)."""
    suffix = SUFFIX[file_format]
    path = os.path.abspath(file_name)
    return path if path.lower().endswith(suffix) else path + suffix


def check_request(config):
    if not config.ckpt_file:
        raise UserError("ckpt_file: export.py needs --ckpt_file=CHECKPOINT")
    if config.file_format == "AIR" and config.device_target != "Ascend":
        raise UserError(f"file_format AIR needs device_target=Ascend (MindSpore writes AIR only "
                        f"there), got {config.device_target}; use --file_format=MINDIR or ONNX")
    if config.file_format == "ONNX" and config.get("activation", "relu") == "gelu":
        # MindSpore 2.10's ONNX converter has no Erf, which the exact GELU is computed with
        raise UserError("file_format ONNX cannot hold activation gelu (MindSpore's ONNX export "
                        "has no Erf operator); use --file_format=MINDIR")


def inference_network(config, device_target):
    """The config's network with the checkpoint's weights, stock operators, eval mode."""
    net = build_network(config.replace(native_kernels="off"), device_target)
    ckpt.load_weights(net, ckpt.read_checkpoint(config.ckpt_file), config.ckpt_file)
    net.set_train(False)
    return net


def export_network(net, example, path, file_format):
    import mindspore as ms

    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"file_name: cannot create folder {folder} ({err.strerror})") from None
    if file_format == "ONNX":
        # A free batch axis in the traced input (not only in dynamic_axes) is what makes the
        # output's batch axis free too, so one file serves any batch size.
        free_batch = ms.Tensor(shape=[None, *example.shape[1:]], dtype=example.dtype)
        ms.onnx.export(net, free_batch, file_name=path, input_names=[ONNX_INPUT],
                       output_names=[ONNX_OUTPUT], dynamic_axes={ONNX_INPUT: {0: "batch"}})
    else:
        ms.export(net, example, file_name=path, file_format=file_format)
    if not os.path.isfile(path):
        raise UserError(f"MindSpore reported no error but {path} was not written")
    return path


def run_export(config):
    import mindspore as ms

    check_request(config)
    runtime = setup_runtime(config.device_target, config.device_id, config.context_mode)
    net = inference_network(config, runtime.device_target)
    height, width = config.image_size
    shape = (config.export_batch_size, 3, height, width)
    example = ms.Tensor(np.zeros(shape, np.float32))
    path = export_network(net, example, output_path(config.file_name, config.file_format),
                          config.file_format)
    batch = "batch free" if config.file_format == "ONNX" else f"batch {shape[0]}"
    print(f"exported {config.file_format} to {path} (input {'x'.join(map(str, shape[1:]))}, "
          f"{batch})", flush=True)
    copy_class_names(config, path)
    return path


def copy_class_names(config, exported):
    """Put the checkpoint's class_names.json beside the exported model, where predict.py and
    inference look for it."""
    source = find_class_names(config.ckpt_file)
    if not source:
        return None
    read_class_names(source, config.num_classes)
    target = os.path.join(os.path.dirname(os.path.abspath(exported)), CLASS_NAMES_FILE)
    if os.path.abspath(source) != target:
        shutil.copyfile(source, target)
    print(f"class names: {target}", flush=True)
    return target


def main():
    run_with_config(run_export)


if __name__ == "__main__":
    run_entry(main)
