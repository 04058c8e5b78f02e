"""benchmarks/bf16_accuracy.py without training: its held-out split and subset, its verdict
rule, its check of the precision line, and its refusal where oneDNN runs no bfloat16."""
import os
import subprocess
import sys

import pytest

from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_RECORD_BYTES, CIFAR10_TRAIN_DIR
from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bf16_accuracy  # noqa: E402  (path set just above)
import cifar_bin  # noqa: E402

SCRIPT = os.path.join(REPO, "benchmarks", "bf16_accuracy.py")


def runs(fp32, bf16):
    return ([{"precision": "float32", "holdout_top1": a} for a in fp32]
            + [{"precision": "bfloat16", "holdout_top1": a} for a in bf16])


def test_subset_is_the_first_records_and_the_holdout_the_last(tmp_path):
    source = cifar_bin.write_random_training_set(str(tmp_path / "src"), 50, files=2)
    every = cifar_bin.read_records(
        [os.path.join(source, CIFAR10_TRAIN_DIR, f"data_batch_{i}.bin") for i in (1, 2)])
    data = bf16_accuracy.training_subset(source, str(tmp_path / "work"), 30, 20)
    train = cifar_bin.read_records([os.path.join(data, CIFAR10_TRAIN_DIR, "data_batch_1.bin")])
    held = cifar_bin.read_records([os.path.join(data, CIFAR10_EVAL_DIR, "test_batch.bin")])
    assert train.shape == (20, CIFAR10_RECORD_BYTES) and (train == every[:20]).all()
    assert (held == every[-30:]).all()
    with pytest.raises(SystemExit, match="more than the 70"):
        bf16_accuracy.training_subset(source, str(tmp_path / "work2"), 30, 71)


def test_verdict_uses_the_seed_spread_and_the_floor():
    wide = bf16_accuracy.verdict(runs([0.70, 0.74, 0.72], [0.69, 0.73, 0.71]))
    assert wide["difference_of_means_pp"] == pytest.approx(-1.0)
    assert wide["tolerance_pp"] == pytest.approx(4.0) and wide["verdict"] == "same"
    tight = bf16_accuracy.verdict(runs([0.720, 0.721, 0.722], [0.700, 0.701, 0.702]))
    assert tight["tolerance_pp"] == pytest.approx(0.5) and tight["verdict"] == "differs"


def test_a_float32_fallback_log_is_rejected():
    ok = "INFO precision: bfloat16 on CPU (cpu_precision=bfloat16, oneDNN x): convolutions ..."
    bf16_accuracy.check_precision(ok, "bfloat16", "train.log")
    for log in ("precision: float32 on CPU (cpu_precision=bfloat16, but bfloat16 is not "
                "available: ...)", ok + "; training runs the convolutions in float32 (why)"):
        with pytest.raises(SystemExit, match="train.log"):
            bf16_accuracy.check_precision(log, "bfloat16", "train.log")


def test_refuses_where_onednn_runs_no_bfloat16(tmp_path):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, SCRIPT, "--cifar_dir", str(tmp_path),
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: bfloat16 cannot run")
    assert not (tmp_path / "work").exists()
