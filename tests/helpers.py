"""What the test files share: the repository's paths, small generated CIFAR-10 data, runners
for the entry points and launch scripts, a tiny network, checkpoint readers and the pieces of
a 2-process msrun job. The fixtures built on them are in tests/conftest.py."""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_TRAIN_DIR, write_cifar10_bin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(REPO, "tests", "stubs")  # stand-in headers and library for the C++ app
QUICK_CONFIG = os.path.join(REPO, "cpu_quickstart_config.yaml")
# A short run of a small network: vgg11 with BatchNorm and dropout at 32x32, batch 16 (8 steps
# an epoch on learnable_cifar's 128 images), 2 epochs.
SMALL_RUN_ARGS = ["--config_path=" + QUICK_CONFIG, "--arch=vgg11", "--batch_size=16",
                  "--max_epoch=2", "--T_max=2", "--warmup_epochs=1", "--lr=0.005",
                  "--log_interval=2", "--keep_checkpoint_max=5", "--device_target=CPU"]


# ---------------------------------------------------------------- data and configs

def write_learnable_cifar(root, n_train=128, n_eval=48, seed=0):
    """CIFAR-10 files under root whose images carry their label as a colour (learnable in a
    few steps): data_batch_1.bin, and test_batch.bin unless n_eval is 0. Returns root."""
    rng = np.random.default_rng(seed)
    for sub, name, count in ((CIFAR10_TRAIN_DIR, "data_batch_1.bin", n_train),
                             (CIFAR10_EVAL_DIR, "test_batch.bin", n_eval)):
        if not count:
            continue
        labels = rng.integers(0, 10, count).astype(np.uint8)
        noise = rng.integers(0, 60, (count, 3, 1024))
        colour = np.stack([labels * 20, 255 - labels * 20, (labels % 3) * 90], 1)[:, :, None]
        images = np.clip(noise + colour, 0, 255).astype(np.uint8)
        write_cifar10_bin(os.path.join(root, sub, name), images, labels)
    return str(root)


def quick_config(*args):
    """The CPU quick-start config with command-line style overrides."""
    from model_utils.config import get_config

    return get_config([f"--config_path={QUICK_CONFIG}", *args])


def tiny_net(seed, conv_bias=False, batch_norm=True):
    """A 3x3 convolution (4 channels; BatchNorm optional), ReLU and a dense layer to 3 classes,
    named as in the VGG (features., classifier.), for 6x6 inputs; built right after
    MindSpore is seeded with `seed`, so equal seeds give equal weights."""
    import mindspore as ms
    from mindspore import nn

    class TinyNet(nn.Cell):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, 4, 3, has_bias=conv_bias)]
            layers += [nn.BatchNorm2d(4)] if batch_norm else []
            self.features = nn.SequentialCell(layers + [nn.ReLU()])
            self.classifier = nn.SequentialCell([nn.Flatten(), nn.Dense(4 * 6 * 6, 3)])

        def construct(self, x):
            return self.classifier(self.features(x))

    ms.set_seed(seed)
    return TinyNet()


# ---------------------------------------------------------------- files

def checkpoint_arrays(path):
    """{name: array} of every parameter and training-state entry of a checkpoint (no meta.*)."""
    from src import checkpoint as ckpt

    return {name: value.asnumpy() for name, value in ckpt.read_checkpoint(str(path)).items()
            if not name.startswith(ckpt.META_PREFIX) and hasattr(value, "asnumpy")}


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class RunsCode:
    """Unpickling this would run a shell command that creates `marker` (a file a test checks
    was never made)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- processes

def run_python(script, *args, cwd=REPO, env=None, timeout=600, **kwargs):
    """A Python program of the repository (`train.py`, `eval.py`, ...) run as a user runs it:
    its CompletedProcess, output captured as text, a failure returned rather than raised."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)


def interrupt_at(argv, line_start, cwd=REPO, timeout=300):
    """Start argv, press Ctrl-C (SIGINT) when a line of its output starts with line_start, let
    it finish: its exit status (130 after a Ctrl-C)."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:
        if line.startswith(line_start):
            process.send_signal(signal.SIGINT)
            break
    process.stdout.read()
    return process.wait(timeout=timeout)


def run_bash(script, *args, cwd, env=None, timeout=60):
    """A shell script of the repository (path relative to it) run with bash, `env` added to
    this process's environment: its CompletedProcess, as run_python."""
    return subprocess.run(["bash", os.path.join(REPO, script), *map(str, args)], cwd=cwd,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, check=False)


# ---------------------------------------------------------------- 2-process msrun jobs

JOB_RECORDS = 128  # training records of the id_coded_cifar fixture
JOB_BATCH = 16
# vgg11 without BatchNorm or dropout: the quickest network whose ranks must stay identical
JOB_NET_ARGS = ["--config_path=cpu_quickstart_config.yaml", "--arch=vgg11",
                "--batch_norm=False", "--has_dropout=False", "--device_target=CPU"]
JOB_TRAIN_ARGS = JOB_NET_ARGS + ["--max_epoch=1", f"--batch_size={JOB_BATCH}",
                                 "--log_interval=1", "--eval_interval=0"]
JOB_TIMEOUT = 240  # seconds; a hung job fails the test instead of the CI run


def find_msrun():
    """msrun beside this interpreter (where pip installed MindSpore's launcher, whether or not
    that folder is on PATH), else on PATH; None if neither."""
    beside = os.path.join(os.path.dirname(sys.executable), "msrun")
    return beside if os.access(beside, os.X_OK) else shutil.which("msrun")


MSRUN = find_msrun()
needs_msrun = pytest.mark.skipif(MSRUN is None, reason="msrun neither beside python nor on PATH")


def interpreter_env(**extra):
    """The environment for jobs: PYTHON is this interpreter (the launch scripts use it and find
    msrun beside it) and its folder comes first on PATH (msrun starts every rank as `python`)."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PYTHON=sys.executable, PATH=path, **extra)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_cpu_training(data, workdir, *args, timeout=JOB_TIMEOUT, env=None):
    """A 2-process CPU training job through scripts/run_distribute_train_cpu.sh, msrun's logs
    in workdir/msrun_log."""
    command = ["bash", os.path.join(REPO, "scripts", "run_distribute_train_cpu.sh"), str(data),
               "--device_num=2", f"--master_port={free_port()}",
               f"--log_dir={workdir / 'msrun_log'}", *JOB_TRAIN_ARGS, *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                          env=interpreter_env(**(env or {})), timeout=timeout, check=False)


def job_output(result, workdir):
    """A job's output and the tail of each of msrun's worker logs, for a failure message."""
    logs = ""
    log_dir = workdir / "msrun_log"
    for name in sorted(os.listdir(log_dir)) if log_dir.is_dir() else []:
        with open(log_dir / name, encoding="utf-8", errors="replace") as handle:
            logs += f"\n==== {name}\n" + handle.read()[-3000:]
    return result.stdout[-3000:] + result.stderr[-3000:] + logs
