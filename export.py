"""Export a checkpoint as MindIR, ONNX or AIR:
python export.py --config_path=cifar10_config.yaml --ckpt_file=CKPT --file_name=vgg16
                 --file_format=MINDIR|ONNX|AIR [--export_batch_size=1] [--image_size=224,224]

The graph takes export_batch_size x 3 x image_size float32 images, normalised as in eval.py,
and returns logits. ONNX files leave the batch axis free (input `image`, output `logits`).
The network is always built from MindSpore's own operators (no native custom kernels) in
inference mode, so the file runs wherever MindSpore or onnxruntime does. AIR is written by
MindSpore only on Ascend. MindSpore's ONNX converter has no Erf, so with activation gelu the
ONNX file computes the GELU from operators it does have (see ErfFreeGelu), within 1e-6 of the
exact one.
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


def inference_network(config, device_target):
    """The config's network with the checkpoint's weights, stock operators, eval mode."""
    net = build_network(config.replace(native_kernels="off"), device_target)
    ckpt.load_weights(net, ckpt.read_checkpoint(config.ckpt_file), config.ckpt_file)
    net.set_train(False)
    return net


# Abramowitz and Stegun's formula 7.1.26: erfc(u) ~ t (a1 + t (a2 + ... + t a5)) exp(-u^2),
# t = 1 / (1 + p u), for u >= 0, absolute error under 1.5e-7.
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf_free_gelu_class():
    from mindspore import nn, ops

    class ErfFreeGelu(nn.Cell):
        """The exact GELU, x Phi(x), written without Erf: as x Phi(x) = relu(x) -
        |x| erfc(|x| / sqrt 2) / 2 for either sign of x, with erfc by ERFC_A."""

        def construct(self, x):
            magnitude = ops.abs(x)
            u = magnitude * 0.7071067811865476
            t = ops.div(ops.ones_like(u), 1.0 + ERFC_P * u)  # 1 / (...) would be Reciprocal
            poly = ERFC_A[4]
            for a in ERFC_A[3::-1]:
                poly = a + t * poly
            erfc = t * poly * ops.exp(-(u * u))
            return ops.relu(x) - 0.5 * magnitude * erfc

    return ErfFreeGelu


def replace_exact_gelu(net):
    """Swap every nn.GELU cell of net for an ErfFreeGelu (ONNX export); returns how many."""
    from mindspore import nn

    replacement, count = erf_free_gelu_class(), 0
    for _, cell in list(net.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if not isinstance(child, nn.GELU) or child.approximate != "none":  # "tanh": not exact
                continue
            if isinstance(cell, nn.SequentialCell):
                cell[[c is child for c in cell.cell_list].index(True)] = replacement()
            else:
                setattr(cell, name, replacement())
            count += 1
    return count


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
    if config.file_format == "ONNX" and replace_exact_gelu(net):
        print("ONNX has no Erf here: the GELU is written with Exp (within 1e-6 of the exact "
              "one)", flush=True)
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
