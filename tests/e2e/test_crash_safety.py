"""Crash safety: SIGKILL at random moments with --resume=auto ends where an uninterrupted run
ends; a checkpoint that cannot be written (file too large / disk full) leaves the earlier ones
valid; configs, checkpoints and .pth files never run code from the file.

(Exact resume from an epoch checkpoint and from Ctrl-C mid-epoch: tests/unit/test_train.py.
A .pth whose unpickling would run code: tests/unit/test_torchvision.py and the
"convert: .pth that runs code" row of tests/e2e/test_bad_inputs.py.)
"""
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from src import checkpoint as ckpt
from src.errors import UserError
from tests.helpers import QUICK_CONFIG, REPO, RunsCode, checkpoint_arrays, digest, run_python

# vgg11 with BatchNorm and dropout at 32x32, 128 images: 8 steps an epoch, a checkpoint each.
ARGS = ["--config_path=" + QUICK_CONFIG, "--arch=vgg11", "--batch_norm=True", "--image_size=32,32",
        "--batch_size=16", "--max_epoch=4", "--T_max=4", "--warmup_epochs=1", "--lr=0.005",
        "--log_interval=1", "--ckpt_interval=1", "--keep_checkpoint_max=10", "--seed=7",
        "--eval_interval=0", "--device_target=CPU"]
FINAL = "vgg11_bn-4_8.ckpt"
KILLS = 3


def train_command(data, run_dir, *extra):
    return [sys.executable, os.path.join(REPO, "train.py"), *ARGS, f"--data_dir={data}",
            f"--ckpt_path={run_dir}", *extra]


def run_train(data, run_dir, *extra, **kwargs):
    return run_python("train.py", *ARGS, f"--data_dir={data}", f"--ckpt_path={run_dir}", *extra,
                      timeout=900, **kwargs)


@pytest.fixture(scope="module")
def data(learnable_cifar):
    return learnable_cifar()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: its folder."""
    run_dir = str(tmp_path_factory.mktemp("reference"))
    done = run_train(data, run_dir)
    assert done.returncode == 0, done.stderr
    return run_dir


# ---------------------------------------------------------------- SIGKILL and resume

class CheckpointWatcher:
    """Loads every checkpoint that appears in a folder, as soon as it appears."""

    def __init__(self, folder):
        self.folder = folder
        self.seen = {}

    def check(self):
        for path in ckpt.list_checkpoints(self.folder):
            assert not os.path.basename(path).startswith(".tmp-"), path
            stamp = os.stat(path).st_mtime_ns, os.path.getsize(path)
            if self.seen.get(path) != stamp:
                # read_checkpoint raises if the file does not load
                meta = ckpt.checkpoint_meta(ckpt.read_checkpoint(path))
                assert meta["global_step"] == meta["epoch"] * 8 + meta["step_in_epoch"], path
                self.seen[path] = stamp


def start_and_kill(data, run_dir, steps, delay, watcher):
    """Start a resuming run and SIGKILL it `delay` seconds after its `steps`-th progress line
    (one per step; checking the checkpoints meanwhile). Returns False when the run finished
    before the kill."""
    process = subprocess.Popen(train_command(data, run_dir, "--resume=auto"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = threading.Event()
    lines = []

    def read():
        seen = 0
        for line in process.stdout:
            lines.append(line)
            if re.match(r"epoch \d+/\d+ step \d+/\d+ loss", line):
                seen += 1
                if seen >= steps:
                    reached.set()
        reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not reached.wait(timeout=0.2):
        watcher.check()
        assert process.poll() is None or reached.is_set() or reader.is_alive(), "".join(lines)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    reader.join(timeout=60)
    assert finished or process.returncode == -signal.SIGKILL, "".join(lines)
    if finished:
        assert process.returncode == 0, "".join(lines)
    return not finished


def test_a_save_cut_short_is_never_listed_as_a_checkpoint(tmp_path):
    """What SIGKILL during a save leaves (.tmp-<pid>-<name>, partial) is not a checkpoint to
    resume=auto, to eval.py's folder mode or to pruning."""
    import eval as eval_script

    good = tmp_path / "vgg11_bn-1_8.ckpt"
    good.write_bytes(b"complete")
    partial = tmp_path / ".tmp-4242-vgg11_bn-2_8.ckpt"
    partial.write_bytes(b"partial")
    assert ckpt.list_checkpoints(str(tmp_path)) == [str(good)]
    assert eval_script.checkpoints_to_evaluate(str(tmp_path)) == [str(good)]
    ckpt.prune_checkpoints(str(tmp_path), 1)
    assert partial.exists() and good.exists()


def test_sigkill_at_random_moments_then_resume_auto_ends_as_uninterrupted(data, reference,
                                                                           tmp_path):
    run_dir = str(tmp_path / "killed")
    watcher = CheckpointWatcher(run_dir)
    rng = random.Random(20240611)
    kills = 0
    for _ in range(KILLS):
        # 32 steps in all: each run is killed after a few of its steps, at a random moment
        # within a step (or a checkpoint save at an epoch end)
        if start_and_kill(data, run_dir, rng.randint(2, 7), rng.uniform(0.0, 1.0), watcher):
            kills += 1
        watcher.check()
        leftovers = [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]
        assert not set(leftovers) & {os.path.basename(p) for p in ckpt.list_checkpoints(run_dir)}
    assert kills >= 2, "the runs finished before they could be killed"
    # A save cut short by SIGKILL leaves a .tmp-<pid>-<name> file; one named like the final
    # checkpoint must not be taken for it (resume=auto would otherwise start past the end).
    decoy = os.path.join(run_dir, f".tmp-99999-{FINAL}")
    with open(os.path.join(reference, FINAL), "rb") as source, open(decoy, "wb") as target:
        target.write(source.read(4096))
    assert decoy not in ckpt.list_checkpoints(run_dir)

    done = run_train(data, run_dir, "--resume=auto")
    assert done.returncode == 0, done.stderr
    resumed = re.findall(r"resumed from (\S+) at epoch", done.stdout)
    assert not resumed or ".tmp-" not in resumed[0]
    watcher.check()
    expected = checkpoint_arrays(os.path.join(reference, FINAL))
    got = checkpoint_arrays(os.path.join(run_dir, FINAL))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(run_dir)] == \
        [f"vgg11_bn-{e}_8.ckpt" for e in range(1, 5)]


# ---------------------------------------------------------------- disk full

def limit_file_size(limit):
    def apply():
        # Without SIGXFSZ ignored the kernel would kill the process; ignored, the write
        # fails with EFBIG, as a full disk fails it with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_checkpoint_that_cannot_be_written_is_one_line_and_keeps_earlier_ones(data, reference,
                                                                             tmp_path):
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    earlier = str(run_dir / "vgg11_bn-1_8.ckpt")
    shutil.copy(os.path.join(reference, "vgg11_bn-1_8.ckpt"), earlier)
    before = digest(earlier)
    limit = os.path.getsize(earlier) // 4
    done = run_train(data, str(run_dir), "--resume=auto", "--max_epoch=2", "--T_max=4",
                     preexec_fn=limit_file_size(limit))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout + done.stderr
    assert last == (f"error: could not write checkpoint {run_dir / 'vgg11_bn-2_8.ckpt'}: "
                    "[Errno 27] File too large; earlier checkpoints are unchanged"), done.stderr
    assert "Traceback" not in done.stderr
    assert digest(earlier) == before
    ckpt.read_checkpoint(earlier)
    assert ckpt.list_checkpoints(str(run_dir)) == [earlier]
    assert not [n for n in os.listdir(run_dir) if n.endswith(".ckpt") and n.startswith(".tmp-")]


def test_failed_save_is_our_line_only_and_leaves_no_partial_file(tmp_path, capfd):
    """The same failure in-process, on a small network: nothing but our UserError, and no
    partial file taking the space a full disk lacks."""
    from mindspore import nn

    net = nn.Dense(256, 256)  # a 256 KB checkpoint
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(UserError, match="File too large; earlier checkpoints are unchanged"):
            ckpt.save_checkpoint(net, str(tmp_path / "net-1_1.ckpt"), {"epoch": 1})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert "CRITICAL" not in capfd.readouterr().err
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- untrusted files

def test_config_with_a_python_tag_is_refused(tmp_path):
    from model_utils.config import get_config

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        get_config([f"--config_path={path}"])
    assert not marker.exists()


def test_a_pickle_named_like_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "vgg11_bn-1_8.ckpt"
    path.write_bytes(pickle.dumps({"features.0.weight": RunsCode(marker)}))
    with pytest.raises(UserError, match="corrupt or not a MindSpore checkpoint"):
        ckpt.read_checkpoint(str(path))
    assert not marker.exists()


def test_checkpoints_are_protobuf_not_pickle(reference):
    from mindspore.train.checkpoint_pb2 import Checkpoint

    path = os.path.join(reference, "vgg11_bn-1_8.ckpt")
    with open(path, "rb") as handle:
        raw = handle.read()
    assert raw[:1] != b"\x80"  # every pickle protocol >= 2 starts with PROTO (0x80)
    if raw[-17:-10] == b"crc_num":  # crc_check=True appends 'crc_num' and 10 bytes of CRC
        raw = raw[:-17]
    message = Checkpoint()
    message.ParseFromString(raw)
    names = {value.tag for value in message.value}
    assert "features.0.weight" in names and "meta.config_yaml" in names


def test_no_unsafe_loader_in_the_code():
    """Every YAML load is safe_load, every torch.load passes weights_only=True, and nothing
    unpickles or np.load()s with allow_pickle."""
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load)\(|pickle\.loads?\(|"
                        r"allow_pickle\s*=\s*True|Loader\s*=")
    torch_load = re.compile(r"torch\.load\(([^)]*)\)")
    found = []
    for base, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "outputs")]
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(base, name)
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            found += [f"{path}: {m.group(0)}" for m in unsafe.finditer(text)]
            found += [f"{path}: {m.group(0)}" for m in torch_load.finditer(text)
                      if "weights_only=True" not in m.group(1) and "`" not in m.group(0)]
    assert not found, found
