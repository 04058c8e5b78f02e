"""The CPU benchmark's workers. Each runs in a process of its own (harness.run_child starts
`benchmark.py --worker NAME --spec JSON`) and ends with harness.emit: this repository's
training step, evaluation and ONNX export, PyTorch's training and evaluation, onnxruntime's
evaluation, the fp32 and bf16 matrix-multiply peaks and the data pipelines. Training and
evaluation run in float32, or in bfloat16 when the spec asks ("precision": "bfloat16" for
this repository's cpu_precision, "bf16": true for PyTorch's bfloat16 autocast). The helpers
that build batches and train steps serve the GPU workers too.

This repository's workers go through its own code: config from model_utils.config, network
from src.factory.build_network, train step from src.trainer.build_train_step with the host
dropout masks Trainer feeds, graph mode from src.runtime.setup_runtime, and oneDNN's ISA
chosen as the entry points choose it.
"""
import os

import cifar_bin
import machine
import native_kernels
from harness import CONFIG, ISA_VAR, emit, timed, timed_steps

NUM_CLASSES = 10
TRAIN_STEPS_PER_EPOCH = 50000 // 64  # the learning-rate array as for CIFAR-10 at batch 64


# ------------------------------------------------------------------- shared helpers

def random_images(batch, image):
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch, 3, image, image), dtype=np.float32)


def random_batches(count, batch, image, seed=0):
    """Normalised-looking images whose label shows as a colour shift (learnable data: the
    losses then follow the same smooth path on both kernels instead of amplifying rounding
    differences the way random labels do); the speed does not depend on the values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = rng.standard_normal((NUM_CLASSES, 3, 1, 1)).astype(np.float32)
    batches = []
    for _ in range(count):
        labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
        noise = rng.standard_normal((batch, 3, image, image), dtype=np.float32)
        batches.append((np.ascontiguousarray(0.5 * noise + colours[labels]), labels))
    return batches


def torch_batches(batch, image):
    """The two random_batches as PyTorch tensors (int64 labels)."""
    import torch

    return [(torch.from_numpy(x), torch.from_numpy(y).long())
            for x, y in random_batches(2, batch, image)]


def ms_batches(data):
    import mindspore as ms

    return [(ms.Tensor(x), ms.Tensor(y)) for x, y in data]


def repo_train_step(net, config, device_target):
    """(train step, host dropout masks or None), as Trainer builds them."""
    import logging

    from src.lr_schedule import learning_rates
    from src.trainer import DropoutMasks, build_train_step, uses_dropout

    lr = learning_rates(config, TRAIN_STEPS_PER_EPOCH)
    step = build_train_step(net, config, lr, device_target, logging.getLogger("vgg.benchmark"))
    return step, (DropoutMasks(config.seed, 0) if uses_dropout(net) else None)


def ms_step_runner(step, batches, masks):
    """run_step for timed_steps: this repository's train step on the two batches in turn,
    with the host-drawn dropout masks as Trainer feeds them; the loss read back."""
    def run_step(global_step):
        image, label = batches[global_step % 2]
        if masks:
            output = step(image, label, *masks(global_step, image.shape[0]))
        else:
            output = step(image, label)
        return float((output[0] if isinstance(output, tuple) else output).asnumpy())
    return run_step


def repo_config(image, batch, kernels="auto", precision="float32", overrides=(), path=CONFIG):
    """cifar10_config.yaml (or the config at `path`) on CPU at this size and batch, the native
    kernels auto, on or off, in the cpu_precision `precision`, then `overrides` (`--key=value`
    options)."""
    from model_utils.config import get_config

    return get_config([f"--config_path={path}", "--device_target=CPU",
                       f"--image_size={image},{image}", f"--batch_size={batch}",
                       native_kernels.config_option(kernels),
                       native_kernels.precision_option(precision), *overrides])


def start_repo_runtime(config, native_only=False):
    """oneDNN's ISA as the entry points choose it (uncapped with `native_only`: a process that
    runs no stock convolution, as for a network of native cells), then the runtime as train.py
    sets it."""
    if native_only:
        native_kernels.lift_onednn_isa_cap()
    else:
        native_kernels.cap_onednn_isa()
    from src.runtime import setup_runtime

    setup_runtime("CPU", mode=config.context_mode, seed=config.seed)


# ------------------------------------------------------------------- training

def _perturbed(data, perturb):
    """Rounding-sized noise on the inputs: the loss check's sensitivity reference."""
    import numpy as np

    noise = np.random.default_rng(7)
    return [(x * (1 + perturb * noise.standard_normal(x.shape, dtype=np.float32)), y)
            for x, y in data]


def worker_ms_train(spec):
    """This repository's training step, as Trainer._run_epoch drives it, in the cpu_precision
    spec["precision"] asks for (float32 by default); reports the precision it resolved to."""
    from src.factory import build_network

    config = repo_config(spec["image"], spec["batch"], spec["fast_conv"],
                         spec.get("precision", "float32"), spec.get("overrides", ()),
                         spec.get("config_path", CONFIG))
    start_repo_runtime(config)
    import mindspore as ms

    net = build_network(config, "CPU")
    precision, precision_detail = native_kernels.network_precision(net)
    fast, convs = native_kernels.count_native_convolutions(net)
    step, masks = repo_train_step(net, config, "CPU")
    data = random_batches(2, spec["batch"], spec["image"])
    if spec.get("perturb"):
        data = _perturbed(data, spec["perturb"])
    losses, times, first_done, first_step_s = timed_steps(
        ms_step_runner(step, ms_batches(data), masks), spec["warmup"], spec["steps"])
    emit({"side": "repo", "fast_conv": spec["fast_conv"], "perturb": spec.get("perturb"),
          "fast_cells": fast, "conv_cells": convs, "precision": precision,
          "precision_detail": precision_detail,
          "activation_layout": native_kernels.activation_layout(precision) if fast else None,
          "step_s": times, "losses": losses,
          "first_step_s": first_step_s, "first_step_done": first_done,
          "ms_threads": ms.get_context("runtime_num_threads"),
          "fast_conv_onednn": native_kernels.onednn_version() if fast else None})


def worker_torch_train(spec):
    """PyTorch eager's training step, float32 or (spec["bf16"]) under bfloat16 autocast."""
    import torch
    import torch_vgg

    torch.manual_seed(1)
    net = torch_vgg.vgg16_bn(NUM_CLASSES, (spec["image"], spec["image"]))
    net.train()
    bf16 = spec.get("bf16", False)
    step = torch_vgg.make_train_step(net, torch_vgg.make_optimizer(net), bf16=bf16)
    batches = torch_batches(spec["batch"], spec["image"])
    losses, times, first_done, first_step_s = timed_steps(
        lambda i: step(*batches[i % 2]), spec["warmup"], spec["steps"])
    emit({"side": "torch", "autocast": "bfloat16" if bf16 else None, "step_s": times,
          "losses": losses, "first_step_s": first_step_s, "first_step_done": first_done,
          "torch_threads": torch.get_num_threads(),
          "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()})


# ------------------------------------------------------------------- inference

def _eval_cases(spec):
    """[(image, batch, warmup, reps)] of an evaluation worker."""
    return [tuple(case) for case in spec["cases"]]


def worker_ms_eval(spec):
    """Inference as eval.py runs it: the config's network, set_train(False), forward; in the
    cpu_precision spec["precision"] asks for (float32 by default)."""
    import mindspore as ms

    from src.factory import build_network

    out, fast_info, nets, precisions = {}, {}, {}, {}
    for image, batch, warmup, reps in _eval_cases(spec):
        config = repo_config(image, batch, precision=spec.get("precision", "float32"))
        if image not in nets:
            if not nets:
                start_repo_runtime(config)
            nets[image] = build_network(config, "CPU")
            nets[image].set_train(False)
            fast_info[image] = native_kernels.count_native_convolutions(nets[image])
            precisions[image] = native_kernels.network_precision(nets[image])
        net, x = nets[image], ms.Tensor(random_images(batch, image))
        out[f"{image}x{batch}"] = timed(lambda net=net, x=x: net(x).asnumpy(), warmup, reps)
    resolved = _one_precision(precisions.values())
    emit({"side": "repo", "times": out, **resolved,
          "fast_cells": {str(k): v for k, v in fast_info.items()},
          "activation_layout": native_kernels.activation_layout(resolved["precision"])
          if any(fast for fast, _ in fast_info.values()) else None})


def _one_precision(resolved):
    """{"precision", "precision_detail"} of a process's networks: bfloat16 only when every
    one computes in it, else float32 with the first one's reason."""
    resolved = list(resolved)
    fallback = [pair for pair in resolved if pair[0] != "bfloat16"]
    precision, detail = (fallback or resolved or [("float32", "no network")])[0]
    return {"precision": precision, "precision_detail": detail}


def worker_torch_eval(spec):
    """PyTorch eager inference (eval, no_grad), float32 or (spec["bf16"]) under bfloat16
    autocast."""
    import torch
    import torch_vgg

    out, nets = {}, {}
    bf16 = spec.get("bf16", False)
    torch.manual_seed(1)
    for image, batch, warmup, reps in _eval_cases(spec):
        if image not in nets:
            nets[image] = torch_vgg.vgg16_bn(NUM_CLASSES, (image, image)).eval()
        forward = torch_vgg.make_forward(nets[image], bf16=bf16)
        x = torch.from_numpy(random_images(batch, image))
        out[f"{image}x{batch}"] = timed(lambda forward=forward, x=x: forward(x).numpy(),
                                        warmup, reps)
    emit({"side": "torch", "autocast": "bfloat16" if bf16 else None, "times": out,
          "torch_threads": torch.get_num_threads()})


def worker_onnx_export(spec):
    """This repository's ONNX export (export.py's export_network) of a fresh network per size,
    built with MindSpore's own operators as export.py builds it."""
    import mindspore as ms
    import numpy as np

    import export
    from src.factory import build_network

    paths = {}
    for i, image in enumerate(spec["images"]):
        config = repo_config(image, 1, "off")
        if i == 0:
            start_repo_runtime(config)
        net = build_network(config, "CPU")
        net.set_train(False)
        example = ms.Tensor(np.zeros((1, 3, image, image), np.float32))
        path = os.path.join(spec["folder"], f"vgg16_bn_{image}.onnx")
        paths[str(image)] = export.export_network(net, example, path, "ONNX")
    emit({"paths": paths})


def worker_ort_eval(spec):
    """onnxruntime through the repository's own runner (src.infer_runner.OnnxModel)."""
    import onnxruntime

    from src.infer_runner import OnnxModel

    out, models = {}, {}
    for image, batch, warmup, reps in _eval_cases(spec):
        if image not in models:
            models[image] = OnnxModel(spec["paths"][str(image)])
        model, x = models[image], random_images(batch, image)
        out[f"{image}x{batch}"] = timed(lambda model=model, x=x: model(x), warmup, reps)
    emit({"side": "onnxruntime", "times": out, "onnxruntime": onnxruntime.__version__})


# ------------------------------------------------------------------- machine and data

def worker_sgemm(spec):
    """fp32 matrix multiply rate, n x n by n x n, with numpy and with torch (GFLOP/s)."""
    emit(machine.sgemm_gflops(spec["n"], spec["reps"]))


def worker_torch_bf16_matmul(spec):
    """PyTorch's bfloat16 matrix multiply rate, n x n by n x n (GFLOP/s)."""
    emit({"n": spec["n"], "torch_bf16_gflops": machine.bf16_matmul_gflops(spec["n"],
                                                                          spec["reps"])})


def worker_ms_bf16_matmul(spec):
    """This repository's native dense kernel (oneDNN inner product) in bfloat16 on an n x n
    input and n x n weights (GFLOP/s; its float32 -> bfloat16 casts of input and weights
    included), in graph mode as the network runs it."""
    import mindspore as ms
    import numpy as np

    start_repo_runtime(repo_config(32, 1), native_only=True)
    n = spec["n"]
    if not native_kernels.bf16_isa():
        emit({"n": n, "native_bf16_gflops": None, "unavailable": "no bfloat16 instructions for "
              f"oneDNN in this process ({ISA_VAR}={os.environ.get(ISA_VAR)})"})
        return
    cell = native_kernels.native_dense_cell(n, n, "bfloat16")
    x = ms.Tensor(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    emit({"n": n, "native_bf16_gflops": machine.matmul_gflops(lambda: cell(x).asnumpy(), n,
                                                               spec["reps"])})


def _cifar_source(spec):
    """(CIFAR-10 root, what it holds): `cifar_records` generated records, else 50,000."""
    import bench_data

    count = spec["cifar_records"]
    if not count:
        return bench_data.cifar_data(spec["work"])
    root = os.path.join(spec["work"], f"cifar_{count}")
    return cifar_bin.write_random_training_set(root, count), "generated"


def _passes(make_data, reps):
    """[(images/s, images)] of `reps` passes, each over a fresh pipeline."""
    import bench_data

    return [bench_data.images_per_second(make_data()) for _ in range(reps)]


def worker_data(spec):
    """Images/s of the CIFAR-10 training pipeline and of the ImageNet folder pipeline."""
    import bench_data

    from src import dataset as D

    cifar_root, kind = _cifar_source(spec)

    def cifar(batches):
        data = D.create_dataset("cifar10", cifar_root, batch_size=64, training=True,
                                image_size=(32, 32))
        return data.take(batches) if batches else data

    _passes(lambda: cifar(2), 1)  # warm-up: file cache, imports
    cifar_runs = _passes(lambda: cifar(spec["cifar_batches"]), spec["cifar_reps"])
    folder = os.path.join(spec["work"], f"imagenet_{spec['jpegs']}", D.IMAGENET_TRAIN_DIR)
    bench_data.make_jpegs(folder, spec["jpegs"])

    def imagenet():
        return D.create_dataset("imagenet2012", os.path.dirname(folder),
                                batch_size=spec["imagenet_batch"], training=True,
                                image_size=(224, 224), num_classes=1000)

    _passes(imagenet, 1)  # warm-up
    imagenet_runs = _passes(imagenet, spec["imagenet_reps"])
    emit({"cifar_data": kind, "workers": D.default_workers(),
          "cifar_images_per_s": [rate for rate, _ in cifar_runs],
          "cifar_images": cifar_runs[0][1],
          "imagenet_images_per_s": [rate for rate, _ in imagenet_runs],
          "imagenet_images": imagenet_runs[0][1]})


WORKERS = {"ms_train": worker_ms_train, "torch_train": worker_torch_train,
           "ms_eval": worker_ms_eval, "torch_eval": worker_torch_eval,
           "onnx_export": worker_onnx_export, "ort_eval": worker_ort_eval,
           "sgemm": worker_sgemm, "torch_bf16_matmul": worker_torch_bf16_matmul,
           "ms_bf16_matmul": worker_ms_bf16_matmul, "data": worker_data}
