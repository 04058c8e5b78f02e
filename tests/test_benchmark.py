"""Smoke test of benchmarks/benchmark.py: every section runs in a tiny configuration and the
report is valid JSON with the machine description and all figures. No timing assertions:
the numbers of so small a run mean nothing."""
import dataclasses
import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import benchmark  # noqa: E402  (path set just above)

TINY = dataclasses.replace(
    benchmark.QUICK, name="tiny", train_batch=4, train_rounds=1, train_warmup=0, train_steps=1,
    loss_check_steps=2, eval_batch=4, eval_warmup=1, eval_reps=1, eval224=False,
    latency_image=32, latency_warmup=1, latency_reps=1, trainpy_runs=1, cifar_records=640,
    cifar_batches=0, cifar_reps=1, jpegs=8, imagenet_batch=4, imagenet_reps=1, sgemm_n=256,
    sgemm_reps=1, timeout_s=600)


def test_flop_count_matches_the_issue():
    assert benchmark.vgg_macs(image=(32, 32)) == pytest.approx(332e6, rel=0.01)
    assert benchmark.train_flops_per_image(32) == 6 * benchmark.vgg_macs(image=(32, 32))


def test_table_formats_missing_values():
    rows = [{"figure": "x", "unit": "images/s", "repo": 10.0, "torch": None,
             "onnxruntime": None, "vs_torch": None, "vs_onnxruntime": None, "target": None,
             "note": ""}]
    assert "n/a" in benchmark.format_table(rows)
    assert benchmark.format_table(rows, markdown=True).startswith("| figure |")


def test_tiny_run_writes_a_complete_report(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "results.json"
    report = benchmark.run_benchmark(TINY, str(out), str(tmp_path / "work"), log=lambda *a: None)
    assert report["errors"] == []
    saved = json.loads(out.read_text())
    machine = saved["machine"]
    for key in ("cpu_model", "usable_cpus", "versions", "onednn_max_cpu_isa",
                "fast_conv_active", "peak_gflops_fp32"):
        assert key in machine
    assert set(machine["versions"]) >= {"mindspore", "torch", "onnxruntime", "numpy"}
    # the repository's processes run with the ISA it chooses; PyTorch's without the variable
    assert machine["onednn_max_cpu_isa"]["train_torch"] == ["None"]

    figures = {row["figure"]: row for row in saved["rows"]}
    assert len(figures) == len(saved["rows"])
    for row in saved["rows"]:
        assert row["repo"] is not None and math.isfinite(row["repo"]) and row["repo"] > 0, row
    train = figures["training 32x32 batch 4"]
    assert train["torch"] > 0 and train["vs_torch"] > 0
    assert figures["evaluation 32x32 batch 4"]["onnxruntime"] > 0
    assert figures["latency 32x32 batch 1"]["vs_onnxruntime"] > 0
    assert "training 32x32 batch 4, fast_conv=off (stock MindSpore)" in figures

    check = saved["loss_check"]
    assert check["checked"] and check["steps"] == 2
    assert len(check["reference_relative_difference"]) == 2
    assert check["match"] in (True, False)
    assert check["fast_path_active"] == machine["fast_conv_active"]
