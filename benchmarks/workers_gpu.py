"""The GPU benchmark (`benchmark.py --device gpu`): its plan, the PyTorch and MindSpore workers
and the run that starts them, in mixed precision as the upstream model zoo trains on GPUs.

The parent process and the PyTorch workers never import MindSpore (the GPU machine may not
have it). A repository worker that fails (no MindSpore, no GPU backend, a failing first step)
answers with a one-line reason and the stage it reached; the run then marks this repository
'unavailable' and skips its remaining workers once the reason is known to last. The timings
synchronise the device around every timed call.
"""
import dataclasses
import os
from types import SimpleNamespace

from harness import ROOT, Runner, emit, run_child, timed, timed_steps
from machine import machine_description, nvidia_smi_query
from workers_cpu import (
    ms_batches,
    ms_step_runner,
    random_batches,
    random_images,
    repo_train_step,
    torch_batches,
)

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


def case_key(model, image, batch):
    return f"{model}_{image}_b{batch}"


def one_line(err, limit=240):
    """The first non-empty line of an exception's message, cut to `limit`, with its type
    unless it is the repository's UserError (a message written for the user already)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if type(err).__name__ != "UserError":
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------- PyTorch workers

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
    batches = torch_batches(spec["batch"], spec["image"])
    if pin:
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    losses, times, first_done, first_step_s = timed_steps(
        lambda i: step(*batches[i % 2]), spec["warmup"], spec["steps"], _cuda_sync(device))
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if pin else None
    emit({"side": "torch", "amp": spec["amp"], "device": str(device), "step_s": times,
          "losses": losses, "first_step_s": first_step_s, "first_step_done": first_done,
          "peak_device_memory_mb": peak, "settings": _torch_settings(torch)})


def worker_torch_gpu_eval(spec):
    """PyTorch inference (eval, no_grad) per case and precision: float16 autocast for 'amp'
    when asked, float32 for 'fp32'; times keyed '<precision>/<model>_<image>x<batch>'."""
    import torch
    import torch_vgg

    device = torch.device(spec["device"])
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(1)
    sync, out, nets = _cuda_sync(device), {}, {}
    for model, image, batch, warmup, reps in spec["cases"]:
        if (model, image) not in nets:
            nets[model, image] = _torch_net(spec["recipes"][model], image, device).eval()
        x = torch.from_numpy(random_images(batch, image))
        if device.type == "cuda":
            x = x.pin_memory()
        for precision, amp in spec["precisions"]:
            forward = torch_vgg.make_forward(nets[model, image], device, amp)
            out[f"{precision}/{model}_{image}x{batch}"] = timed(
                lambda forward=forward, x=x: forward(x), warmup, reps, sync)
    emit({"side": "torch", "times": out, "settings": _torch_settings(torch)})


# ------------------------------------------------------------------- MindSpore workers

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
    stage = SimpleNamespace(name="import")
    try:
        body(spec, stage)
    except Exception as err:  # noqa: BLE001 - whatever breaks, the benchmark goes on
        missing = isinstance(err, ImportError) and stage.name == "import" and \
            (err.name or "").split(".")[0] == "mindspore"
        reason = f"MindSpore is not installed ({err})" if missing else \
            f"{stage.name}: {one_line(err)}"
        emit({"side": "repo", "stage": stage.name, "error": reason})


def _ms_gpu_runtime(config, stage):
    from src.runtime import setup_runtime

    stage.name = "device"
    setup_runtime("GPU", config.device_id, config.context_mode, seed=config.seed)


def _ms_gpu_train(spec, stage):
    """This repository's GPU training step: setup_runtime('GPU'), build_network,
    build_train_step with the config's loss scale and amp_level O2, host dropout masks as
    Trainer feeds them."""
    import logging

    import mindspore as ms

    from src.factory import build_network
    from src.trainer import choose_precision

    config = _ms_gpu_config(spec)
    _ms_gpu_runtime(config, stage)
    stage.name = "build"
    net = build_network(config, "GPU")
    step, masks = repo_train_step(net, config, "GPU")
    run_step = ms_step_runner(step, ms_batches(random_batches(2, spec["batch"], spec["image"])),
                              masks)

    def staged_step(global_step):
        stage.name = "first step" if global_step == 0 else "steps"
        return run_step(global_step)

    losses, times, first_done, first_step_s = timed_steps(staged_step, spec["warmup"],
                                                          spec["steps"])
    amp_level, scale_type = choose_precision(config, "GPU", logging.getLogger("vgg.benchmark"))
    emit({"side": "repo", "step_s": times, "losses": losses, "first_step_s": first_step_s,
          "first_step_done": first_done, "amp_level": amp_level,
          "loss_scale": {"type": scale_type, "value": config.loss_scale},
          "peak_device_memory_mb": _ms_peak_memory_mb(ms), "mindspore": ms.__version__})


def _ms_gpu_net(config, amp_level, stage):
    """The config's network for inference on the GPU, cast by amp_level like the training."""
    import mindspore as ms

    from src.factory import build_network

    stage.name = "build"
    net = build_network(config, "GPU")
    if amp_level != "O0":
        net = ms.amp.auto_mixed_precision(net, amp_level)
    net.set_train(False)
    return net


def _ms_gpu_eval(spec, stage):
    """Inference as eval.py runs it on the GPU (set_train(False), forward), with the network
    cast by amp_level O2 like the training (eval.py itself keeps float32)."""
    import mindspore as ms

    out, nets = {}, {}
    for model, image, batch, warmup, reps in spec["cases"]:
        config = _ms_gpu_config({"config": spec["configs"][model], "image": image,
                                 "batch": batch, "amp_level": spec["amp_level"]})
        if (model, image) not in nets:
            if not nets:
                _ms_gpu_runtime(config, stage)
            nets[model, image] = _ms_gpu_net(config, spec["amp_level"], stage)
        net, x = nets[model, image], ms.Tensor(random_images(batch, image))
        stage.name = "first step" if not out else "steps"
        out[f"{model}_{image}x{batch}"] = timed(lambda net=net, x=x: net(x).asnumpy(), warmup,
                                                reps)
    emit({"side": "repo", "amp_level": spec["amp_level"], "times": out})


def worker_ms_gpu_train(spec):
    _ms_gpu_guarded(_ms_gpu_train, spec)


def worker_ms_gpu_eval(spec):
    _ms_gpu_guarded(_ms_gpu_eval, spec)


WORKERS = {"gpu_probe": worker_gpu_probe, "torch_gpu_train": worker_torch_gpu_train,
           "torch_gpu_eval": worker_torch_gpu_eval, "ms_gpu_train": worker_ms_gpu_train,
           "ms_gpu_eval": worker_ms_gpu_eval}


# ------------------------------------------------------------------- the run

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


class GpuRun(Runner):
    """The GPU plan: MindSpore workers for this repository, PyTorch workers with and without
    AMP. run() returns the raw results."""

    def __init__(self, plan, work, log=print):
        super().__init__(plan, work, log)
        models = {case[0] for case in plan.train_cases + plan.eval_cases + (plan.latency_case,)}
        self.recipes = {model: gpu_recipe(model) for model in sorted(models)}
        self.repo_blocked = None  # the reason once MindSpore cannot be imported or take the GPU
        self.amp_level = GPU_AMP_LEVEL if plan.amp else "O0"
        self.precisions = (("amp", plan.amp), ("fp32", False))

    def repo_child(self, key, worker, spec):
        if self.repo_blocked:
            result = {"side": "repo", "stage": "skipped", "error": self.repo_blocked}
            self.raw.setdefault(key, []).append(result)
            self.log(f"  {key}: skipped (this repository is unavailable)")
            return result
        result = run_child(worker, spec, "repo", self.work, self.plan.timeout_s)
        self.raw.setdefault(key, []).append(result)
        if "error" not in result:
            self.log(f"  {key}: done in {result['process_wall_s']:.0f} s")
            return result
        if result.get("stage") in (None, "import", "device"):  # None: the process died
            self.repo_blocked = result["error"]
        self.log(f"  {key}: unavailable ({result['error']})")
        return result

    def run(self):
        for case in self.plan.train_cases:
            self.training(*case)
        self.evaluation()
        return self.raw

    def training(self, model, image, batch):
        plan, recipe = self.plan, self.recipes[model]
        self.log(f"training {image}x{image} batch {batch}, {MODEL_LABELS[model]} "
                 f"({recipe['config']})")
        key = f"train_{case_key(model, image, batch)}"
        spec = {"image": image, "batch": batch, "warmup": plan.train_warmup,
                "steps": plan.train_steps}
        self.repo_child(f"{key}_repo", "ms_gpu_train",
                        dict(spec, config=recipe["config"], amp_level=self.amp_level))
        for precision, amp in self.precisions:
            self.child(f"{key}_torch_{precision}", "torch_gpu_train",
                       dict(spec, recipe=recipe, device=plan.torch_device, amp=amp), "torch")

    def evaluation(self):
        plan = self.plan
        cases = [(model, image, batch, plan.eval_warmup, plan.eval_reps)
                 for model, image, batch in plan.eval_cases]
        cases.append((*plan.latency_case, 1, plan.latency_warmup, plan.latency_reps))
        self.log("evaluation " + ", ".join(f"{i}x{i} batch {b} {MODEL_LABELS[m]}"
                                           for m, i, b, _, _ in cases))
        self.repo_child("eval_repo", "ms_gpu_eval", {
            "cases": cases, "amp_level": self.amp_level,
            "configs": {model: recipe["config"] for model, recipe in self.recipes.items()}})
        self.child("eval_torch", "torch_gpu_eval",
                   {"cases": cases, "recipes": self.recipes, "device": plan.torch_device,
                    "precisions": self.precisions}, "torch")
