"""Accuracy of an exported ONNX model on the evaluation dataset, run by onnxruntime (on CUDA
when that provider is present, else on CPU).

There is no separate command: eval.py takes the ONNX file in place of a checkpoint and feeds
it the same evaluation pipeline, so the numbers compare one to one with the checkpoint's:

    python eval.py --config_path=cifar10_config.yaml --data_dir=DATA --image_size=32,32 \
                   --pre_trained=vgg16.onnx [--device_target=CPU]

The model's image size must match the config's image_size. A model exported with a fixed
batch size is fed in chunks of that size (the last one padded with zeros, whose outputs are
dropped); one with a free batch axis (export.py's ONNX) gets whole batches.
"""
import time

import numpy as np

from src.errors import UserError
from src.evaluation import EvalCounts, tta_scores


def load_onnx_model(path, image_size):
    """An onnxruntime model for `path`, checked to take 3 x image_size NCHW inputs."""
    from src.infer_runner import OnnxModel

    model = OnnxModel(path)
    shape = model.input_shape
    height, width = int(image_size[0]), int(image_size[1])
    if len(shape) != 4 or shape[1] != 3 or tuple(shape[2:]) != (height, width):
        raise UserError(f"ONNX model {path} takes inputs of shape {tuple(shape)}, but the "
                        f"evaluation images are 3x{height}x{width}; set --image_size to the "
                        "size the model was exported with")
    return model


def predict(model, images):
    """Logits of `images` (N,3,H,W float32), in chunks when the model's batch axis is fixed."""
    fixed = model.input_shape[0]
    if fixed < 1 or fixed == len(images):
        return np.asarray(model(np.ascontiguousarray(images, np.float32))[0])
    outputs = []
    for start in range(0, len(images), fixed):
        chunk = images[start:start + fixed]
        filled = len(chunk)
        if filled < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - filled, *chunk.shape[1:]),
                                                    chunk.dtype)])
        outputs.append(np.asarray(model(np.ascontiguousarray(chunk, np.float32))[0])[:filled])
    return np.concatenate(outputs)


def evaluate_onnx(model, dataset, flip_tta=False, tta_shift=0):
    """Top-1/top-5 counts of `model` over every batch of `dataset` (columns image, label);
    with flip_tta or tta_shift the scores are evaluation.tta_scores."""
    counts = EvalCounts()
    start = time.perf_counter()
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        scores = tta_scores(lambda x: predict(model, x), images, flip_tta, tta_shift)
        counts.add_batch(scores, labels)
    counts.seconds = time.perf_counter() - start
    return counts
