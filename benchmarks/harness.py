"""The benchmark's harness: every measurement in a fresh process (`benchmark.py --worker NAME
--spec JSON`), its result read back as one JSON line with the process's peak memory; the
timing loops the workers share; train.py timed from launch to its first step; the loss check
that compares the native and stock kernels; the CPU plan and the run that carries it out
(float32, then bfloat16 where the CPU has it).

ONEDNN_MAX_CPU_ISA is process-wide and read once, hence the processes: the repository's run
with the ISA it chooses itself (the variable left as the user has it, as for train.py),
PyTorch's with the machine default (the variable removed).
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time

import cifar_bin
import native_kernels

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "benchmark.py")  # the CLI, which also runs the workers
CONFIG = os.path.join(ROOT, "cifar10_config.yaml")
RESULT_MARK = "@@BENCH_RESULT@@ "
ISA_VAR = "ONEDNN_MAX_CPU_ISA"
FIRST_STEP_LINE = re.compile(r"^epoch: 1 step: 1, loss is ")


# ------------------------------------------------------------------- child processes

def child_env(kind):
    """Environment of a child: 'repo' (the repository decides the oneDNN ISA, as train.py),
    'repo_stock' (also the native kernels off) or 'torch' (machine default ISA: the variable
    removed)."""
    env = dict(os.environ)
    env.setdefault("GLOG_v", "3")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if kind == "torch":
        env.pop(ISA_VAR, None)
    elif kind == "repo_stock":
        native_kernels.with_stock_kernels(env)
    return env


def run_child(worker, spec, kind, work, timeout):
    """Runs `worker` in a fresh interpreter; returns its result dict (or {'error': ...}) with
    'launch_to_first_step_s' when the worker reported the wall time of its first step."""
    cmd = [sys.executable, SCRIPT, "--worker", worker, "--spec", json.dumps(spec)]
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
    """A worker's last word: its result, with the process's peak memory and ISA setting."""
    import resource

    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.setdefault("isa_env", os.environ.get(ISA_VAR))
    print(RESULT_MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------------- timing

def timed(fn, warmup, reps, sync=lambda: None):
    """Seconds of each of `reps` calls of fn() after `warmup` untimed ones; sync() drains the
    device before and after each timed call."""
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


def timed_steps(run_step, warmup, steps, sync=lambda: None):
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


def time_train_py(work, batch, timeout):
    """Seconds from starting `python train.py` to its first 'epoch: 1 step: 1, loss is' line
    (`batch` random images at batch `batch`: one step per epoch), and to the end of the
    process."""
    data = cifar_bin.write_random_training_set(os.path.join(work, "trainpy_data"), batch)
    run_dir = os.path.join(work, "trainpy_run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config_path={CONFIG}",
           f"--data_dir={data}", "--device_target=CPU", "--image_size=32,32",
           f"--batch_size={batch}", "--max_epoch=1", "--warmup_epochs=1", "--log_interval=1",
           f"--ckpt_path={run_dir}", "--keep_checkpoint_max=1"]
    with open(os.path.join(work, "trainpy_stderr.log"), "w", encoding="utf-8") as errors:
        launch = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=child_env("repo"), cwd=work)
        first, lines, code = _watch_first_step(proc, launch, timeout)
        total = time.time() - launch
    if first is None:
        return {"error": f"train.py exited with {code} without a first-step line: "
                         + " | ".join(lines[-4:])}
    return {"first_step_s": first, "process_s": total, "exit_code": code}


def _watch_first_step(proc, launch, timeout):
    """(seconds to the first-step line or None, output lines, exit code) of a train.py run,
    killed after `timeout` seconds."""
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
    return first, lines, code


# ------------------------------------------------------------------- the loss check

# Relative input noise of the loss check's sensitivity reference: the size of the forward
# differences the native kernels legitimately have (tests/test_native_kernels.py: up to
# 1.5e-5 in the VGG16 feature chain's output, from BatchNorm's float32 batch statistics).
# Such differences flip the odd ReLU whose input is within rounding of 0, which moves the
# second loss of a small batch by ~1e-3; 1e-6 of noise flips about ten times fewer and so
# under-stated that spread (the 4-image smoke run: native 1.7e-3, reference 1.1e-5).
PERTURB = 1e-5
FORWARD_RTOL = 1e-5  # first loss: the forward pass from identical weights and data
REFERENCE_FACTOR = 10  # later losses: this many times the reference's spread

LOSS_CHECK_RULE = (
    "relative difference d_i = |auto_i - off_i| / |off_i| of the first n training losses "
    "(fast_conv=auto vs off, same seed, weights and data); step 1 (the forward pass alone) "
    "passes when d_1 <= forward_rtol; step i > 1 passes when d_i <= max(rtol, "
    "reference_factor * max(r_1..r_i)), where r_j = |ref_j - off_j| / |off_j| and ref is the "
    "fast_conv=off run again with inputs multiplied by (1 + perturbation * standard normal "
    "noise) (without that run: d_i <= rtol); the check passes when all n steps were run, are "
    "finite and pass")


def _relative(values, reference):
    return [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(values, reference)]


def _allowances(n, ref_diffs, rtol, forward_rtol, factor):
    """Per step: forward_rtol for the first loss, then max(rtol, factor x the largest
    reference spread so far), or rtol where the reference has no such step."""
    allowed, running = [rtol] * n, 0.0
    for i in range(min(n, len(ref_diffs or []))):
        running = max(running, ref_diffs[i])
        allowed[i] = max(rtol, factor * running)
    if n:
        allowed[0] = forward_rtol
    return allowed


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
    diffs = _relative(a, b)
    result = {"checked": True, "steps": n, "steps_required": steps, "fast_conv_auto": a,
              "fast_conv_off": b, "relative_difference": diffs,
              "max_relative_difference": max(diffs) if diffs else None,
              "forward_rtol": forward_rtol, "rtol": rtol, "reference_factor": factor,
              "reference_perturbation": perturbation, "rule": LOSS_CHECK_RULE}
    ref_diffs = None
    if reference is not None:
        c = [float(v) for v in reference[:steps]]
        ref_diffs = _relative(c, b)
        result.update({"reference_losses": c, "reference_relative_difference": ref_diffs})
    result["allowed"] = allowed = _allowances(n, ref_diffs, rtol, forward_rtol, factor)
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


# ------------------------------------------------------------------- the CPU plan and its run

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
    sgemm_n: int = 4096            # also the size of the bf16 matrix multiplies
    sgemm_reps: int = 3
    bf16: bool = True              # the bfloat16 rows (training, evaluation, memory, peak)
    timeout_s: int = 900


FULL = Plan()
QUICK = Plan(name="quick", train_rounds=1, train_warmup=1, train_steps=3, train224=False,
             eval_reps=2, eval224_reps=2, latency_warmup=2, latency_reps=5, trainpy_runs=1,
             cifar_batches=120, cifar_reps=2, jpegs=96, imagenet_reps=2, timeout_s=600)


class Runner:
    """Runs workers one after the other, keeps their raw results under a key each and the
    failures, and prints progress."""

    def __init__(self, plan, work, log=print):
        self.plan, self.work, self.log = plan, work, log
        self.raw, self.errors = {}, []

    def child(self, key, worker, spec, kind):
        started = time.time()
        result = run_child(worker, spec, kind, self.work, self.plan.timeout_s)
        return self.record(key, result, f"done in {time.time() - started:.0f} s")

    def record(self, key, result, success):
        """Keeps a result; logs `success`, or the failure (also kept among the errors)."""
        self.raw.setdefault(key, []).append(result)
        if "error" in result:
            self.errors.append(f"{key}: {result['error']}")
            self.log(f"  {key}: FAILED ({result['error'][:300]})")
        else:
            self.log(f"  {key}: {success}")
        return result


class CpuRun(Runner):
    """The CPU plan's measurements, in order: fp32 peak, training (native, PyTorch, stock and
    the loss check's perturbed reference), evaluation and latency (with the ONNX export for
    onnxruntime), bfloat16 (unless `bf16_skip` says why not: peaks, training, evaluation,
    latency), train.py's first step, the data pipelines. run() returns the raw results."""

    def __init__(self, plan, work, log=print, bf16_skip=None):
        super().__init__(plan, work, log)
        self.bf16_skip = bf16_skip

    def run(self):
        plan = self.plan
        self.sgemm()
        self.training(plan.train_image, plan.train_batch, plan.train_warmup, plan.train_steps,
                      plan.train_rounds, True, "")
        if plan.train224:
            self.training(224, plan.train224_batch, plan.train224_warmup, plan.train224_steps,
                          1, False, "224")
        self.evaluation()
        self.bfloat16()
        self.train_py()
        self.data()
        return self.raw

    def sgemm(self):
        self.log("fp32 peak (sgemm)")
        self.child("sgemm", "sgemm", {"n": self.plan.sgemm_n, "reps": self.plan.sgemm_reps},
                   "torch")

    def training(self, image, batch, warmup, steps, rounds, stock, tag):
        """`rounds` processes per side, the order reversed every other round; the stock
        side's later rounds (or an extra one) run with perturbed inputs: the loss check's
        sensitivity reference."""
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
                    side_spec = perturbed
                self.child(f"train{tag}_{side}", worker, side_spec, kind)
        if stock and rounds < 2:
            self.child(f"train{tag}_repo_stock", "ms_train", perturbed, "repo_stock")

    def eval_groups(self):
        """Evaluation cases (image, batch, warmup, reps), grouped by process: one process per
        image size, unless the latency image is the training one."""
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
        return groups

    def evaluation(self):
        groups = self.eval_groups()
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

    def bfloat16(self):
        """This repository with cpu_precision=bfloat16 against PyTorch under bfloat16 autocast,
        each side in its own processes, at the float32 rows' sizes; first the bf16
        matrix-multiply peak of each (PyTorch's matmul, this repository's dense kernel)."""
        if self.bf16_skip:
            self.log(f"bfloat16: skipped ({self.bf16_skip})")
            return
        plan = self.plan
        self.log("bf16 peak (matrix multiply: PyTorch, this repository's dense kernel)")
        peak = {"n": plan.sgemm_n, "reps": plan.sgemm_reps}
        self.child("bf16_matmul_torch", "torch_bf16_matmul", peak, "torch")
        self.child("bf16_matmul_repo", "ms_bf16_matmul", peak, "repo")
        self.bf16_training(plan.train_image, plan.train_batch, plan.train_warmup,
                           plan.train_steps, plan.train_rounds, "")
        if plan.train224:
            self.bf16_training(224, plan.train224_batch, plan.train224_warmup,
                               plan.train224_steps, 1, "224")
        for cases in self.eval_groups():
            self.log(f"bf16 evaluation {', '.join(f'{i}x{i} batch {b}' for i, b, _, _ in cases)}")
            self.child("eval_bf16_repo", "ms_eval", {"cases": cases, "precision": "bfloat16"},
                       "repo")
            self.child("eval_bf16_torch", "torch_eval", {"cases": cases, "bf16": True}, "torch")

    def bf16_training(self, image, batch, warmup, steps, rounds, tag):
        """`rounds` processes per side, the order reversed every other round."""
        self.log(f"bf16 training {image}x{image} batch {batch}")
        spec = {"image": image, "batch": batch, "warmup": warmup, "steps": steps}
        sides = [("repo", "ms_train", dict(spec, fast_conv="auto", precision="bfloat16"), "repo"),
                 ("torch", "torch_train", dict(spec, bf16=True), "torch")]
        for r in range(rounds):
            for side, worker, side_spec, kind in (sides if r % 2 == 0 else sides[::-1]):
                self.child(f"train{tag}_bf16_{side}", worker, side_spec, kind)

    def train_py(self):
        self.log("train.py: process start to first finished step")
        for _ in range(self.plan.trainpy_runs):
            result = time_train_py(self.work, self.plan.train_batch, self.plan.timeout_s)
            self.record("train_py", result,
                        f"first step after {result.get('first_step_s', 0):.1f} s")

    def data(self):
        self.log("data pipelines")
        plan = self.plan
        self.child("data", "data", {"work": os.path.join(self.work, "data"),
                                    "cifar_records": plan.cifar_records,
                                    "cifar_batches": plan.cifar_batches,
                                    "imagenet_batch": plan.imagenet_batch,
                                    "cifar_reps": plan.cifar_reps, "jpegs": plan.jpegs,
                                    "imagenet_reps": plan.imagenet_reps}, "repo")
