"""Runs an exported MindIR (MindSpore, any device) or ONNX model (onnxruntime) over the inputs
preprocess.py prepared, writing the same result files as ascend310_infer/, so the offline
preprocess -> infer -> postprocess chain runs on machines without an Ascend 310.

    python -m src.infer_runner --model=vgg16.mindir|vgg16.onnx --input_dir=preprocess_Result/00_data
                               --output_dir=result_Files [--dataset_name=cifar10|imagenet2012]
                               [--device_target=CPU|GPU|Ascend] [--device_id=0]
                               [--input_shape=1,3,32,32]

Inputs: cifar10, every *.bin file of input_dir (float32, normalised CHW); imagenet2012, every
image under input_dir (class sub-folders), prepared as eval.py prepares it. Output: for input
file STEM and model output i, OUTPUT_DIR/STEM_i.bin holding the raw float32 logits.
"""
import argparse
import os
import sys
import time

import numpy as np

from src.cli import add_debug_option, run_entry
from src.errors import UserError


def result_file(output_dir, stem, output_index):
    """Where a result goes; ascend310_infer's ResultPath and postprocess.py use the same name."""
    return os.path.join(output_dir, f"{stem}_{output_index}.bin")


def list_inputs(input_dir, dataset_name):
    """Sorted input files: *.bin in input_dir (cifar10) or the images under it (imagenet2012)."""
    if not os.path.isdir(input_dir):
        raise UserError(f"input_dir: {input_dir} is not a folder")
    if dataset_name == "cifar10":
        files = [os.path.join(input_dir, name) for name in os.listdir(input_dir)
                 if name.endswith(".bin") and not name.startswith(".")
                 and os.path.isfile(os.path.join(input_dir, name))]
        wanted = "*.bin files (run preprocess.py first)"
    else:
        from src.dataset import find_images
        files = find_images(input_dir)
        wanted = "images in class sub-folders"
    if not files:
        raise UserError(f"input_dir: {input_dir} holds no {wanted}")
    return sorted(files)


def mindir_input_shape(path):
    """The first input's shape recorded in a MindIR file (-1 for a free axis), or None."""
    from google.protobuf.message import DecodeError
    try:
        from mindspore.train import mind_ir_pb2  # MindSpore's own schema of the file
        model = mind_ir_pb2.ModelProto()
        with open(path, "rb") as handle:
            model.ParseFromString(handle.read())
        return [int(d) for d in model.graph.input[0].tensor[0].dims] or None
    except (ImportError, IndexError, DecodeError, AttributeError):
        return None


class MindIRModel:
    """An exported MindIR run by MindSpore (mindspore.load + nn.GraphCell)."""

    def __init__(self, path, device_target=None, device_id=0):
        import mindspore as ms
        from mindspore import nn

        from src.runtime import setup_runtime

        if device_target is not None:  # else the caller's process has set MindSpore up already
            setup_runtime(device_target, device_id)
        try:
            self.net = nn.GraphCell(ms.load(path))
        except (RuntimeError, ValueError, TypeError) as err:
            raise UserError(f"model: {path} is not a loadable MindIR "
                            f"({_first_line(err)})") from None
        self.input_shape = mindir_input_shape(path)
        self._tensor = ms.Tensor

    def __call__(self, array):
        outputs = self.net(self._tensor(array))
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        return [out.asnumpy() for out in outputs]


class OnnxModel:
    """An ONNX file run by onnxruntime, on CUDA when that provider is present, else on CPU."""

    def __init__(self, path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX models need onnxruntime: pip install onnxruntime") from None
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as err:  # onnxruntime raises its own types for unreadable models
            raise UserError(f"model: {path} is not a loadable ONNX model "
                            f"({_first_line(err)})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = [d if isinstance(d, int) and d > 0 else -1 for d in first.shape]

    def __call__(self, array):
        return self.session.run(None, {self.input_name: array})


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_model(path, device_target=None, device_id=0):
    if not os.path.isfile(path):
        raise UserError(f"model: {path} is not a file")
    kind = os.path.splitext(path)[1].lower()
    if kind == ".mindir":
        return MindIRModel(path, device_target, device_id)
    if kind == ".onnx":
        return OnnxModel(path)
    raise UserError(f"model: {path} must end in .mindir or .onnx")


def check_shape(shape, model_path):
    """A usable NCHW input shape; only the batch axis may be free (-1)."""
    if shape is None:
        raise UserError(f"model: cannot read the input shape of {model_path}; "
                        "pass --input_shape=N,C,H,W")
    if len(shape) != 4 or any(d < 1 for d in shape[1:]):
        raise UserError(f"model input shape {tuple(shape)} is not N,C,H,W with fixed C, H and W; "
                        "pass --input_shape=N,C,H,W")
    return list(shape)


def read_bin_input(path, shape):
    """A preprocessed float32 file as a batch of the model's per-sample shape."""
    data = np.fromfile(path, dtype=np.float32)
    per_sample = int(np.prod(shape[1:]))
    batch = shape[0] if shape[0] > 0 else data.size // per_sample
    if batch < 1 or data.size != batch * per_sample:
        want = f"{shape[0] * per_sample * 4}" if shape[0] > 0 else f"a multiple of {per_sample * 4}"
        raise UserError(f"{path}: {data.size * 4} bytes, but the model input {tuple(shape)} "
                        f"takes {want} (was the model exported with batch size 1 and this "
                        "image size?)")
    return data.reshape(batch, *shape[1:])


def imagenet_loader(shape):
    """path -> (1, C, H, W) float32: decode, resize, centre crop and normalise as eval.py does."""
    from PIL import Image

    from src.dataset import imagenet_transforms

    ops = imagenet_transforms(False, (shape[2], shape[3]))

    def load(path):
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError(f"{path}: cannot decode image ({err})") from None
        for op in ops:
            array = op(array)
        return np.ascontiguousarray(array, np.float32)[None]
    return load


def run(model_path, input_dir, output_dir, dataset_name="cifar10", device_target=None,
        device_id=0, input_shape=None):
    """Infer every input, write its result files; returns (input count, average ms per input).

    device_target (CPU, GPU, Ascend) sets MindSpore up for a MindIR; None keeps the process's
    current setup (for callers that already use MindSpore).
    """
    if dataset_name not in ("cifar10", "imagenet2012"):
        raise UserError(f"dataset_name: {dataset_name!r} must be cifar10 or imagenet2012")
    files = list_inputs(input_dir, dataset_name)
    model = load_model(model_path, device_target, device_id)
    shape = check_shape(input_shape or model.input_shape, model_path)
    if dataset_name == "cifar10":
        def load(path):
            return read_bin_input(path, shape)
    else:
        load = imagenet_loader(shape)
    os.makedirs(output_dir, exist_ok=True)

    model(load(files[0]))  # warm-up: graph compilation is not inference time
    total = 0.0
    for path in files:
        array = load(path)
        start = time.perf_counter()
        outputs = model(array)
        total += time.perf_counter() - start
        stem = os.path.splitext(os.path.basename(path))[0]
        for index, output in enumerate(outputs):
            np.ascontiguousarray(output, np.float32).tofile(result_file(output_dir, stem, index))
    return len(files), 1000.0 * total / len(files)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", required=True, help="exported .mindir or .onnx file")
    parser.add_argument("--input_dir", required=True,
                        help="cifar10: preprocess_Result/00_data; "
                             "imagenet2012: folder of class folders")
    parser.add_argument("--output_dir", default="./result_Files", help="where result files go")
    parser.add_argument("--dataset_name", default="cifar10",
                        choices=("cifar10", "imagenet2012"))
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"),
                        help="MindSpore device for a MindIR "
                             "(ONNX uses CUDA when present, else CPU)")
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--input_shape", type=_shape_arg, default=None,
                        help="N,C,H,W when the model file does not record it")
    add_debug_option(parser)
    return parser.parse_args(argv)


def _shape_arg(text):
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers") from None
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(f"'{text}' must have four values N,C,H,W")
    return shape


def main(argv=None):
    args = parse_args(argv)
    count, avg_ms = run(args.model, args.input_dir, args.output_dir, args.dataset_name,
                        args.device_target, args.device_id, args.input_shape)
    print(f"wrote results of {count} inputs to {args.output_dir}")
    print(f"Inference avg time: {avg_ms:.3f} ms over {count} inputs")


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
