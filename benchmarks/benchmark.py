"""This repository against PyTorch eager (and onnxruntime) on the same machine, in one run.

    python benchmarks/benchmark.py [--quick] [--out benchmarks/results.json] [--work DIR]
    python benchmarks/benchmark.py --device gpu [--quick] [--out benchmarks/results_gpu.json]

What is measured (VGG16-BN, float32, 10 classes, the cifar10_config.yaml recipe):

- training images/s at 32x32 batch 64 and 224x224 batch 8 (not with --quick): this
  repository through its own code (config from model_utils.config, network from
  src.factory.build_network, train step from src.trainer.build_train_step with host dropout
  masks as Trainer feeds them, graph mode from src.runtime.setup_runtime), with the
  convolution kernels the factory picks (fast_conv=auto) and with fast_conv=off (stock
  MindSpore); PyTorch eager with the same architecture (benchmarks/torch_vgg.py), loss,
  momentum SGD (0.9, weight decay 5e-4 on weights) and batch; the fraction of the machine's
  fp32 peak (4096x4096 sgemm, numpy and torch, best of the two) that each reaches;
- the losses of the first steps with fast_conv=auto and off from the same seed and data;
- evaluation images/s at 32x32 batch 256 and 224x224 batch 32, and batch-1 latency at
  224x224: this repository (net.set_train(False), forward, as eval.py), PyTorch eager
  (eval, no_grad) and onnxruntime on this repository's ONNX export (export.py's function,
  a fresh network with MindSpore's own operators);
- time from process start to the first finished training step: (a) train.py itself on a
  generated 64-image CIFAR-10 set with --max_epoch=1 (one step per epoch, so its first
  `epoch: 1 step: 1, loss is` line comes right after the first step), (b) the training
  processes above (import, build, compile, one step), the same for PyTorch;
- peak resident memory (ru_maxrss) of the training processes, both sides;
- images/s of the CIFAR-10 training pipeline alone (one epoch of 50,000 images, or part of
  it with --quick) and of the ImageNet folder pipeline alone (generated JPEGs, 224x224),
  via src.dataset.create_dataset.

Every measurement runs in its own process: ONEDNN_MAX_CPU_ISA is process-wide, and the
repository sets it when `src` is imported (left to the repository here, as train.py does),
while PyTorch runs with the machine default (the variable removed). Timings are medians
after warm-up. Figures depend on what else the machine runs: the load average is recorded.

With --device gpu (a CUDA GPU that PyTorch sees; otherwise one line and exit status 2), in
mixed precision as the upstream model zoo trains on GPUs:

- training images/s and ms/step of VGG16 at 224x224 batch 32 (imagenet2012_config.yaml, the
  case of the upstream figure: 81 ms/step on a V100, published, not measured here, shown
  beside) and VGG16-BN at 32x32 batch 64 (cifar10_config.yaml): this repository with
  device_target GPU and amp_level O2 through setup_runtime, build_network and
  build_train_step (the config's loss scale); PyTorch with torch.autocast float16 and a
  GradScaler, the config's loss and momentum SGD; PyTorch float32 as a reference row;
- evaluation images/s at 32x32 batch 256 and 224x224 batch 32, batch-1 latency at 224x224;
- process start to first training step and peak GPU memory of the training processes.

The GPU timings synchronise the device around every timed call. The parent process and the
PyTorch workers never import MindSpore: where MindSpore is missing or has no usable GPU
backend, this repository's column reads 'unavailable: <reason>' and the PyTorch figures stand
alone (exit status 0 unless a PyTorch measurement failed).
"""
import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(ROOT, "cifar10_config.yaml")
RESULT_MARK = "@@BENCH_RESULT@@ "
ISA_VAR = "ONEDNN_MAX_CPU_ISA"
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"]
NUM_CLASSES = 10
TRAIN_STEPS_PER_EPOCH = 50000 // 64  # the learning-rate array as for CIFAR-10 at batch 64
# Relative input noise of the loss check's sensitivity reference: the size of the forward
# differences the native kernels legitimately have (tests/test_native_kernels.py: up to
# 1.5e-5 in the VGG16 feature chain's output, from BatchNorm's float32 batch statistics).
# Such differences flip the odd ReLU whose input is within rounding of 0, which moves the
# second loss of a small batch by ~1e-3; 1e-6 of noise flips about ten times fewer and so
# under-stated that spread (the 4-image smoke run: native 1.7e-3, reference 1.1e-5).
PERTURB = 1e-5
FORWARD_RTOL = 1e-5  # first loss: the forward pass from identical weights and data
REFERENCE_FACTOR = 10  # later losses: this many times the reference's spread
FIRST_STEP_LINE = re.compile(r"^epoch: 1 step: 1, loss is ")


LOSS_CHECK_RULE = (
    "relative difference d_i = |auto_i - off_i| / |off_i| of the first n training losses "
    "(fast_conv=auto vs off, same seed, weights and data); step 1 (the forward pass alone) "
    "passes when d_1 <= forward_rtol; step i > 1 passes when d_i <= max(rtol, "
    "reference_factor * max(r_1..r_i)), where r_j = |ref_j - off_j| / |off_j| and ref is the "
    "fast_conv=off run again with inputs multiplied by (1 + perturbation * standard normal "
    "noise) (without that run: d_i <= rtol); the check passes when all n steps were run, are "
    "finite and pass")


def compare_losses(auto, off, reference, steps, rtol, forward_rtol=FORWARD_RTOL,
                   factor=REFERENCE_FACTOR, perturbation=PERTURB):
    """The benchmark's loss check (LOSS_CHECK_RULE) on loss sequences.

    Early training of this recipe amplifies rounding differences quickly (a 1e-6 relative
    change of the inputs moves the 4th loss by a few %), so a fixed tolerance says little
    after the first steps; the allowance is measured instead, as the spread the perturbed
    stock run shows at the same step or earlier. A wrong gradient shows at the second loss
    already, far above it; a wrong forward pass at the first.
    Returns the report entry: inputs, per-step differences and allowances, failing steps
    (1-based) and "match"."""
    a, b = [float(v) for v in auto[:steps]], [float(v) for v in off[:steps]]
    n = min(len(a), len(b))
    diffs = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)]
    allowed = [rtol] * n
    result = {"checked": True, "steps": n, "steps_required": steps, "fast_conv_auto": a,
              "fast_conv_off": b, "relative_difference": diffs,
              "max_relative_difference": max(diffs) if diffs else None,
              "forward_rtol": forward_rtol, "rtol": rtol, "reference_factor": factor,
              "reference_perturbation": perturbation, "rule": LOSS_CHECK_RULE}
    if reference is not None:
        c = [float(v) for v in reference[:steps]]
        ref = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(c, b)]
        running = 0.0
        for i in range(n):
            if i < len(ref):
                running = max(running, ref[i])
                allowed[i] = max(rtol, factor * running)
            else:  # no reference for this step: the fixed tolerance
                allowed[i] = rtol
        result.update({"reference_losses": c, "reference_relative_difference": ref})
    if n:
        allowed[0] = forward_rtol
    result["allowed"] = allowed
    # `not d <= t` also catches NaN (a NaN loss or a NaN reference fails)
    failed = [i + 1 for i, (d, t) in enumerate(zip(diffs, allowed)) if not d <= t]
    if n < steps:
        result["problem"] = f"only {n} of {steps} losses to compare"
    result["failed_steps"] = failed
    result["match"] = n == steps and n > 0 and not failed
    return result


def loss_check_failure(check):
    """One line saying why the loss check failed, or None when it passed or did not run."""
    if not check.get("checked") or check.get("match"):
        return None
    if check.get("problem"):
        return f"loss check failed: {check['problem']}"
    details = ", ".join(f"step {i}: {check['relative_difference'][i - 1]:.2e} > "
                        f"{check['allowed'][i - 1]:.2e}" for i in check["failed_steps"])
    return ("loss check failed: fast_conv=auto and fast_conv=off losses differ beyond the "
            f"allowed relative difference ({details})")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one run."""
    name: str = "full"
    train_image: int = 32
    train_batch: int = 64
    train_rounds: int = 2          # processes per side, alternating the order
    train_warmup: int = 2          # untimed steps after the first (compiling) one
    train_steps: int = 8           # timed steps per process
    train224: bool = True
    train224_batch: int = 8
    train224_warmup: int = 1
    train224_steps: int = 3
    loss_check_steps: int = 5
    loss_rtol: float = 1e-3
    eval_batch: int = 256
    eval_warmup: int = 1
    eval_reps: int = 5
    eval224: bool = True
    eval224_batch: int = 32
    eval224_reps: int = 3
    latency_image: int = 224
    latency_warmup: int = 3
    latency_reps: int = 10
    trainpy_runs: int = 2
    cifar_records: int = 0         # 0: 50,000 (bench_data.cifar_data), else generated
    cifar_batches: int = 0         # 0: a whole epoch
    cifar_reps: int = 3
    jpegs: int = 300
    imagenet_batch: int = 32
    imagenet_reps: int = 3
    sgemm_n: int = 4096
    sgemm_reps: int = 3
    timeout_s: int = 900


FULL = Plan()
QUICK = Plan(name="quick", train_rounds=1, train_warmup=1, train_steps=3, train224=False,
             eval_reps=2, eval224_reps=2, latency_warmup=2, latency_reps=5, trainpy_runs=1,
             cifar_batches=120, cifar_reps=2, jpegs=96, imagenet_reps=2, timeout_s=600)


# ------------------------------------------------------------------- arithmetic

def vgg_macs(layer_cfg=VGG16, image=(32, 32), num_classes=NUM_CLASSES):
    """Multiply-adds of one forward pass of one image (convolutions 3x3 'same', dense)."""
    height, width = image
    channels, macs = 3, 0
    for item in layer_cfg:
        if item == "M":
            height, width = height // 2, width // 2
            continue
        macs += height * width * channels * item * 9
        channels = item
    flat = channels * height * width
    macs += flat * 4096 + 4096 * 4096 + 4096 * num_classes
    return macs


def train_flops_per_image(image):
    """Forward + backward is about 3x the forward's multiply-adds, 2 FLOP each."""
    return 3 * 2 * vgg_macs(image=(image, image))


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


# ------------------------------------------------------------------- child processes

def child_env(kind):
    """Environment of a child: 'repo' (the repository decides the oneDNN ISA, as train.py),
    'repo_stock' (also FAST_CONV=0) or 'torch' (machine default ISA: the variable removed)."""
    env = dict(os.environ)
    env.setdefault("GLOG_v", "3")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if kind == "torch":
        env.pop(ISA_VAR, None)
    elif kind == "repo_stock":
        env["FAST_CONV"] = "0"
    return env


def run_child(worker, spec, kind, work, timeout):
    """Runs `worker` in a fresh interpreter; returns its result dict (or {'error': ...}) with
    'launch_to_first_step_s' when the worker reported the wall time of its first step."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--spec", json.dumps(spec)]
    launch = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(kind),
                              cwd=work, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{worker}: timed out after {timeout} s"}
    wall = time.time() - launch
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["process_wall_s"] = wall
            if "first_step_done" in result:
                result["launch_to_first_step_s"] = result.pop("first_step_done") - launch
            return result
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-6:]
    return {"error": f"{worker} exited with {proc.returncode}: " + " | ".join(tail)}


def emit(result):
    import resource

    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.setdefault("isa_env", os.environ.get(ISA_VAR))
    print(RESULT_MARK + json.dumps(result), flush=True)


def _timed(fn, warmup, reps):
    """Seconds of each of `reps` calls of fn() after `warmup` untimed ones."""
    return _timed_sync(fn, warmup, reps, lambda: None)


def _timed_sync(fn, warmup, reps, sync):
    """As _timed, with the device drained before and after each timed call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _timed_steps(run_step, warmup, steps, sync=lambda: None):
    """Runs 1 + warmup + steps training steps; run_step(i) does step i and returns its loss.
    Returns (losses, seconds of each step after the warm-up, wall clock when the first step
    finished, seconds of the first step)."""
    losses, times = [], []
    first_done = first_step_s = None
    for i in range(1 + warmup + steps):
        sync()
        start = time.perf_counter()
        losses.append(run_step(i))
        sync()
        elapsed = time.perf_counter() - start
        if i == 0:
            first_done, first_step_s = time.time(), elapsed
        elif i > warmup:
            times.append(elapsed)
    return losses, times, first_done, first_step_s


def _ms_step_runner(step, batches, masks):
    """run_step for _timed_steps: this repository's train step on the two batches in turn,
    with the host-drawn dropout masks as Trainer feeds them; the loss read back."""
    def run_step(global_step):
        image, label = batches[global_step % 2]
        if masks:
            output = step(image, label, *masks(global_step, image.shape[0]))
        else:
            output = step(image, label)
        return float((output[0] if isinstance(output, tuple) else output).asnumpy())
    return run_step


def _random_batches(count, batch, image, seed=0):
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


def _repo_config(image, batch, fast_conv="auto"):
    from model_utils.config import get_config

    return get_config([f"--config_path={CONFIG}", "--device_target=CPU",
                       f"--image_size={image},{image}", f"--batch_size={batch}",
                       f"--fast_conv={fast_conv}"])


def _fast_cells(net):
    convs = [cell for _, cell in net.cells_and_names() if hasattr(cell, "conv2d")]
    return sum(1 for c in convs if getattr(c, "uses_fast_path", False)), len(convs)


def worker_ms_train(spec):
    """This repository's training step, as Trainer._run_epoch drives it."""
    import logging

    import numpy as np

    import src  # noqa: F401  (the repository's oneDNN ISA choice, as in train.py)
    import mindspore as ms
    from src.factory import build_network
    from src.lr_schedule import learning_rates
    from src.runtime import setup_runtime
    from src.trainer import DropoutMasks, build_train_step, uses_dropout

    config = _repo_config(spec["image"], spec["batch"], spec["fast_conv"])
    setup_runtime("CPU", mode=config.context_mode, seed=config.seed)
    net = build_network(config, "CPU")
    fast, convs = _fast_cells(net)
    log = logging.getLogger("vgg.benchmark")
    step = build_train_step(net, config, learning_rates(config, TRAIN_STEPS_PER_EPOCH), "CPU", log)
    masks = DropoutMasks(config.seed, 0) if uses_dropout(net) else None
    data = _random_batches(2, spec["batch"], spec["image"])
    if spec.get("perturb"):  # rounding-sized noise on the inputs: the sensitivity reference
        data = [(x * (1 + spec["perturb"] * np.random.default_rng(7).standard_normal(
            x.shape, dtype=np.float32)), y) for x, y in data]
    batches = [(ms.Tensor(x), ms.Tensor(y)) for x, y in data]
    losses, times, first_done, first_step_s = _timed_steps(
        _ms_step_runner(step, batches, masks), spec["warmup"], spec["steps"])
    from src.ops import onednn_version
    emit({"side": "repo", "fast_conv": spec["fast_conv"], "perturb": spec.get("perturb"),
          "fast_cells": fast, "conv_cells": convs,
          "step_s": times, "losses": losses, "first_step_s": first_step_s,
          "first_step_done": first_done, "ms_threads": ms.get_context("runtime_num_threads"),
          "fast_conv_onednn": onednn_version() if fast else None})


def worker_torch_train(spec):
    import torch

    sys.path.insert(0, HERE)
    import torch_vgg

    torch.manual_seed(1)
    net = torch_vgg.vgg16_bn(NUM_CLASSES, (spec["image"], spec["image"]))
    net.train()
    step = torch_vgg.make_train_step(net, torch_vgg.make_optimizer(net))
    batches = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in
               _random_batches(2, spec["batch"], spec["image"])]
    losses, times, first_done, first_step_s = _timed_steps(
        lambda i: step(*batches[i % 2]), spec["warmup"], spec["steps"])
    emit({"side": "torch", "step_s": times, "losses": losses, "first_step_s": first_step_s,
          "first_step_done": first_done, "torch_threads": torch.get_num_threads(),
          "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()})


def _eval_cases(spec):
    """[(image, batch, warmup, reps)] of an evaluation worker."""
    return [tuple(case) for case in spec["cases"]]


def worker_ms_eval(spec):
    """Inference as eval.py runs it: the config's network, set_train(False), forward."""
    import numpy as np

    import src  # noqa: F401
    import mindspore as ms
    from src.factory import build_network
    from src.runtime import setup_runtime

    out, fast_info = {}, {}
    nets = {}
    for image, batch, warmup, reps in _eval_cases(spec):
        config = _repo_config(image, batch)
        if image not in nets:
            if not nets:
                setup_runtime("CPU", mode=config.context_mode, seed=config.seed)
            nets[image] = build_network(config, "CPU")
            nets[image].set_train(False)
            fast_info[image] = _fast_cells(nets[image])
        net = nets[image]
        x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, image, image),
                                                                 dtype=np.float32))
        out[f"{image}x{batch}"] = _timed(lambda: net(x).asnumpy(), warmup, reps)
    emit({"side": "repo", "times": out, "fast_cells": {str(k): v for k, v in fast_info.items()}})


def worker_torch_eval(spec):
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_vgg

    out, nets = {}, {}
    torch.manual_seed(1)
    for image, batch, warmup, reps in _eval_cases(spec):
        if image not in nets:
            nets[image] = torch_vgg.vgg16_bn(NUM_CLASSES, (image, image)).eval()
        net = nets[image]
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (batch, 3, image, image), dtype=np.float32))

        def forward():
            with torch.no_grad():
                return net(x).numpy()
        out[f"{image}x{batch}"] = _timed(forward, warmup, reps)
    emit({"side": "torch", "times": out, "torch_threads": torch.get_num_threads()})


def worker_onnx_export(spec):
    """This repository's ONNX export (export.py's export_network) of a fresh network per size."""
    import numpy as np

    import src  # noqa: F401
    import mindspore as ms
    import export
    from src.factory import build_network
    from src.runtime import setup_runtime

    paths = {}
    for i, image in enumerate(spec["images"]):
        config = _repo_config(image, 1)
        if i == 0:
            setup_runtime("CPU", mode=config.context_mode, seed=config.seed)
        net = build_network(config.replace(fast_conv="off"), "CPU")  # as export.py builds it
        net.set_train(False)
        example = ms.Tensor(np.zeros((1, 3, image, image), np.float32))
        path = os.path.join(spec["folder"], f"vgg16_bn_{image}.onnx")
        paths[str(image)] = export.export_network(net, example, path, "ONNX")
    emit({"paths": paths})


def worker_ort_eval(spec):
    """onnxruntime through the repository's own runner (src.infer_runner.OnnxModel)."""
    import numpy as np

    import onnxruntime
    from src.infer_runner import OnnxModel

    out, models = {}, {}
    for image, batch, warmup, reps in _eval_cases(spec):
        if image not in models:
            models[image] = OnnxModel(spec["paths"][str(image)])
        model = models[image]
        x = np.random.default_rng(0).standard_normal((batch, 3, image, image), dtype=np.float32)
        out[f"{image}x{batch}"] = _timed(lambda: model(x), warmup, reps)
    emit({"side": "onnxruntime", "times": out, "onnxruntime": onnxruntime.__version__})


def worker_sgemm(spec):
    """fp32 matrix multiply rate, n x n by n x n, with numpy and with torch (GFLOP/s)."""
    import numpy as np

    n, reps = spec["n"], spec["reps"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3
    result = {"n": n, "numpy_gflops": flop / min(_timed(lambda: a @ b, 1, reps)) / 1e9}
    try:
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        result["torch_gflops"] = flop / min(_timed(lambda: ta @ tb, 1, reps)) / 1e9
    except ImportError:
        result["torch_gflops"] = None
    emit(result)


def worker_data(spec):
    """Images/s of the CIFAR-10 training pipeline and of the ImageNet folder pipeline."""
    sys.path.insert(0, HERE)
    import bench_data
    from src import dataset as D

    work = spec["work"]
    if spec["cifar_records"]:
        cifar_root = write_small_cifar(os.path.join(work, f"cifar_{spec['cifar_records']}"),
                                       spec["cifar_records"])
        kind = "generated"
    else:
        cifar_root, kind = bench_data.cifar_data(work)
    result = {"cifar_data": kind, "workers": D.default_workers()}

    def cifar_epoch(batches):
        data = D.create_dataset("cifar10", cifar_root, batch_size=64, training=True,
                                image_size=(32, 32))
        if batches:
            data = data.take(batches)
        return bench_data.images_per_second(data)

    cifar_epoch(2)  # warm-up: file cache, imports
    runs = [cifar_epoch(spec["cifar_batches"]) for _ in range(spec["cifar_reps"])]
    result["cifar_images_per_s"] = [rate for rate, _ in runs]
    result["cifar_images"] = runs[0][1]

    folder = os.path.join(work, f"imagenet_{spec['jpegs']}", D.IMAGENET_TRAIN_DIR)
    bench_data.make_jpegs(folder, spec["jpegs"])

    def imagenet_epoch():
        data = D.create_dataset("imagenet2012", os.path.dirname(folder),
                                batch_size=spec["imagenet_batch"],
                                training=True, image_size=(224, 224), num_classes=1000)
        return bench_data.images_per_second(data)

    imagenet_epoch()  # warm-up
    runs = [imagenet_epoch() for _ in range(spec["imagenet_reps"])]
    result["imagenet_images_per_s"] = [rate for rate, _ in runs]
    result["imagenet_images"] = runs[0][1]
    emit(result)


# ------------------------------------------------------------------- GPU workers

def _one_line(err, limit=240):
    """The first non-empty line of an exception's message, cut to `limit`, with its type
    unless it is the repository's UserError (a message written for the user already)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if type(err).__name__ != "UserError":
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cuda_sync(device):
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def _torch_settings(torch):
    """cuDNN autotuning and the TF32 switches, which decide what 'float32' means on a GPU."""
    switches = {"cudnn_benchmark": lambda: torch.backends.cudnn.benchmark,
                "cudnn_allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32}
    settings = {}
    for name, read in switches.items():
        try:
            settings[name] = read()
        except Exception:  # noqa: BLE001 - a description only; versions move these switches
            settings[name] = None
    return settings


def worker_gpu_probe(spec):
    """What PyTorch sees of the GPU (never MindSpore: the GPU machine may not have it)."""
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update({"device_count": torch.cuda.device_count(),
                     "name": torch.cuda.get_device_name(0),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                     "memory_gib": props.total_memory / 2 ** 30,
                     "cudnn": torch.backends.cudnn.version()})
    emit(info)


def _torch_net(recipe, image, device):
    import torch_vgg

    return torch_vgg.VGG(recipe["arch"], recipe["num_classes"], recipe["batch_norm"],
                         (image, image), recipe["has_dropout"], recipe["has_bias"]).to(device)


def worker_torch_gpu_train(spec):
    """PyTorch training on spec['device'] (cuda; cpu in the tests), float16 autocast + GradScaler
    when spec['amp'], else float32; the host batches copied in each step as a loader's are."""
    import torch

    sys.path.insert(0, HERE)
    import torch_vgg

    device, recipe = torch.device(spec["device"]), spec["recipe"]
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(1)
    net = _torch_net(recipe, spec["image"], device).train()
    optimizer = torch_vgg.make_optimizer(net, recipe["lr"], recipe["momentum"],
                                         recipe["weight_decay"])
    step = torch_vgg.make_train_step(net, optimizer, device, spec["amp"],
                                     recipe["label_smoothing"])
    pin = device.type == "cuda"
    batches = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in
               _random_batches(2, spec["batch"], spec["image"])]
    if pin:
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    losses, times, first_done, first_step_s = _timed_steps(
        lambda i: step(*batches[i % 2]), spec["warmup"], spec["steps"], _cuda_sync(device))
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if pin else None
    emit({"side": "torch", "amp": spec["amp"], "device": str(device), "step_s": times,
          "losses": losses, "first_step_s": first_step_s, "first_step_done": first_done,
          "peak_device_memory_mb": peak, "settings": _torch_settings(torch)})


def worker_torch_gpu_eval(spec):
    """PyTorch inference (eval, no_grad) per case and precision: float16 autocast for 'amp'
    when asked, float32 for 'fp32'; times keyed '<precision>/<model>_<image>x<batch>'."""
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_vgg

    device = torch.device(spec["device"])
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(1)
    sync, out, nets = _cuda_sync(device), {}, {}
    for model, image, batch, warmup, reps in spec["cases"]:
        if (model, image) not in nets:
            nets[model, image] = _torch_net(spec["recipes"][model], image, device).eval()
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (batch, 3, image, image), dtype=np.float32))
        if device.type == "cuda":
            x = x.pin_memory()
        for precision, amp in spec["precisions"]:
            forward = torch_vgg.make_forward(nets[model, image], device, amp)
            out[f"{precision}/{model}_{image}x{batch}"] = _timed_sync(lambda: forward(x), warmup,
                                                                      reps, sync)
    emit({"side": "torch", "times": out, "settings": _torch_settings(torch)})


def _ms_gpu_config(spec):
    from model_utils.config import get_config

    return get_config([f"--config_path={os.path.join(ROOT, spec['config'])}",
                       "--device_target=GPU", f"--image_size={spec['image']},{spec['image']}",
                       f"--batch_size={spec['batch']}", f"--amp_level={spec['amp_level']}"])


def _ms_peak_memory_mb(ms):
    try:
        return ms.runtime.max_memory_allocated() / 2 ** 20
    except Exception:  # noqa: BLE001 - an optional figure; older versions lack the call
        return None


def _ms_gpu_guarded(body, spec):
    """Runs body(spec, stage); any failure becomes a one-line error result naming the stage
    the body had reached (import, device, build, first step, steps) instead of a crash."""
    from types import SimpleNamespace

    stage = SimpleNamespace(name="import")
    try:
        body(spec, stage)
    except Exception as err:  # noqa: BLE001 - whatever breaks, the benchmark goes on
        missing = isinstance(err, ImportError) and stage.name == "import" and \
            (err.name or "").split(".")[0] == "mindspore"
        reason = f"MindSpore is not installed ({err})" if missing else \
            f"{stage.name}: {_one_line(err)}"
        emit({"side": "repo", "stage": stage.name, "error": reason})


def _ms_gpu_train(spec, stage):
    """This repository's GPU training step: setup_runtime('GPU'), build_network,
    build_train_step with the config's loss scale and amp_level O2, host dropout masks as
    Trainer feeds them."""
    import logging

    import src  # noqa: F401
    import mindspore as ms
    from src.factory import build_network
    from src.lr_schedule import learning_rates
    from src.runtime import setup_runtime
    from src.trainer import DropoutMasks, build_train_step, choose_precision, uses_dropout

    stage.name = "device"
    config = _ms_gpu_config(spec)
    setup_runtime("GPU", config.device_id, config.context_mode, seed=config.seed)
    stage.name = "build"
    log = logging.getLogger("vgg.benchmark")
    net = build_network(config, "GPU")
    step = build_train_step(net, config, learning_rates(config, TRAIN_STEPS_PER_EPOCH), "GPU", log)
    masks = DropoutMasks(config.seed, 0) if uses_dropout(net) else None
    batches = [(ms.Tensor(x), ms.Tensor(y)) for x, y in
               _random_batches(2, spec["batch"], spec["image"])]
    run_step = _ms_step_runner(step, batches, masks)

    def staged_step(global_step):
        stage.name = "first step" if global_step == 0 else "steps"
        return run_step(global_step)

    losses, times, first_done, first_step_s = _timed_steps(staged_step, spec["warmup"],
                                                           spec["steps"])
    amp_level, scale_type = choose_precision(config, "GPU", log)
    emit({"side": "repo", "step_s": times, "losses": losses, "first_step_s": first_step_s,
          "first_step_done": first_done, "amp_level": amp_level,
          "loss_scale": {"type": scale_type, "value": config.loss_scale},
          "peak_device_memory_mb": _ms_peak_memory_mb(ms), "mindspore": ms.__version__})


def _ms_gpu_eval(spec, stage):
    """Inference as eval.py runs it on the GPU (set_train(False), forward), with the network
    cast by amp_level O2 like the training (eval.py itself keeps float32)."""
    import numpy as np

    import src  # noqa: F401
    import mindspore as ms
    from src.factory import build_network
    from src.runtime import setup_runtime

    out, nets = {}, {}
    for model, image, batch, warmup, reps in spec["cases"]:
        config = _ms_gpu_config({"config": spec["configs"][model], "image": image,
                                 "batch": batch, "amp_level": spec["amp_level"]})
        if (model, image) not in nets:
            if not nets:
                stage.name = "device"
                setup_runtime("GPU", config.device_id, config.context_mode, seed=config.seed)
            stage.name = "build"
            net = build_network(config, "GPU")
            if spec["amp_level"] != "O0":
                net = ms.amp.auto_mixed_precision(net, spec["amp_level"])
            net.set_train(False)
            nets[model, image] = net
        net = nets[model, image]
        x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, image, image),
                                                                 dtype=np.float32))
        stage.name = "first step" if not out else "steps"
        out[f"{model}_{image}x{batch}"] = _timed(lambda: net(x).asnumpy(), warmup, reps)
    emit({"side": "repo", "amp_level": spec["amp_level"], "times": out})


def worker_ms_gpu_train(spec):
    _ms_gpu_guarded(_ms_gpu_train, spec)


def worker_ms_gpu_eval(spec):
    _ms_gpu_guarded(_ms_gpu_eval, spec)


WORKERS = {"ms_train": worker_ms_train, "torch_train": worker_torch_train,
           "ms_eval": worker_ms_eval, "torch_eval": worker_torch_eval,
           "onnx_export": worker_onnx_export, "ort_eval": worker_ort_eval,
           "sgemm": worker_sgemm, "data": worker_data,
           "gpu_probe": worker_gpu_probe, "torch_gpu_train": worker_torch_gpu_train,
           "torch_gpu_eval": worker_torch_gpu_eval, "ms_gpu_train": worker_ms_gpu_train,
           "ms_gpu_eval": worker_ms_gpu_eval}


# ------------------------------------------------------------------- train.py itself

def write_small_cifar(root, count=64, seed=0):
    """A CIFAR-10 binary training set of `count` random records."""
    import numpy as np

    folder = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, (count, 3073), dtype=np.uint8)
    records[:, 0] %= NUM_CLASSES
    records.tofile(os.path.join(folder, "data_batch_1.bin"))
    return root


def time_train_py(work, batch, timeout):
    """Seconds from starting `python train.py` to its first 'epoch: 1 step: 1, loss is' line
    (64 images at batch 64: one step per epoch), and to the end of the process."""
    data = write_small_cifar(os.path.join(work, "trainpy_data"), count=batch)
    run_dir = os.path.join(work, "trainpy_run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config_path={CONFIG}",
           f"--data_dir={data}", "--device_target=CPU", "--image_size=32,32",
           f"--batch_size={batch}", "--max_epoch=1", "--warmup_epochs=1", "--log_interval=1",
           f"--ckpt_path={run_dir}", "--keep_checkpoint_max=1"]
    with open(os.path.join(work, "trainpy_stderr.log"), "w", encoding="utf-8") as errors:
        launch = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=child_env("repo"), cwd=work)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        first, lines = None, []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                if first is None and FIRST_STEP_LINE.match(line):
                    first = time.time() - launch
            code = proc.wait()
        finally:
            watchdog.cancel()
        total = time.time() - launch
    if first is None:
        return {"error": f"train.py exited with {code} without a first-step line: "
                         + " | ".join(lines[-4:])}
    return {"first_step_s": first, "process_s": total, "exit_code": code}


# ------------------------------------------------------------------- machine

def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_description():
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "cpu_flags": cpu_flags(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in
                     ("mindspore", "torch", "onnxruntime", "numpy", "onnx")},
        "onednn_max_cpu_isa_user": os.environ.get(ISA_VAR),
        "load_average_start": load_average(),
    }


# ------------------------------------------------------------------- the run

class Run:
    """Runs the plan's measurements, keeps raw results and figures, prints progress."""

    def __init__(self, plan, work, log=print):
        self.plan, self.work, self.log = plan, work, log
        self.raw, self.errors = {}, []

    def child(self, key, worker, spec, kind):
        started = time.time()
        result = run_child(worker, spec, kind, self.work, self.plan.timeout_s)
        self.raw.setdefault(key, []).append(result)
        if "error" in result:
            self.errors.append(f"{key}: {result['error']}")
            self.log(f"  {key}: FAILED ({result['error'][:300]})")
        else:
            self.log(f"  {key}: done in {time.time() - started:.0f} s")
        return result

    def ok(self, key):
        return [r for r in self.raw.get(key, []) if "error" not in r]

    # -- sections
    def sgemm(self):
        self.log("fp32 peak (sgemm)")
        self.child("sgemm", "sgemm", {"n": self.plan.sgemm_n, "reps": self.plan.sgemm_reps},
                   "torch")

    def training(self, image, batch, warmup, steps, rounds, stock, tag):
        self.log(f"training {image}x{image} batch {batch}")
        spec = {"image": image, "batch": batch, "warmup": warmup, "steps": steps}
        sides = [("repo", "ms_train", dict(spec, fast_conv="auto"), "repo"),
                 ("torch", "torch_train", spec, "torch")]
        if stock:
            sides.append(("repo_stock", "ms_train", dict(spec, fast_conv="off"), "repo_stock"))
        perturbed = dict(spec, fast_conv="off", perturb=PERTURB)
        for r in range(rounds):
            for side, worker, side_spec, kind in (sides if r % 2 == 0 else sides[::-1]):
                if side == "repo_stock" and r > 0:
                    side_spec = perturbed  # also the sensitivity reference of the loss check
                self.child(f"train{tag}_{side}", worker, side_spec, kind)
        if stock and rounds < 2:
            self.child(f"train{tag}_repo_stock", "ms_train", perturbed, "repo_stock")

    def evaluation(self):
        plan = self.plan
        groups = [[(plan.train_image, plan.eval_batch, plan.eval_warmup, plan.eval_reps)]]
        big = []
        if plan.eval224:
            big.append((224, plan.eval224_batch, plan.eval_warmup, plan.eval224_reps))
        big.append((plan.latency_image, 1, plan.latency_warmup, plan.latency_reps))
        if plan.latency_image == plan.train_image:
            groups[0] += big
        else:
            groups.append(big)
        images = sorted({case[0] for group in groups for case in group})
        self.log("ONNX export (this repository's export_network)")
        folder = os.path.join(self.work, "onnx")
        os.makedirs(folder, exist_ok=True)
        exported = self.child("onnx_export", "onnx_export", {"images": images, "folder": folder},
                              "repo")
        for cases in groups:
            self.log(f"evaluation {', '.join(f'{i}x{i} batch {b}' for i, b, _, _ in cases)}")
            self.child("eval_repo", "ms_eval", {"cases": cases}, "repo")
            self.child("eval_torch", "torch_eval", {"cases": cases}, "torch")
            if "error" not in exported:
                self.child("eval_onnxruntime", "ort_eval",
                           {"cases": cases, "paths": exported["paths"]}, "repo")

    def train_py(self):
        self.log("train.py: process start to first finished step")
        for _ in range(self.plan.trainpy_runs):
            result = time_train_py(self.work, self.plan.train_batch, self.plan.timeout_s)
            self.raw.setdefault("train_py", []).append(result)
            if "error" in result:
                self.errors.append(f"train_py: {result['error']}")
                self.log(f"  train_py: FAILED ({result['error'][:300]})")
            else:
                self.log(f"  train_py: first step after {result['first_step_s']:.1f} s")

    def data(self):
        self.log("data pipelines")
        self.child("data", "data", {"work": os.path.join(self.work, "data"),
                                    "cifar_records": self.plan.cifar_records,
                                    "cifar_batches": self.plan.cifar_batches,
                                    "imagenet_batch": self.plan.imagenet_batch,
                                    "cifar_reps": self.plan.cifar_reps,
                                    "jpegs": self.plan.jpegs,
                                    "imagenet_reps": self.plan.imagenet_reps}, "repo")

    def run(self):
        plan = self.plan
        self.sgemm()
        self.training(plan.train_image, plan.train_batch, plan.train_warmup, plan.train_steps,
                      plan.train_rounds, True, "")
        if plan.train224:
            self.training(224, plan.train224_batch, plan.train224_warmup, plan.train224_steps,
                          1, False, "224")
        self.evaluation()
        self.train_py()
        self.data()
        return self.summarise()

    # -- figures
    def _train_rate(self, key, batch):
        steps = [t for r in self.ok(key) for t in r["step_s"]]
        per_step = median(steps)
        return (batch / per_step if per_step else None), per_step

    def _eval_rate(self, key, image, batch):
        times = [t for r in self.ok(key) for t in r["times"].get(f"{image}x{batch}", [])]
        seconds = median(times)
        return (batch / seconds if seconds else None), seconds

    def loss_check(self):
        """Losses of fast_conv=auto against fast_conv=off from the same seed and data, judged
        by compare_losses (the rule is in LOSS_CHECK_RULE and in the report)."""
        runs = self.ok("train_repo_stock")
        fast = self.ok("train_repo")
        stock = [r for r in runs if not r.get("perturb")]
        reference = [r for r in runs if r.get("perturb")]
        if not fast or not stock:
            return {"checked": False}
        result = compare_losses(fast[0]["losses"], stock[0]["losses"],
                                reference[0]["losses"] if reference else None,
                                self.plan.loss_check_steps, self.plan.loss_rtol)
        result["fast_path_active"] = fast[0]["fast_cells"] > 0
        return result

    def summarise(self):
        plan, rows = self.plan, []
        peak = None
        sg = self.ok("sgemm")
        if sg:
            peak = max(v for v in (sg[0]["numpy_gflops"], sg[0]["torch_gflops"]) if v) * 1e9

        def row(name, unit, repo, torch=None, ort=None, better="higher", target=None, note=""):
            entry = {"figure": name, "unit": unit, "repo": repo, "torch": torch,
                     "onnxruntime": ort, "better": better, "target": target, "note": note}
            if better == "higher":
                entry["vs_torch"], entry["vs_onnxruntime"] = ratio(repo, torch), ratio(repo, ort)
            else:  # a time or a size: the peer's value over ours, so > 1 means ours is better
                entry["vs_torch"], entry["vs_onnxruntime"] = ratio(torch, repo), ratio(ort, repo)
            rows.append(entry)
            return entry

        figures = {}
        trainings = [("", plan.train_image, plan.train_batch, 1.2)]
        if plan.train224:
            trainings.append(("224", 224, plan.train224_batch, 1.0))
        for tag, image, batch, target in trainings:
            repo, repo_step = self._train_rate(f"train{tag}_repo", batch)
            torch, torch_step = self._train_rate(f"train{tag}_torch", batch)
            flops = train_flops_per_image(image)
            frac = {side: (rate * flops / peak if rate and peak else None)
                    for side, rate in (("repo", repo), ("torch", torch))}
            label = f"training {image}x{image} batch {batch}"
            row(label, "images/s", repo, torch, target=f">= {target}x PyTorch",
                note=f"fraction of fp32 peak: repo {_pct(frac['repo'])}, "
                     f"PyTorch {_pct(frac['torch'])}")
            figures[f"train{tag}"] = {"image": image, "batch": batch, "repo_images_per_s": repo,
                                      "torch_images_per_s": torch, "repo_step_s": repo_step,
                                      "torch_step_s": torch_step, "flop_per_image": flops,
                                      "repo_fraction_of_peak": frac["repo"],
                                      "torch_fraction_of_peak": frac["torch"]}
            stock_key = f"train{tag}_repo_stock"
            if self.raw.get(stock_key):
                stock, stock_step = self._train_rate(stock_key, batch)
                row(f"{label}, fast_conv=off (stock MindSpore)", "images/s", stock, torch,
                    note=f"fast_conv=auto is {_x(ratio(repo, stock))} this")
                figures[f"train{tag}"].update({
                    "repo_stock_images_per_s": stock, "repo_stock_step_s": stock_step,
                    "fast_over_stock": ratio(repo, stock),
                    "repo_stock_fraction_of_peak": stock * flops / peak if stock and peak else None})

        evals = [(plan.train_image, plan.eval_batch)]
        if plan.eval224:
            evals.append((224, plan.eval224_batch))
        for image, batch in evals:
            rates = {side: self._eval_rate(f"eval_{side}", image, batch)[0]
                     for side in ("repo", "torch", "onnxruntime")}
            row(f"evaluation {image}x{image} batch {batch}", "images/s", rates["repo"],
                rates["torch"], rates["onnxruntime"],
                target=">= 1.2x PyTorch, >= 0.9x onnxruntime")
            figures[f"eval_{image}_b{batch}"] = rates
        lat = {side: self._eval_rate(f"eval_{side}", plan.latency_image, 1)[1]
               for side in ("repo", "torch", "onnxruntime")}
        lat_ms = {k: v * 1000 if v else None for k, v in lat.items()}
        row(f"latency {plan.latency_image}x{plan.latency_image} batch 1", "ms", lat_ms["repo"],
            lat_ms["torch"], lat_ms["onnxruntime"], better="lower", target="<= PyTorch")
        figures["latency_ms"] = lat_ms

        train_py = median([r["first_step_s"] for r in self.raw.get("train_py", [])
                           if "error" not in r])
        own = median([r.get("launch_to_first_step_s") for r in self.ok("train_repo")])
        torch_first = median([r.get("launch_to_first_step_s") for r in self.ok("train_torch")])
        row("process start to first training step (train.py)", "s", train_py, torch_first,
            better="lower", target="<= 15 s",
            note="train.py on 64 generated CIFAR-10 images; PyTorch: import, build, one step")
        row("process start to first training step (import, build, step)", "s", own, torch_first,
            better="lower", target="<= 15 s")
        figures["first_step_s"] = {"train_py": train_py, "repo_worker": own, "torch": torch_first}

        mem = {side: median([r["max_rss_mb"] for r in self.ok(f"train_{side}")])
               for side in ("repo", "torch", "repo_stock")}
        row(f"peak memory, training {plan.train_image}x{plan.train_image} batch "
            f"{plan.train_batch}", "MiB", mem["repo"], mem["torch"], better="lower",
            target="<= PyTorch", note=f"fast_conv=off: {_num(mem['repo_stock'])} MiB")
        figures["train_peak_rss_mb"] = mem
        if plan.train224:
            mem224 = {side: median([r["max_rss_mb"] for r in self.ok(f"train224_{side}")])
                      for side in ("repo", "torch")}
            row(f"peak memory, training 224x224 batch {plan.train224_batch}", "MiB",
                mem224["repo"], mem224["torch"], better="lower", target="<= PyTorch")
            figures["train224_peak_rss_mb"] = mem224

        data = self.ok("data")
        if data:
            d = data[0]
            cifar, imagenet = median(d["cifar_images_per_s"]), median(d["imagenet_images_per_s"])
            row("CIFAR-10 training pipeline alone", "images/s", cifar, target=">= 5000",
                note=f"{d['cifar_images']} images per pass, {d['workers']} workers, "
                     f"{d['cifar_data']} data")
            row("ImageNet folder pipeline alone, 224x224", "images/s", imagenet,
                note=f"{d['imagenet_images']} generated JPEGs (500x375)")
            figures["data"] = {"cifar_images_per_s": cifar, "imagenet_images_per_s": imagenet}

        fast_runs = self.ok("train_repo")
        fast_active = bool(fast_runs) and fast_runs[0]["fast_cells"] > 0
        isa = {key: sorted({str(r.get("isa_env")) for r in self.ok(key)})
               for key in ("train_repo", "train_repo_stock", "train_torch", "eval_repo")}
        return {
            "plan": dataclasses.asdict(plan), "peak_gflops": peak / 1e9 if peak else None,
            "sgemm": sg[0] if sg else None, "fast_conv_active": fast_active,
            "fast_conv_cells": [fast_runs[0]["fast_cells"], fast_runs[0]["conv_cells"]]
            if fast_runs else None,
            "onednn_max_cpu_isa_per_process": isa,
            "torch_threads": (self.ok("train_torch") or [{}])[0].get("torch_threads"),
            "torch_cpu_capability": (self.ok("train_torch") or [{}])[0].get("torch_cpu_capability"),
            "loss_check": self.loss_check(), "rows": rows, "figures": figures,
            "errors": self.errors, "raw": self.raw,
        }


def _pct(value):
    return f"{100 * value:.0f} %" if value is not None else "n/a"


def _x(value):
    return f"{value:.2f}x" if value is not None else "n/a"


def _num(value):
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 \
        else f"{value:.1f}"


def format_table(rows, markdown=False):
    head = ["figure", "unit", "this repo", "PyTorch", "repo vs PyTorch", "onnxruntime",
            "repo vs ORT", "target", "note"]
    body = [[r["figure"], r["unit"], _num(r["repo"]), _num(r["torch"]), _x(r["vs_torch"]),
             _num(r["onnxruntime"]), _x(r["vs_onnxruntime"]), r["target"] or "", r["note"]]
            for r in rows]
    return _layout(head, body, markdown)


def _layout(head, body, markdown):
    """Columns padded to their widest cell (the last one, a free-text note, not padded)."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(str(line[i])) for line in [head] + body) for i in range(len(head) - 1)]
    out = []
    for cells in [head] + body:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1])
    return "\n".join(out)


def run_benchmark(plan, out_path, work, log=print):
    """Runs every measurement of `plan` and writes the JSON report to out_path."""
    os.makedirs(work, exist_ok=True)
    started = time.time()
    machine = machine_description()
    log(f"benchmark ({plan.name}) on {machine['cpu_model']}, {machine['usable_cpus']} CPUs, "
        f"load average {machine['load_average_start']}; work folder {work}")
    report = Run(plan, work, log).run()
    machine["load_average_end"] = load_average()
    machine["onednn_max_cpu_isa"] = report.pop("onednn_max_cpu_isa_per_process")
    machine["fast_conv_active"] = report["fast_conv_active"]
    machine["peak_gflops_fp32"] = report["peak_gflops"]
    machine["torch_threads"] = report.pop("torch_threads")
    machine["torch_cpu_capability"] = report.pop("torch_cpu_capability")
    report = {"command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "duration_s": time.time() - started, "machine": machine, **report}
    if out_path:
        folder = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(folder, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    log("")
    log(format_table(report["rows"]))
    check = report["loss_check"]
    if check.get("checked"):
        ref = check.get("reference_relative_difference")
        log(f"losses, fast_conv=auto vs off, first {check['steps']} steps from seed 1 "
            f"(fast path {'active' if check['fast_path_active'] else 'not active'}): "
            f"{'MATCH' if check['match'] else 'DIFFER'}; relative differences "
            f"{' '.join(f'{d:.1e}' for d in check['relative_difference'])}"
            + (f"; stock vs stock with inputs x(1+{PERTURB:g} noise): "
               f"{' '.join(f'{d:.1e}' for d in ref)}" if ref else "")
            + f"; allowed {' '.join(f'{d:.1e}' for d in check['allowed'])}")
        failure = loss_check_failure(check)
        if failure:
            log(f"error: {failure}")
    log(f"fp32 peak {_num(report['peak_gflops'])} GFLOP/s (sgemm {plan.sgemm_n}); ONEDNN_MAX_CPU_ISA"
        f" per process: {machine['onednn_max_cpu_isa']}; load average "
        f"{machine['load_average_start']} -> {machine['load_average_end']}; "
        f"{report['duration_s'] / 60:.1f} min")
    for error in report["errors"]:
        log(f"error: {error}")
    if out_path:
        log(f"wrote {out_path}")
    return report


# ------------------------------------------------------------------- GPU mode

GPU_MODELS = {"vgg16": "imagenet2012_config.yaml", "vgg16_bn": "cifar10_config.yaml"}
MODEL_LABELS = {"vgg16": "VGG16", "vgg16_bn": "VGG16-BN"}
GPU_AMP_LEVEL = "O2"  # mixed precision on the GPU, as the upstream model zoo trains there
UPSTREAM_GPU = {
    "model": "vgg16", "image": 224, "batch": 32, "ms_per_step": 81.0,
    "images_per_s": 32 / 0.081, "device": "NVIDIA V100", "precision": "mixed precision",
    "framework": "MindSpore model zoo VGG16, ImageNet2012",
    "measured_here": False,
    "source": "published figure of the original MindSpore model-zoo VGG16 release (README.md, "
              "Performance); not measured here, on other hardware",
}


@dataclasses.dataclass(frozen=True)
class GpuPlan:
    """Cases and repetition counts of a GPU run: (model, image, batch) per case, the model
    being the network of its config in GPU_MODELS."""
    name: str = "gpu"
    train_cases: tuple = (("vgg16", 224, 32), ("vgg16_bn", 32, 64))
    train_warmup: int = 10         # untimed steps after the first (compiling, autotuning) one
    train_steps: int = 40          # timed steps per process
    eval_cases: tuple = (("vgg16_bn", 32, 256), ("vgg16", 224, 32))
    eval_warmup: int = 5
    eval_reps: int = 20
    latency_case: tuple = ("vgg16", 224)
    latency_warmup: int = 10
    latency_reps: int = 50
    torch_device: str = "cuda"     # "cpu" only for the tests: the same code without a GPU
    amp: bool = True               # False only for the tests: float16 is for GPUs
    timeout_s: int = 240


GPU_FULL = GpuPlan()
GPU_QUICK = GpuPlan(name="gpu-quick", train_warmup=5, train_steps=15, eval_warmup=3,
                    eval_reps=10, latency_warmup=5, latency_reps=20)


class NoCudaGpu(Exception):
    """--device gpu on a machine where PyTorch sees no CUDA GPU."""


def gpu_recipe(model):
    """What the PyTorch peer needs of `model`'s config (the YAML the MindSpore side reads):
    network, loss and optimiser settings. Plain YAML: no MindSpore in this process."""
    import yaml

    path = os.path.join(ROOT, GPU_MODELS[model])
    with open(path, encoding="utf-8") as handle:
        values = next(yaml.safe_load_all(handle))
    name = values["arch"] + ("_bn" if values["batch_norm"] else "")
    if name != model:
        raise ValueError(f"{path}: arch/batch_norm describe {name}, the GPU plan expects {model}")
    keys = ("arch", "batch_norm", "has_bias", "num_classes", "has_dropout", "lr", "momentum",
            "weight_decay", "loss_scale", "loss_scale_type")
    return {"config": GPU_MODELS[model], **{key: values[key] for key in keys},
            "label_smoothing": values["label_smooth_factor"] if values["label_smooth"] else 0.0}


def _case_key(model, image, batch):
    return f"{model}_{image}_b{batch}"


def nvidia_smi_query():
    """Name, driver and memory of each GPU as nvidia-smi reports them; None without it."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode:
        return None
    return [dict(zip(("name", "driver", "memory"), (part.strip() for part in line.split(","))))
            for line in proc.stdout.splitlines() if line.strip()]


class GpuRun(Run):
    """The GPU plan: MindSpore workers for this repository, PyTorch workers with and without
    AMP. A repository worker that fails (no MindSpore, no GPU backend, a failing first step)
    makes the repository 'unavailable' in the report, not a failure of the benchmark."""

    def __init__(self, plan, work, log=print):
        super().__init__(plan, work, log)
        models = {case[0] for case in plan.train_cases + plan.eval_cases + (plan.latency_case,)}
        self.recipes = {model: gpu_recipe(model) for model in sorted(models)}
        self.repo_blocked = None  # the reason once MindSpore cannot be imported or take the GPU

    def repo_child(self, key, worker, spec):
        if self.repo_blocked:
            result = {"side": "repo", "stage": "skipped", "error": self.repo_blocked}
            self.raw.setdefault(key, []).append(result)
            self.log(f"  {key}: skipped (this repository is unavailable)")
            return result
        started = time.time()
        result = run_child(worker, spec, "repo", self.work, self.plan.timeout_s)
        self.raw.setdefault(key, []).append(result)
        if "error" not in result:
            self.log(f"  {key}: done in {time.time() - started:.0f} s")
            return result
        if result.get("stage") in (None, "import", "device"):  # None: the process died
            self.repo_blocked = result["error"]
        self.log(f"  {key}: unavailable ({result['error']})")
        return result

    def run(self):
        plan = self.plan
        amp_level = GPU_AMP_LEVEL if plan.amp else "O0"
        precisions = (("amp", plan.amp), ("fp32", False))
        for model, image, batch in plan.train_cases:
            recipe = self.recipes[model]
            self.log(f"training {image}x{image} batch {batch}, {MODEL_LABELS[model]} "
                     f"({recipe['config']})")
            key = f"train_{_case_key(model, image, batch)}"
            spec = {"image": image, "batch": batch, "warmup": plan.train_warmup,
                    "steps": plan.train_steps}
            self.repo_child(f"{key}_repo", "ms_gpu_train",
                            dict(spec, config=recipe["config"], amp_level=amp_level))
            for precision, amp in precisions:
                self.child(f"{key}_torch_{precision}", "torch_gpu_train",
                           dict(spec, recipe=recipe, device=plan.torch_device, amp=amp), "torch")
        cases = [(model, image, batch, plan.eval_warmup, plan.eval_reps)
                 for model, image, batch in plan.eval_cases]
        cases.append((*plan.latency_case, 1, plan.latency_warmup, plan.latency_reps))
        self.log("evaluation " + ", ".join(f"{i}x{i} batch {b} {MODEL_LABELS[m]}"
                                           for m, i, b, _, _ in cases))
        self.repo_child("eval_repo", "ms_gpu_eval", {
            "cases": cases, "amp_level": amp_level,
            "configs": {model: recipe["config"] for model, recipe in self.recipes.items()}})
        self.child("eval_torch", "torch_gpu_eval",
                   {"cases": cases, "recipes": self.recipes, "device": plan.torch_device,
                    "precisions": precisions}, "torch")
        return dict(summarise_gpu(plan, self.raw), recipes=self.recipes, errors=self.errors,
                    raw=self.raw)


def _per_s(batch, seconds):
    return batch / seconds if seconds else None


def _ms(seconds):
    return seconds * 1000 if seconds else None


class GpuSummary:
    """Rows and figures of a GPU run from its raw worker results (a pure function of them).
    A row's repo_status is None when this repository was measured, '' where it is not meant
    to be (PyTorch float32 reference rows), else 'unavailable: <reason>'."""

    def __init__(self, plan, raw):
        self.plan, self.raw = plan, raw
        self.rows, self.figures = [], {}
        self.train_note = (f"this repo amp_level {GPU_AMP_LEVEL} (the config's loss scale); "
                           "PyTorch autocast float16 + GradScaler" if plan.amp else "float32 both")
        self.eval_note = (f"this repo amp_level {GPU_AMP_LEVEL} (eval.py itself keeps float32); "
                          "PyTorch autocast float16" if plan.amp else "float32 both")

    # -- raw results
    def ok(self, key):
        return [r for r in self.raw.get(key, []) if "error" not in r]

    def status(self, key):
        failed = [r for r in self.raw.get(key, []) if "error" in r]
        if self.ok(key) or not failed:
            return None
        return f"unavailable: {failed[0]['error']}"

    def step(self, key):
        return median([t for r in self.ok(key) for t in r["step_s"]])

    def field(self, key, name):
        return median([r.get(name) for r in self.ok(key)])

    def seconds(self, key, name):
        return median([t for r in self.ok(key) for t in r["times"].get(name, [])])

    # -- rows
    def row(self, name, unit, repo, torch, upstream=None, better="higher", note="",
            repo_status=None):
        if repo_status is not None:
            vs_torch = None
        else:
            vs_torch = ratio(repo, torch) if better == "higher" else ratio(torch, repo)
        self.rows.append({"figure": name, "unit": unit, "repo": repo, "torch": torch,
                          "vs_torch": vs_torch, "upstream": upstream, "better": better,
                          "note": note, "repo_status": repo_status})

    def training(self, model, image, batch):
        key = f"train_{_case_key(model, image, batch)}"
        repo, amp, fp32 = f"{key}_repo", f"{key}_torch_amp", f"{key}_torch_fp32"
        why = self.status(repo)
        up = UPSTREAM_GPU if (model, image, batch) == (
            UPSTREAM_GPU["model"], UPSTREAM_GPU["image"], UPSTREAM_GPU["batch"]) else {}
        up_note = (f"upstream: the published figure ({UPSTREAM_GPU['framework']}, "
                   f"{UPSTREAM_GPU['device']}), not measured here") if up else ""
        case = f"{image}x{image} batch {batch}, {MODEL_LABELS[model]}"
        steps = {side: self.step(k) for side, k in (("repo", repo), ("amp", amp), ("fp32", fp32))}
        rate = {side: _per_s(batch, value) for side, value in steps.items()}
        self.row(f"training {case}, mixed precision", "images/s", rate["repo"], rate["amp"],
                 up.get("images_per_s"), note="; ".join(filter(None, (self.train_note, up_note))),
                 repo_status=why)
        self.row(f"training {case}, mixed precision, step time", "ms/step", _ms(steps["repo"]),
                 _ms(steps["amp"]), up.get("ms_per_step"), better="lower", note=up_note,
                 repo_status=why)
        self.row(f"training {case}, float32, PyTorch reference", "images/s", None, rate["fp32"],
                 repo_status="", note=f"{_num(_ms(steps['fp32']))} ms/step; PyTorch's defaults "
                                      "(cuDNN may use TF32 in convolutions)")
        launch = {"repo": self.field(repo, "launch_to_first_step_s"),
                  "torch_amp": self.field(amp, "launch_to_first_step_s")}
        self.row(f"process start to first training step, {case}", "s", launch["repo"],
                 launch["torch_amp"], better="lower", repo_status=why,
                 note="import, build, graph compile or cuDNN autotuning, one step")
        peak = {"repo": self.field(repo, "peak_device_memory_mb"),
                "torch_amp": self.field(amp, "peak_device_memory_mb")}
        self.row(f"peak GPU memory allocated, training {case}, mixed precision", "MiB",
                 peak["repo"], peak["torch_amp"], better="lower", repo_status=why)
        self.figures[key[len("train_"):]] = {
            "model": model, "config": GPU_MODELS[model], "image": image, "batch": batch,
            **{f"{side}_images_per_s": rate[short] for side, short in
               (("repo", "repo"), ("torch_amp", "amp"), ("torch_fp32", "fp32"))},
            **{f"{side}_ms_per_step": _ms(steps[short]) for side, short in
               (("repo", "repo"), ("torch_amp", "amp"), ("torch_fp32", "fp32"))},
            "launch_to_first_step_s": launch, "peak_device_memory_mb": peak,
            "upstream_ms_per_step": up.get("ms_per_step")}

    def evaluation(self):
        why = self.status("eval_repo")
        sides = {"repo": ("eval_repo", ""), "torch_amp": ("eval_torch", "amp/"),
                 "torch_fp32": ("eval_torch", "fp32/")}
        for model, image, batch in self.plan.eval_cases:
            rate = {side: _per_s(batch, self.seconds(key, f"{prefix}{model}_{image}x{batch}"))
                    for side, (key, prefix) in sides.items()}
            label = f"evaluation {image}x{image} batch {batch}, {MODEL_LABELS[model]}"
            self.row(f"{label}, mixed precision", "images/s", rate["repo"], rate["torch_amp"],
                     note=self.eval_note, repo_status=why)
            self.row(f"{label}, float32, PyTorch reference", "images/s", None,
                     rate["torch_fp32"], repo_status="")
            self.figures[f"eval_{model}_{image}_b{batch}"] = rate
        model, image = self.plan.latency_case
        lat = {side: _ms(self.seconds(key, f"{prefix}{model}_{image}x1"))
               for side, (key, prefix) in sides.items()}
        label = f"latency {image}x{image} batch 1, {MODEL_LABELS[model]}"
        self.row(f"{label}, mixed precision", "ms", lat["repo"], lat["torch_amp"],
                 better="lower", repo_status=why)
        self.row(f"{label}, float32, PyTorch reference", "ms", None, lat["torch_fp32"],
                 better="lower", repo_status="")
        self.figures["latency_ms"] = lat

    def report(self):
        for case in self.plan.train_cases:
            self.training(*case)
        self.evaluation()
        repo = [r for key, results in self.raw.items() if key.endswith("_repo") for r in results]
        settings = next((r["settings"] for key, results in self.raw.items() if "_torch" in key
                         for r in results if "settings" in r), None)
        return {"plan": dataclasses.asdict(self.plan), "upstream_reference": UPSTREAM_GPU,
                "repo": {"available": any("error" not in r for r in repo),
                         "unavailable_reason": next((r["error"] for r in repo if "error" in r),
                                                    None),
                         "amp_level": GPU_AMP_LEVEL if self.plan.amp else "O0"},
                "torch_settings": settings, "rows": self.rows, "figures": self.figures}


def summarise_gpu(plan, raw):
    return GpuSummary(plan, raw).report()


def _repo_cell(row, width=72):
    if row["repo_status"] is None:
        return _num(row["repo"])
    text = row["repo_status"]
    return text if len(text) <= width else text[:width - 3] + "..."


def format_gpu_table(rows, markdown=False):
    head = ["figure", "unit", "this repo", "PyTorch", "repo vs PyTorch",
            "upstream V100 (published)", "note"]
    body = [[r["figure"], r["unit"], _repo_cell(r), _num(r["torch"]),
             "" if r["repo_status"] is not None else _x(r["vs_torch"]),
             "" if r["upstream"] is None else _num(r["upstream"]), r["note"]] for r in rows]
    return _layout(head, body, markdown)


def gpu_machine(plan, work):
    """machine_description() with what PyTorch and nvidia-smi say of the GPU; NoCudaGpu when
    PyTorch sees none (asked in a child process: this one stays free of CUDA)."""
    machine = machine_description()
    if plan.torch_device != "cuda":
        return dict(machine, gpu=None, nvidia_smi=None)
    probe = run_child("gpu_probe", {}, "torch", work, plan.timeout_s)
    if "error" in probe:
        raise NoCudaGpu(f"no CUDA GPU visible to PyTorch (PyTorch did not start: "
                        f"{probe['error'][:200]})")
    if not probe["cuda_available"]:
        raise NoCudaGpu(f"no CUDA GPU visible to PyTorch (torch {probe['torch']}: "
                        "torch.cuda.is_available() is False)")
    for key in ("max_rss_mb", "isa_env", "process_wall_s"):
        probe.pop(key, None)
    return dict(machine, gpu=probe, nvidia_smi=nvidia_smi_query())


def run_gpu_benchmark(plan, out_path, work, log=print):
    """Runs the GPU plan and writes its JSON report to out_path; NoCudaGpu without a GPU."""
    os.makedirs(work, exist_ok=True)
    started = time.time()
    machine = gpu_machine(plan, work)
    gpu = machine["gpu"] or {}
    driver = (machine["nvidia_smi"] or [{}])[0].get("driver")
    log(f"benchmark ({plan.name}) on {gpu.get('name', plan.torch_device)}, CUDA "
        f"{gpu.get('cuda_version')}, driver {driver}, PyTorch {gpu.get('torch')}; "
        f"work folder {work}")
    report = GpuRun(plan, work, log).run()
    report = {"command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "device": "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                        time.localtime(started)),
              "duration_s": time.time() - started, "machine": machine, **report}
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    log("")
    log(format_gpu_table(report["rows"]))
    reason = report["repo"]["unavailable_reason"]
    if reason:
        log(f"this repository: unavailable: {reason}")
    up = UPSTREAM_GPU
    log(f"upstream: {up['ms_per_step']:g} ms/step ({up['images_per_s']:.0f} images/s), "
        f"VGG16 {up['image']}x{up['image']} batch {up['batch']}, {up['device']}, "
        f"{up['framework']}, {up['precision']}: the published figure, not measured here")
    log(f"{report['duration_s'] / 60:.1f} min")
    for error in report["errors"]:
        log(f"error: {error}")
    if out_path:
        log(f"wrote {out_path}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu (default); gpu: mixed-precision training and inference on "
                             "the CUDA GPU against PyTorch AMP, beside the upstream V100 figure")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (CPU: no 224x224 training either; a few "
                             "minutes)")
    parser.add_argument("--out", help="JSON report (default benchmarks/results.json, with "
                                      "--device gpu benchmarks/results_gpu.json)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vgg_benchmark"),
                        help="folder for generated data, exports and run folders (reused)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.path.insert(0, ROOT)
        WORKERS[args.worker](json.loads(args.spec))
        return 0
    work = os.path.abspath(args.work)
    if args.device == "gpu":
        out = args.out or os.path.join(HERE, "results_gpu.json")
        try:
            report = run_gpu_benchmark(GPU_QUICK if args.quick else GPU_FULL, out, work)
        except NoCudaGpu as err:
            print(f"benchmark.py --device gpu: {err}", file=sys.stderr)
            return 2
        table = format_gpu_table
    else:
        out = args.out or os.path.join(HERE, "results.json")
        report = run_benchmark(QUICK if args.quick else FULL, out, work)
        table = format_table
    if args.markdown:
        print()
        print(table(report["rows"], markdown=True))
    if loss_check_failure(report.get("loss_check", {})):
        return 1  # said above, as "error: loss check failed: ..."
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
