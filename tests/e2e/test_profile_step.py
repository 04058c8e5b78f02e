"""benchmarks/profile_step.py: oneDNN's verbose lines added up per kernel, and one real run."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import profile_step  # noqa: E402  (path set just above)

LINES = [
    "onednn_verbose,v1,primitive,exec,cpu,convolution,jit_bf16:avx512_core_bf16,backward_weights,"
    "src:bf16::blocked:aBcd16b::f0,attr-scratchpad:user,alg:convolution_direct,"
    "mb64_ic512oc512_ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1,60.5",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,jit_bf16:avx512_core_bf16,backward_weights,"
    "src:bf16::blocked:aBcd16b::f0,attr-scratchpad:user,alg:convolution_direct,"
    "mb64_ic512oc512_ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1,59.5",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0,,,"
    "512x512x3x3,4.0",
    "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit,forward,,,,mb1,0.1",
    "epoch: 1 step: 1, loss is 2.3",
]


def test_exec_lines_are_added_up_per_kernel_and_step():
    assert profile_step.parse_exec_line(LINES[3]) is None  # a creation line, not an execution
    assert profile_step.parse_exec_line(LINES[4]) is None
    kind, impl, prop, shape, ms = profile_step.parse_exec_line(LINES[0])
    assert (kind, impl, prop, ms) == ("convolution", "jit_bf16:avx512_core_bf16",
                                      "backward_weights", 60.5)
    summary = profile_step.summarise(LINES, steps=2, step_seconds=[0.1, 0.1])
    # two steps: 120 ms of backward weights and 4 ms of reorder in all, per step half of it
    assert summary["by_kind_ms"] == {"convolution backward_weights": 60.0, "reorder undef": 2.0}
    assert summary["calls_per_step"] == {"convolution backward_weights": 1.0,
                                         "reorder undef": 0.5}
    assert summary["step_ms"] == pytest.approx(100.0)
    assert summary["outside_onednn_ms"] == pytest.approx(38.0)
    assert list(summary["top_layers_ms"])[0].endswith("ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1")


def test_a_real_step_is_profiled(library, tmp_path):
    """A bfloat16 (or, without bfloat16 instructions, float32) step of the real network: the
    convolutions are found, and oneDNN's share is a part of the measured step."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--batch", "4",
                           "--warmup", "1", "--steps", "1", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    kinds = report["by_kind_ms"]
    assert kinds["convolution forward_training"] > 0
    assert report["calls_per_step"]["convolution forward_training"] == 13  # VGG16's convolutions
    assert 0 < report["onednn_ms"] < report["step_ms"]
    assert report["machine"]["cpu_flags"] and "per step" in proc.stdout
    # nChw8c only when VGG_NATIVE_F32_LAYOUT=blocked asks for it on an AVX2-only CPU
    assert report["activation_layout"] in ("nChw16c", "nhwc")


def test_ghost_batches_run_one_batchnorm_per_run(library, tmp_path):
    """--ghost_batch 2 on a batch of 4: the native chain runs each BatchNorm + ReLU (forward and
    backward) once per run of 2 images: 26 times a step for VGG16's 13."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--batch", "4",
                           "--ghost_batch", "2", "--warmup", "1", "--steps", "1",
                           "--precision", "float32", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ghost_batch"] == 2 and "ghost batches of 2" in proc.stdout
    calls = report["calls_per_step"]
    assert calls["batch_normalization forward_training"] == 26
    assert calls["batch_normalization backward"] == 26
    assert calls["convolution forward_training"] == 13


def test_inference_is_profiled_with_eval(library, tmp_path):
    """--eval: one forward pass per step, so the convolutions run as inference (BatchNorm
    folded: no batch_normalization or backward primitive), and the report says so."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--eval", "--batch", "4",
                           "--warmup", "1", "--steps", "2", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "eval" and proc.stdout.startswith("inference, 32x32 batch 4")
    assert report["calls_per_step"]["convolution forward_inference"] == 13
    assert not [kind for kind in report["by_kind_ms"]
                if "backward" in kind or "training" in kind or kind.startswith("batch_norm")]


def test_bad_arguments_exit_with_one_line():
    proc = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--steps", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--steps" in proc.stderr.splitlines()[-1]
