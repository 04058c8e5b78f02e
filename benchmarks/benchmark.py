"""This repository against PyTorch eager (and onnxruntime) on the same machine, in one run.

    python benchmarks/benchmark.py [--quick] [--out benchmarks/results/benchmark.json]
                                   [--work DIR] [--markdown] [--no-bf16]
    python benchmarks/benchmark.py --tables benchmarks/results/benchmark.json
    python benchmarks/benchmark.py --device gpu [--quick]
                                   [--out benchmarks/results/benchmark_gpu.json]

What is measured (VGG16-BN, float32, 10 classes, the cifar10_config.yaml recipe):

- training images/s at 32x32 batch 64 and 224x224 batch 8 (not with --quick): this
  repository through its own code (config from model_utils.config, network from
  src.factory.build_network, train step from src.trainer.build_train_step with host dropout
  masks as Trainer feeds them, graph mode from src.runtime.setup_runtime), with the kernels
  the factory picks (native_kernels=auto, reported as fast_conv=auto) and with
  native_kernels=off (stock MindSpore, reported as fast_conv=off); PyTorch eager with the same
  architecture (benchmarks/torch_vgg.py), loss, momentum SGD (0.9, weight decay 5e-4 on
  weights) and batch; the fraction of the machine's fp32 peak (4096x4096 sgemm, numpy and
  torch, best of the two) that each reaches;
- the losses of the first steps with the native kernels and without, from the same seed and
  data (the loss check, harness.LOSS_CHECK_RULE: exit status 1 when it fails);
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

bfloat16, in the same run (report_bf16.py), where the CPU has AVX512-BF16 or AMX-BF16 (else
skipped with the reason; --no-bf16 skips it too): this repository with cpu_precision=bfloat16
(src/native/precision.py; each process reports the precision it resolved to, and a row whose
processes fell back to float32 stays empty with the reason) beside PyTorch eager under
torch.autocast("cpu", dtype=torch.bfloat16), at the float32 rows' sizes: training images/s
(32x32 batch 64; 224x224 batch 8, not with --quick), evaluation images/s (32x32 batch 256,
224x224 batch 32, beside onnxruntime's float32 figure), batch-1 latency at 224x224, peak
resident memory of the training processes; the bfloat16 matrix-multiply peak (4096^3, PyTorch's
matmul and this repository's native dense kernel, the better of the two) and the fraction of
it each side reaches; each target of report_bf16.TARGETS with its ratio and met / not met.

Every measurement runs in its own process (benchmarks/harness.py; the workers are in
workers_cpu.py and workers_gpu.py, the report and tables in report.py, the machine probes in
machine.py): ONEDNN_MAX_CPU_ISA is process-wide, and the repository's processes choose it as
train.py does, while PyTorch runs with the machine default (the variable removed). Timings
are medians after warm-up. Figures depend on what else the machine runs: the load average is
recorded.

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
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # the repository's own modules, for this process and the workers
    sys.path.insert(1, ROOT)

import harness  # noqa: E402  (path set just above)
import machine  # noqa: E402
import report  # noqa: E402
import report_bf16  # noqa: E402
import workers_cpu  # noqa: E402
import workers_gpu  # noqa: E402

RESULTS = os.path.join(HERE, "results")
DEFAULT_OUT = {"cpu": os.path.join(RESULTS, "benchmark.json"),
               "gpu": os.path.join(RESULTS, "benchmark_gpu.json")}
PLANS = {"cpu": {False: harness.FULL, True: harness.QUICK},
         "gpu": {False: workers_gpu.GPU_FULL, True: workers_gpu.GPU_QUICK}}
WORKERS = {**workers_cpu.WORKERS, **workers_gpu.WORKERS}


def bf16_skip_reason(plan, cpu_flags):
    """Why this run measures no bfloat16 (one line), or None when it does."""
    if not plan.bf16:
        return "not asked for (--no-bf16)"
    return machine.bf16_unavailable(cpu_flags)


def run_benchmark(plan, out_path, work, log=print):
    """Runs every measurement of the CPU `plan` and writes the JSON report to out_path."""
    os.makedirs(work, exist_ok=True)
    started = time.time()
    described = machine.machine_description()
    log(f"benchmark ({plan.name}) on {described['cpu_model']}, {described['usable_cpus']} CPUs, "
        f"load average {described['load_average_start']}; work folder {work}")
    skip_bf16 = bf16_skip_reason(plan, described["cpu_flags"])
    run = harness.CpuRun(plan, work, log, bf16_skip=skip_bf16)
    raw = run.run()
    summary = report.summarise_cpu(plan, raw)
    bf16 = report_bf16.summarise_bf16(plan, raw, summary["figures"], skip_bf16)
    summary["rows"] += bf16["rows"]
    described.update({
        "load_average_end": machine.load_average(),
        "onednn_max_cpu_isa": summary.pop("onednn_max_cpu_isa_per_process"),
        "fast_conv_active": summary["fast_conv_active"],
        "peak_gflops_fp32": summary["peak_gflops"],
        "peak_gflops_bf16": bf16["bf16"]["matmul_peak"]["peak_gflops"],
        "torch_threads": summary.pop("torch_threads"),
        "torch_cpu_capability": summary.pop("torch_cpu_capability")})
    result = {**_header(started, {}, described), **summary, "bf16": bf16["bf16"],
              "errors": run.errors, "raw": run.raw}
    _write(result, out_path)
    failure = harness.loss_check_failure(result["loss_check"])
    _log_end(result, report.format_table(result["rows"]),
             [report.loss_check_line(result["loss_check"], harness.PERTURB),
              failure and f"error: {failure}", *report_bf16.bf16_lines(result["bf16"]),
              report.run_line(result, plan)], out_path, log)
    return result


def run_gpu_benchmark(plan, out_path, work, log=print):
    """Runs the GPU plan and writes its JSON report to out_path; NoCudaGpu without a GPU."""
    os.makedirs(work, exist_ok=True)
    started = time.time()
    described = workers_gpu.gpu_machine(plan, work)
    gpu = described["gpu"] or {}
    driver = (described["nvidia_smi"] or [{}])[0].get("driver")
    log(f"benchmark ({plan.name}) on {gpu.get('name', plan.torch_device)}, CUDA "
        f"{gpu.get('cuda_version')}, driver {driver}, PyTorch {gpu.get('torch')}; "
        f"work folder {work}")
    run = workers_gpu.GpuRun(plan, work, log)
    summary = report.summarise_gpu(plan, run.run())
    result = {**_header(started, {"device": "gpu"}, described), **summary,
              "recipes": run.recipes, "errors": run.errors, "raw": run.raw}
    _write(result, out_path)
    reason = result["repo"]["unavailable_reason"]
    _log_end(result, report.format_gpu_table(result["rows"]),
             [reason and f"this repository: unavailable: {reason}", report.upstream_line(),
              f"{result['duration_s'] / 60:.1f} min"], out_path, log)
    return result


def _header(started, extra, described):
    """The report's first fields: command, start, duration, the machine."""
    return {"command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), **extra,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started, "machine": described}


def _write(result, out_path):
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


def _log_end(result, table, notes, out_path, log):
    """The table, the notes that apply, the errors and where the report went."""
    log("")
    log(table)
    for line in filter(None, notes):
        log(line)
    for error in result["errors"]:
        log(f"error: {error}")
    if out_path:
        log(f"wrote {out_path}")


def print_tables(path):
    """The Markdown tables of a saved report (exit status 2 when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        rows = result["rows"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"benchmark.py --tables: {path}: not a readable benchmark report ({err})",
              file=sys.stderr)
        return 2
    gpu = any("upstream" in row for row in rows)  # only the GPU table has that column
    print((report.format_gpu_table if gpu else report.format_table)(rows, markdown=True))
    bf16 = result.get("bf16")
    if bf16 and not bf16.get("skipped_reason"):
        print()
        print(report_bf16.format_bf16_table(bf16, markdown=True))
        print()
        print("\n".join(report_bf16.bf16_lines(bf16)))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu (default); gpu: mixed-precision training and inference on "
                             "the CUDA GPU against PyTorch AMP, beside the upstream V100 figure")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (CPU: no 224x224 training either; a few "
                             "minutes)")
    parser.add_argument("--out", help="JSON report (default benchmarks/results/benchmark.json, "
                                      "with --device gpu benchmarks/results/benchmark_gpu.json)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vgg_benchmark"),
                        help="folder for generated data, exports and run folders (reused)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown")
    parser.add_argument("--tables", metavar="JSON",
                        help="measure nothing: print the Markdown tables of a saved report")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="CPU: skip the bfloat16 rows (measured by default where the CPU has "
                             "AVX512-BF16 or AMX-BF16)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:  # one measurement, in the process harness.run_child started
        WORKERS[args.worker](json.loads(args.spec))
        return 0
    if args.tables:
        return print_tables(args.tables)
    work, out = os.path.abspath(args.work), args.out or DEFAULT_OUT[args.device]
    plan = PLANS[args.device][args.quick]
    if args.device == "cpu" and not args.bf16:
        plan = dataclasses.replace(plan, bf16=False)
    if args.device == "gpu":
        try:
            result = run_gpu_benchmark(plan, out, work)
        except workers_gpu.NoCudaGpu as err:
            print(f"benchmark.py --device gpu: {err}", file=sys.stderr)
            return 2
        table = report.format_gpu_table
    else:
        result = run_benchmark(plan, out, work)
        table = report.format_table
    if args.markdown:
        print()
        print(table(result["rows"], markdown=True))
        if result.get("bf16") and not result["bf16"]["skipped_reason"]:
            print()
            print(report_bf16.format_bf16_table(result["bf16"], markdown=True))
    if harness.loss_check_failure(result.get("loss_check", {})):
        return 1  # said above, as "error: loss check failed: ..."
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
