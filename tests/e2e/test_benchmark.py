"""Smoke test of benchmarks/benchmark.py (and its harness, workers and report): every section
runs in a tiny configuration and the report is valid JSON with the machine description and all
figures; the bfloat16 part's wiring, targets and its skip on a CPU without bfloat16. No timing
assertions: the numbers of so small a run mean nothing."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import benchmark  # noqa: E402  (path set just above)
import harness  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402
import report_bf16  # noqa: E402
import workers_gpu  # noqa: E402

TINY = dataclasses.replace(
    harness.QUICK, name="tiny", train_batch=4, train_rounds=1, train_warmup=0, train_steps=1,
    loss_check_steps=2, eval_batch=4, eval_warmup=1, eval_reps=1, eval224=False,
    latency_image=32, latency_warmup=1, latency_reps=1, trainpy_runs=1, cifar_records=640,
    cifar_batches=0, cifar_reps=1, jpegs=8, imagenet_batch=4, imagenet_reps=1, sgemm_n=256,
    sgemm_reps=1, timeout_s=600)


def test_flop_count_matches_the_issue():
    assert report.vgg_macs(image=(32, 32)) == pytest.approx(332e6, rel=0.01)
    assert report.train_flops_per_image(32) == 6 * report.vgg_macs(image=(32, 32))


def test_table_formats_missing_values():
    rows = [{"figure": "x", "unit": "images/s", "repo": 10.0, "torch": None,
             "onnxruntime": None, "vs_torch": None, "vs_onnxruntime": None, "target": None,
             "note": ""}]
    assert "n/a" in report.format_table(rows)
    assert report.format_table(rows, markdown=True).startswith("| figure |")


def test_tiny_run_writes_a_complete_report(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    # the workers choose oneDNN's ISA as from a shell, not with the cap conftest.py set here
    monkeypatch.delenv(harness.ISA_VAR, raising=False)
    out = tmp_path / "results.json"
    result = benchmark.run_benchmark(TINY, str(out), str(tmp_path / "work"), log=lambda *a: None)
    assert result["errors"] == []
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
    assert check["rule"] == harness.LOSS_CHECK_RULE and len(check["allowed"]) == 2
    assert check["allowed"][0] == harness.FORWARD_RTOL
    # native and stock kernels agree on this run (a failure here is the benchmark's
    # "error: loss check failed" and its exit status 1)
    assert check["match"] is True, check
    assert check["failed_steps"] == []
    assert check["fast_path_active"] == machine["fast_conv_active"]
    _check_bf16_part(saved, figures)


def _check_bf16_part(saved, figures):
    """The tiny run's bfloat16 rows where the CPU has bfloat16, else the stated skip."""
    bf16 = saved["bf16"]
    assert len(bf16["targets"]) == len(report_bf16.TARGETS)
    skip = machine.bf16_unavailable(saved["machine"]["cpu_flags"])
    if skip:
        assert bf16["skipped_reason"] == skip
        assert not [name for name in figures if "bfloat16" in name]
        return
    assert bf16["skipped_reason"] is None and saved["machine"]["peak_gflops_bf16"] > 0
    for name in ("training 32x32 batch 4, bfloat16", "evaluation 32x32 batch 4, bfloat16",
                 "latency 32x32 batch 1, bfloat16",
                 "peak memory, training 32x32 batch 4, bfloat16"):
        assert figures[name]["torch"] > 0, name  # ours: > 0 in every row, checked above
    # this repository's processes computed in bfloat16, PyTorch's under bfloat16 autocast
    assert {p[0] for p in bf16["repo_processes"].values()} == {"bfloat16"}
    assert {r["autocast"] for r in saved["raw"]["train_bf16_torch"]} == {"bfloat16"}
    assert bf16["cases"]["train"]["repo_fraction_of_bf16_peak"] > 0
    # the tiny plan has no 224x224 rows: those targets say so instead of a verdict
    not_run = [t for t in bf16["targets"] if t["met"] is None]
    assert {t["figure"] for t in not_run} == {
        "training 224x224 batch 8, bfloat16", "evaluation 224x224 batch 32, bfloat16",
        "peak memory, training 224x224 batch 8, bfloat16"}
    assert all("not in this plan" in t["not_measured"] for t in not_run)
    assert len(not_run) == 4 and bf16["targets_measured"] == len(report_bf16.TARGETS) - 4


def test_torch_peer_reads_the_layer_table_of_src_vgg():
    """benchmarks/torch_vgg.py takes src/vgg.py's table from its source, without MindSpore."""
    pytest.importorskip("torch")
    import torch_vgg

    from src import vgg

    assert torch_vgg.LAYER_TABLE == vgg.LAYER_TABLE
    assert (torch_vgg.FEATURE_STRIDE, torch_vgg.HIDDEN) == (vgg.FEATURE_STRIDE, vgg.HIDDEN)
    assert report.vgg_macs(vgg.LAYER_TABLE["vgg16"]) == report.vgg_macs()


def test_soak_summary_and_its_json(tmp_path):
    pytest.importorskip("psutil")
    import soak

    # (seconds, RSS MB, epochs done): first epoch ends at 20 s, then flat within 2 MB
    flat = [(5.0 * i, 1300.0 + (i % 3), 0 if i < 4 else 1 + i // 10) for i in range(40)]
    result = soak.summarise(flat)
    assert result["flat"] is True and result["epochs"] == 4
    assert (result["rss_after_first_epoch_mb"], result["rss_at_end_mb"],
            result["rss_highest_mb"]) == (1301.0, 1300.0, 1302.0)
    assert abs(result["slope_mb_per_hour"]) < 60
    growing = [(60.0 * i, 1300.0 + 10 * i, 1 + i) for i in range(20)]  # 600 MB/hour
    grown = soak.summarise(growing)
    assert grown["flat"] is False and grown["slope_mb_per_hour"] == pytest.approx(600.0)
    assert "YES" in soak.describe(grown) and "no (threshold" in soak.describe(result)
    short = soak.summarise(flat[:6])
    assert short["flat"] is None and "run longer" in soak.describe(short)

    paths = soak.write_results(flat, dict(result, minutes=3.3), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["soak_rss.csv", "soak_rss.png", "soak.json"]
    saved = json.loads((tmp_path / "soak.json").read_text())
    assert saved["rss_highest_mb"] == 1302.0 and saved["flat"] is True
    assert saved["minutes"] == 3.3 and saved["epochs"] == 4
    assert set(saved["machine"]["flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


# ------------------------------------------------------------------- the loss check's rule

STOCK = [2.302585, 2.251, 2.188, 2.097, 2.011]
# the stock run with perturbed inputs: spreads 0, 4e-7, 2e-5, 1e-3, 3e-3 (relative)
PERTURBED = [2.302585, 2.251 * (1 + 4e-7), 2.188 * (1 + 2e-5), 2.097 * (1 + 1e-3),
             2.011 * (1 - 3e-3)]


def scaled(losses, factors):
    return [x * (1 + f) for x, f in zip(losses, factors)]


def check(auto, reference=PERTURBED, steps=5, rtol=1e-3):
    return harness.compare_losses(auto, STOCK, reference, steps, rtol)


def test_loss_check_passes_within_the_allowance():
    assert check(STOCK)["match"] is True
    # 1e-6 on the forward loss, then within max(rtol, 10 x the reference spread so far)
    result = check(scaled(STOCK, [1e-6, 9e-4, 9e-4, 9e-3, 2.9e-2]))
    assert result["match"] is True and result["failed_steps"] == []
    assert result["allowed"] == pytest.approx([1e-5, 1e-3, 1e-3, 1e-2, 3e-2], rel=1e-3)
    assert result["rule"] == harness.LOSS_CHECK_RULE
    json.dumps(result)  # goes into the report as it is


def test_loss_check_fails_on_a_wrong_forward_pass():
    result = check(scaled(STOCK, [2e-5, 0, 0, 0, 0]))  # first loss: forward pass alone
    assert result["match"] is False and result["failed_steps"] == [1]
    assert "step 1: 2.00e-05 > 1.00e-05" in harness.loss_check_failure(result)


def test_loss_check_fails_on_a_wrong_gradient():
    # the second loss moves by 1 % where the reference moved by 4e-7: far beyond 1e-3
    result = check(scaled(STOCK, [0, 1e-2, 1e-2, 5e-3, 5e-3]))
    assert result["match"] is False and result["failed_steps"] == [2, 3]
    # the allowance never shrinks back: later steps judged by the largest spread so far
    assert check(scaled(STOCK, [0, 0, 0, 0, 9e-3]))["match"] is True
    assert check(scaled(STOCK, [0, 0, 0, 0, 3.1e-2]))["failed_steps"] == [5]


def test_loss_check_without_reference_uses_the_fixed_tolerance():
    assert check(scaled(STOCK, [0, 9e-4, 0, 0, 0]), reference=None)["match"] is True
    result = check(scaled(STOCK, [0, 0, 0, 2e-3, 0]), reference=None)
    assert result["failed_steps"] == [4] and result["allowed"][3] == 1e-3


def test_loss_check_fails_on_nan_or_missing_losses():
    assert check(STOCK[:4] + [float("nan")])["failed_steps"] == [5]
    assert check([float("nan")] + STOCK[1:], reference=PERTURBED)["failed_steps"] == [1]
    short = check(STOCK[:3])
    assert short["match"] is False and "only 3 of 5" in harness.loss_check_failure(short)
    assert harness.loss_check_failure(check(STOCK)) is None
    assert harness.loss_check_failure({"checked": False}) is None


def test_benchmark_exits_non_zero_when_the_loss_check_fails(monkeypatch, capsys):
    failing = check(scaled(STOCK, [0, 1e-2, 0, 0, 0]))
    result = {"errors": [], "rows": [], "loss_check": failing}
    monkeypatch.setattr(benchmark, "run_benchmark", lambda plan, out, work: result)
    assert benchmark.main(["--quick", "--out", os.devnull]) == 1
    result["loss_check"] = check(STOCK)
    assert benchmark.main(["--quick", "--out", os.devnull]) == 0


# ------------------------------------------------------------------- bfloat16

def test_bf16_skip_reason_follows_the_cpu_flags_and_the_option():
    no_bf16 = ["avx", "avx2", "avx512f", "fma"]
    reason = benchmark.bf16_skip_reason(harness.QUICK, no_bf16)
    assert "no bfloat16 instructions" in reason and "avx512_bf16" in reason
    assert benchmark.bf16_skip_reason(harness.QUICK, no_bf16 + ["avx512_bf16"]) is None
    assert benchmark.bf16_skip_reason(harness.QUICK, ["amx_bf16"]) is None
    skipped = dataclasses.replace(harness.QUICK, bf16=False)
    assert "--no-bf16" in benchmark.bf16_skip_reason(skipped, ["avx512_bf16"])


def _run_without_processes(monkeypatch, tmp_path, cpu_flags):
    """benchmark.run_benchmark with every worker answering 'not run' at once (no process
    starts) on a machine with `cpu_flags`: (result, workers asked for, printed lines)."""
    asked, lines = [], []
    described = dict(machine.machine_description(), cpu_flags=cpu_flags)
    monkeypatch.setattr(machine, "machine_description", lambda: dict(described))

    def run_child(worker, spec, kind, work, timeout):
        asked.append((worker, spec, kind))
        return {"error": "not run"}

    monkeypatch.setattr(harness, "run_child", run_child)
    monkeypatch.setattr(harness, "time_train_py", lambda *a: {"error": "not run"})
    result = benchmark.run_benchmark(harness.QUICK, str(tmp_path / "out.json"), str(tmp_path),
                                     log=lines.append)
    json.loads((tmp_path / "out.json").read_text())  # written, and JSON
    return result, asked, lines


def test_bf16_rows_are_skipped_with_the_reason_on_a_cpu_without_bf16(monkeypatch, tmp_path):
    result, asked, lines = _run_without_processes(monkeypatch, tmp_path, ["avx2", "avx512f"])
    reason = machine.bf16_unavailable(["avx2", "avx512f"])
    assert result["bf16"]["skipped_reason"] == reason
    assert not [a for a in asked if "bf16" in a[0] or a[1].get("precision") == "bfloat16"
                or a[1].get("bf16")]
    assert not [r for r in result["rows"] if "bfloat16" in r["figure"]]
    assert all(t["met"] is None and t["not_measured"] == reason
               for t in result["bf16"]["targets"])
    assert lines.count(f"bfloat16: skipped ({reason})") == 2  # in the progress, at the end
    assert [line for line in lines if line.startswith("figure")]  # the table still prints


def test_bf16_workers_run_in_the_same_run_where_the_cpu_has_bf16(monkeypatch, tmp_path):
    result, asked, lines = _run_without_processes(monkeypatch, tmp_path, ["avx512_bf16"])
    bf16 = [(worker, kind) for worker, spec, kind in asked
            if "bf16" in worker or spec.get("precision") == "bfloat16" or spec.get("bf16")]
    plan = harness.QUICK  # rounds of training processes per side, one eval group per size
    groups = len(harness.CpuRun(plan, str(tmp_path)).eval_groups())
    assert sorted(bf16) == sorted(
        [("torch_bf16_matmul", "torch"), ("ms_bf16_matmul", "repo")]
        + [("ms_train", "repo"), ("torch_train", "torch")] * plan.train_rounds
        + [("ms_eval", "repo"), ("torch_eval", "torch")] * groups)
    assert result["bf16"]["skipped_reason"] is None
    # every worker failed here: no figure, each target says why, nothing crashes
    assert all(t["met"] is None for t in result["bf16"]["targets"])
    assert any(line.startswith("  training 32x32 batch 64, bfloat16: n/a") for line in lines)


def test_bf16_rows_stay_empty_where_onednn_is_capped_below_bf16(tmp_path, monkeypatch):
    """The real float32 fallback: with ONEDNN_MAX_CPU_ISA=AVX2 this repository's processes
    resolve cpu_precision=bfloat16 to float32, and its bfloat16 cells say so instead of
    showing float32 figures; PyTorch's side (run without the variable) still measures."""
    pytest.importorskip("torch")
    if machine.bf16_unavailable(machine.cpu_flags()):
        pytest.skip("no bfloat16 on this CPU (the skip is tested above)")
    monkeypatch.setenv(harness.ISA_VAR, "AVX2")
    plan = dataclasses.replace(TINY, train_rounds=1)
    run = harness.CpuRun(plan, str(tmp_path), log=lambda *a: None)
    run.bfloat16()
    assert run.errors == []
    result = report_bf16.summarise_bf16(plan, run.raw, {})
    assert result["bf16"]["matmul_peak"]["repo_dense_gflops"] is None
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in result["bf16"]["matmul_peak"]["repo_dense_unavailable"]
    assert result["bf16"]["matmul_peak"]["peak_gflops"] > 0  # PyTorch's
    assert {p[0] for p in result["bf16"]["repo_processes"].values()} == {"float32"}
    for row in result["rows"]:
        assert row["repo"] is None and row["torch"] > 0, row
        assert "this repository ran float32: no bfloat16 instructions for oneDNN (oneDNN is " \
               "capped below them by ONEDNN_MAX_CPU_ISA=AVX2)" in row["note"], row


def _bf16_raw(precision="bfloat16"):
    """Raw bfloat16 results of the full plan, with round numbers (see the test below)."""
    def repo(**fields):
        return dict(fields, precision=precision, precision_detail=(
            "avx512_core_bf16" if precision == "bfloat16" else
            "no bfloat16 instructions for oneDNN (the CPU has neither AVX512-BF16 nor AMX-BF16)"))

    return {
        "bf16_matmul_torch": [{"torch_bf16_gflops": 1000.0}],
        "bf16_matmul_repo": [{"native_bf16_gflops": 800.0}],
        "train_bf16_repo": [repo(step_s=[0.25] * 3, max_rss_mb=900.0, losses=[2.3, 2.2])],
        "train_bf16_torch": [{"step_s": [0.5] * 3, "max_rss_mb": 1000.0, "losses": [2.3]}],
        "train224_bf16_repo": [repo(step_s=[2.0], max_rss_mb=3000.0, losses=[2.3])],
        "train224_bf16_torch": [{"step_s": [2.5], "max_rss_mb": 2900.0, "losses": [2.3]}],
        "eval_bf16_repo": [repo(times={"32x256": [0.4], "224x32": [2.0], "224x1": [0.1]})],
        "eval_bf16_torch": [{"times": {"32x256": [0.8], "224x32": [4.0], "224x1": [0.08]}}]}


FP32_FIGURES = {"train": {"repo_images_per_s": 120.0, "torch_images_per_s": 100.0},
                "eval_32_b256": {"repo": 400.0, "torch": 300.0, "onnxruntime": 500.0},
                "eval_224_b32": {"repo": 10.0, "torch": 6.0, "onnxruntime": 20.0},
                "latency_ms": {"repo": 130.0, "torch": 150.0, "onnxruntime": 90.0},
                "train_peak_rss_mb": {"repo": 1100.0, "torch": 1000.0}}


def test_bf16_targets_are_judged_on_the_ratios():
    result = report_bf16.summarise_bf16(harness.FULL, _bf16_raw(), FP32_FIGURES)
    rows = {row["figure"]: row for row in result["rows"]}
    train = rows["training 32x32 batch 64, bfloat16"]
    assert (train["repo"], train["torch"], train["vs_torch"]) == (256.0, 128.0, 2.0)
    assert "vs PyTorch float32 2.56x" in train["note"]
    assert rows["latency 224x224 batch 1, bfloat16"]["vs_torch"] == pytest.approx(0.8)
    assert rows["evaluation 32x32 batch 256, bfloat16"]["vs_onnxruntime"] == pytest.approx(1.28)
    bf16 = result["bf16"]
    assert bf16["matmul_peak"]["peak_gflops"] == 1000.0
    # 256 images/s x 3 x 2 x 332 MFLOP of forward multiply-adds / 1000 GFLOP/s: about 51 %
    assert bf16["cases"]["train"]["repo_fraction_of_bf16_peak"] == pytest.approx(
        256 * report.train_flops_per_image(32) / 1e12)
    verdicts = {(t["figure"], t["against"]): t["met"] for t in bf16["targets"]}
    torch_bf16, torch_fp32, ort = (report_bf16.PEERS[k] for k in
                                   ("torch_bf16", "torch_fp32", "onnxruntime"))
    assert verdicts == {
        ("training 32x32 batch 64, bfloat16", torch_bf16): True,    # 2.0 >= 2.0
        ("training 32x32 batch 64, bfloat16", torch_fp32): False,   # 2.56 < 2.9
        ("training 224x224 batch 8, bfloat16", torch_bf16): False,  # 1.25 < 1.5
        ("evaluation 32x32 batch 256, bfloat16", torch_bf16): True,   # 2.0
        ("evaluation 32x32 batch 256, bfloat16", ort): True,          # 640 > 500
        ("evaluation 224x224 batch 32, bfloat16", torch_bf16): True,  # 2.0
        ("evaluation 224x224 batch 32, bfloat16", ort): False,        # 16 < 20
        ("latency 224x224 batch 1, bfloat16", torch_bf16): False,     # 100 ms > 80 ms
        ("peak memory, training 32x32 batch 64, bfloat16", torch_bf16): True,     # 900 <= 1000
        ("peak memory, training 224x224 batch 8, bfloat16", torch_bf16): False}  # 3000 > 2900
    assert (bf16["targets_met"], bf16["targets_measured"]) == (5, 10)
    lines = report_bf16.bf16_lines(bf16)
    assert "bfloat16 targets met: 5 of 10 measured" in lines[0]
    assert "  training 32x32 batch 64, bfloat16: 2.56x vs PyTorch float32 (target >= 2.9x " \
           "PyTorch fp32): NOT MET" in lines
    assert "training 32x32 batch 64, bfloat16" in report.format_table(result["rows"])
    json.dumps(result)


def test_bf16_table_and_tables_option_print_a_saved_report(tmp_path, capsys):
    """--tables re-prints a saved report's tables: every peer's ratio and each target's verdict."""
    result = report_bf16.summarise_bf16(harness.FULL, _bf16_raw(), FP32_FIGURES)
    table = report_bf16.format_bf16_table(result["bf16"], markdown=True).splitlines()
    train = next(line for line in table if line.startswith("| training 32x32"))
    # 256 vs 128 (bf16) and vs 100 (float32); its two targets: 2.0 met, 2.9 not
    assert "| 256 | 128 | 2.00x | 100 | 2.56x | n/a | n/a |" in train
    assert train.endswith("yes, no |")
    latency = next(line for line in table if line.startswith("| latency"))
    assert "| 100 | 80.0 | 0.80x | 150 | 1.50x | 90.0 | 0.90x |" in latency  # times: peer / ours
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps({"rows": result["rows"], "bf16": result["bf16"]}))
    assert benchmark.main(["--tables", str(saved)]) == 0
    out = capsys.readouterr().out
    assert train in out and "bfloat16 targets met: 5 of 10 measured" in out
    saved.write_text("{not json")
    assert benchmark.main(["--tables", str(saved)]) == 2
    assert "not a readable benchmark report" in capsys.readouterr().err


def test_bf16_rows_of_a_float32_fallback_stay_empty_with_the_reason():
    """Where this repository's processes resolved cpu_precision=bfloat16 to float32 (e.g.
    ONEDNN_MAX_CPU_ISA capped below bfloat16), its figures are not passed off as bfloat16."""
    result = report_bf16.summarise_bf16(harness.FULL, _bf16_raw("float32"), FP32_FIGURES)
    for row in result["rows"]:
        assert row["repo"] is None and row["vs_torch"] is None, row
        assert row["torch"] is not None and "this repository ran float32: no bfloat16" in \
            row["note"], row
    targets = result["bf16"]["targets"]
    assert all(t["met"] is None and "ran float32" in t["not_measured"] for t in targets)
    assert result["bf16"]["targets_measured"] == 0


# ------------------------------------------------------------------- GPU mode, without a GPU

TINY_GPU = dataclasses.replace(
    workers_gpu.GPU_QUICK, name="tiny-gpu", train_cases=(("vgg16_bn", 32, 2),), train_warmup=0,
    train_steps=1, eval_cases=(("vgg16_bn", 32, 2),), eval_warmup=0, eval_reps=1,
    latency_case=("vgg16_bn", 32), latency_warmup=0, latency_reps=1, torch_device="cpu",
    amp=False, timeout_s=300)


def _no_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")


def test_gpu_mode_without_cuda_exits_with_one_line(tmp_path):
    _no_cuda()
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "benchmark.py"),
                           "--device", "gpu", "--out", str(out), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible to PyTorch" in lines[0], lines
    assert not out.exists()


def _fabricated_raw(repo_error=None):
    """Raw results of a default GPU plan: every PyTorch worker measured; this repository's
    measured too, or failed with repo_error."""
    raw = {}

    def repo(result):
        return {"side": "repo", "stage": "import", "error": repo_error} if repo_error else result

    for model, image, batch in workers_gpu.GPU_FULL.train_cases:
        key = f"train_{model}_{image}_b{batch}"
        raw[f"{key}_repo"] = [repo({"step_s": [0.050, 0.040, 0.060], "first_step_s": 30.0,
                                    "launch_to_first_step_s": 40.0,
                                    "peak_device_memory_mb": 9000.0})]
        for precision, seconds in (("amp", 0.025), ("fp32", 0.1)):
            raw[f"{key}_torch_{precision}"] = [{
                "step_s": [seconds] * 3, "first_step_s": 2.0, "launch_to_first_step_s": 6.0,
                "peak_device_memory_mb": 5000.0, "settings": {"cudnn_benchmark": True}}]
    cases = [(m, i, b) for m, i, b in workers_gpu.GPU_FULL.eval_cases]
    cases.append((*workers_gpu.GPU_FULL.latency_case, 1))
    raw["eval_repo"] = [repo({"times": {f"{m}_{i}x{b}": [0.02] for m, i, b in cases}})]
    raw["eval_torch"] = [{"times": {f"{precision}/{m}_{i}x{b}": [seconds] for m, i, b in cases
                                    for precision, seconds in (("amp", 0.01), ("fp32", 0.04))}}]
    return raw


def test_gpu_summary_puts_the_upstream_figure_beside_the_measured_ones():
    result = report.summarise_gpu(workers_gpu.GPU_FULL, _fabricated_raw())
    rows = {row["figure"]: row for row in result["rows"]}
    step = rows["training 224x224 batch 32, VGG16, mixed precision, step time"]
    assert step["repo"] == pytest.approx(50.0) and step["torch"] == pytest.approx(25.0)
    assert step["upstream"] == 81.0 and step["vs_torch"] == pytest.approx(0.5)
    rate = rows["training 224x224 batch 32, VGG16, mixed precision"]
    assert rate["repo"] == pytest.approx(640.0) and rate["upstream"] == pytest.approx(32 / 0.081)
    assert "not measured here" in rate["note"]
    assert rows["training 32x32 batch 64, VGG16-BN, mixed precision"]["upstream"] is None
    reference = rows["training 224x224 batch 32, VGG16, float32, PyTorch reference"]
    assert reference["torch"] == pytest.approx(320.0) and reference["repo_status"] == ""
    assert rows["evaluation 32x32 batch 256, VGG16-BN, mixed precision"]["vs_torch"] == \
        pytest.approx(0.5)
    assert rows["latency 224x224 batch 1, VGG16, mixed precision"]["repo"] == pytest.approx(20.0)
    assert result["repo"] == {"available": True, "unavailable_reason": None, "amp_level": "O2"}
    assert result["upstream_reference"]["measured_here"] is False
    table = report.format_gpu_table(result["rows"])
    assert "upstream V100 (published)" in table.splitlines()[0]
    json.dumps(result)  # the report is JSON as it is


def test_gpu_summary_shows_the_repository_unavailable_with_its_reason():
    reason = "MindSpore is not installed (No module named 'mindspore')"
    result = report.summarise_gpu(workers_gpu.GPU_FULL, _fabricated_raw(reason))
    assert result["repo"]["available"] is False
    assert result["repo"]["unavailable_reason"] == reason
    for row in result["rows"]:
        assert row["repo"] is None and row["vs_torch"] is None, row
        assert row["torch"] is not None, row
        if "PyTorch reference" not in row["figure"]:
            assert row["repo_status"] == f"unavailable: {reason}", row
    step = {row["figure"]: row for row in result["rows"]}[
        "training 224x224 batch 32, VGG16, mixed precision, step time"]
    assert step["upstream"] == 81.0 and step["torch"] == pytest.approx(25.0)
    table = report.format_gpu_table(result["rows"])
    assert "unavailable: MindSpore is not installed" in table
    assert report.format_gpu_table(result["rows"], markdown=True).startswith("| figure |")


def test_gpu_recipes_follow_the_configs():
    vgg16, vgg16_bn = workers_gpu.gpu_recipe("vgg16"), workers_gpu.gpu_recipe("vgg16_bn")
    assert (vgg16["batch_norm"], vgg16["num_classes"], vgg16["has_bias"]) == (False, 1000, True)
    assert vgg16["label_smoothing"] == pytest.approx(0.1)
    assert (vgg16_bn["batch_norm"], vgg16_bn["num_classes"]) == (True, 10)


def test_gpu_plan_runs_through_on_cpu_without_mindspore(tmp_path, monkeypatch):
    """The GPU plan's whole path with PyTorch forced to the CPU (AMP off) and MindSpore made
    unimportable, as on the GPU machine: PyTorch figures alone, the repository unavailable."""
    pytest.importorskip("torch")
    stub = tmp_path / "stub" / "mindspore"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mindspore'\", name='mindspore')\n")
    monkeypatch.setenv("PYTHONPATH", str(stub.parent))
    monkeypatch.setitem(sys.modules, "mindspore", None)  # nor in this, the parent, process
    out = tmp_path / "gpu.json"
    result = benchmark.run_gpu_benchmark(TINY_GPU, str(out), str(tmp_path / "work"),
                                         log=lambda *a: None)
    assert result["errors"] == []
    saved = json.loads(out.read_text())
    assert saved["device"] == "gpu" and saved["upstream_reference"]["ms_per_step"] == 81.0
    assert saved["repo"]["unavailable_reason"] == \
        "MindSpore is not installed (No module named 'mindspore')"
    assert saved["raw"]["eval_repo"][0]["stage"] == "skipped"  # not retried once known
    figures = {row["figure"]: row for row in saved["rows"]}
    train = figures["training 32x32 batch 2, VGG16-BN, mixed precision"]
    assert train["torch"] > 0 and train["repo_status"].startswith("unavailable: MindSpore")
    assert figures["training 32x32 batch 2, VGG16-BN, float32, PyTorch reference"]["torch"] > 0
    assert figures["latency 32x32 batch 1, VGG16-BN, mixed precision"]["torch"] > 0
    assert all(len(r["losses"]) == 2 for r in saved["raw"]["train_vgg16_bn_32_b2_torch_fp32"])


def test_gpu_repo_worker_reports_an_unusable_gpu_backend(tmp_path):
    """With MindSpore present but no GPU backend (this machine), the worker answers with a
    one-line reason instead of crashing."""
    pytest.importorskip("mindspore")
    spec = {"image": 32, "batch": 2, "warmup": 0, "steps": 1, "config": "cifar10_config.yaml",
            "amp_level": "O2"}
    result = harness.run_child("ms_gpu_train", spec, "repo", str(tmp_path), 300)
    if "error" not in result:
        pytest.skip("MindSpore runs on a GPU here")
    assert result["stage"] in ("device", "first step"), result
    assert "\n" not in result["error"] and len(result["error"]) <= 260
