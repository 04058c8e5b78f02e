"""Does bfloat16 training reach float32's held-out accuracy? The CPU recipe on real CIFAR-10,
several seeds per precision, scored on a held-out split neither precision trains on.

    python benchmarks/bf16_accuracy.py --cifar_dir DATA [--train_images 10000] [--holdout 5000]
        [--epochs 3] [--seeds 1,2,3] [--work runs/bf16_accuracy]
        [--out benchmarks/results/bf16_vs_fp32.json]

DATA holds `cifar-10-batches-bin/data_batch_*.bin` (the 50,000 real training images). The last
--holdout records are held out (real_cifar10.split_holdout); the first --train_images of the
rest are trained on. Per seed, float32 then bfloat16 (interleaved, so that a change in machine
load hits both alike), each through exactly the README's two commands:

    python train.py --config_path=cifar10_cpu_config.yaml --data_dir=SUBSET --max_epoch=E
                    --seed=S --cpu_precision=P --ckpt_path=RUN_DIR
    python eval.py --config_path=cifar10_cpu_config.yaml --data_dir=SUBSET --cpu_precision=P
                   --pre_trained=LAST_CKPT

Verdict rule: "same" when |mean top-1 (bfloat16) - mean top-1 (float32)| is at most
max(2 x pooled seed-to-seed sample std, 0.5 percentage points), else "differs" (exit 1). The
pooled std, sqrt((s_fp32^2 + s_bf16^2) / 2), is the spread of one run between seeds; the
difference of two n-seed means spreads by s x sqrt(2/n) <= s, so 2 s is at least two standard
errors of the difference. The 0.5-point floor keeps a few seeds that agree by chance (a std
near 0) from calling any difference significant.

Refuses to start where bfloat16 cannot run (it would silently train float32), and checks every
log's precision line. Writes the runs, the per-precision mean and std, the verdict, the
commands, the CPU and the load average to --out, and prints a table.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # benchmarks/ and the repository
import cifar_bin  # noqa: E402  (path set just above)
import machine  # noqa: E402
from real_cifar10 import log_figures, run, shown, split_holdout  # noqa: E402

from src.checkpoint import list_checkpoints  # noqa: E402
from src.dataset import CIFAR10_TRAIN_DIR  # noqa: E402
from src.native import bf16_isa, library_status  # noqa: E402
from src.native.isa import ISA_VAR  # noqa: E402

CONFIG = "cifar10_cpu_config.yaml"
PRECISIONS = ("float32", "bfloat16")
SPREAD_FACTOR = 2.0
FLOOR_PP = 0.5
RULE = (f"same if |mean_bf16 - mean_fp32| <= max({SPREAD_FACTOR:g} x pooled sample std of "
        f"top-1 over seeds, {FLOOR_PP} percentage points); pooled std = "
        "sqrt((std_fp32^2 + std_bf16^2) / 2)")
# This machine (2 cores, AVX512-BF16, 32x32, batch 128), idle: training images per second,
# evaluation images per second (flip TTA) and seconds to start a process and compile.
TRAIN_SPEED = {"float32": 105.0, "bfloat16": 145.0}
EVAL_SPEED = 250.0
START_SECONDS = 15.0
# The line src/native/precision.py logs once the network is built, per precision.
PRECISION_LINE = {"float32": "precision: float32 on CPU (cpu_precision=float32)",
                  "bfloat16": "precision: bfloat16 on CPU (cpu_precision=bfloat16"}
FLOAT32_TRAINING = "training runs the convolutions in float32"


def bf16_refusal():
    """Why this process's oneDNN (and so train.py's) cannot run bfloat16, or None."""
    usable, reason = library_status()
    if not usable:
        return f"the native kernels are not usable ({reason})"
    if bf16_isa():
        return None
    return (machine.bf16_unavailable(machine.cpu_flag_set())
            or f"oneDNN runs no bfloat16 instructions here ({ISA_VAR}={os.environ.get(ISA_VAR)})")


def training_subset(cifar_dir, work, holdout, train_images):
    """WORK/data with the held-out split and the first train_images of the other records."""
    data, available = split_holdout(cifar_dir, work, holdout)
    if train_images > available:
        sys.exit(f"error: --train_images {train_images} is more than the {available} records "
                 f"left after --holdout {holdout}")
    path = os.path.join(data, CIFAR10_TRAIN_DIR, "data_batch_1.bin")
    cifar_bin.write_records(path, cifar_bin.read_records([path])[:train_images])
    return data


def estimated_seconds(train_images, holdout, epochs, seeds):
    """Expected wall time on the idle machine: training, per-epoch and final evaluation of the
    held-out split, and process start-up, for every run."""
    per_seed = sum(train_images * epochs / TRAIN_SPEED[p] for p in PRECISIONS)
    evaluation = (epochs + 1) * holdout / EVAL_SPEED + 2 * START_SECONDS
    return len(seeds) * (per_seed + len(PRECISIONS) * evaluation)


def check_precision(log_text, precision, log_path):
    """Stop unless the log says the network computed in `precision` (training included)."""
    lines = [line for line in log_text.splitlines() if PRECISION_LINE[precision] in line]
    if not lines or any(FLOAT32_TRAINING in line for line in lines):
        sys.exit(f"error: {log_path} does not say '{PRECISION_LINE[precision]} ...' with "
                 "bfloat16 training; the comparison would be meaningless")


def train_and_evaluate(data, work, epochs, seed, precision):
    """One run: train, evaluate its last checkpoint on the held-out split, summarise."""
    name = f"seed{seed}_{precision}"
    run_dir = os.path.join(work, "runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale checkpoint would be evaluated
    common = [f"--config_path={CONFIG}", f"--data_dir={data}", f"--cpu_precision={precision}"]
    train_cmd = [sys.executable, "train.py", *common[:2], f"--max_epoch={epochs}",
                 f"--seed={seed}", common[2], f"--ckpt_path={run_dir}"]
    train_log, train_seconds = run(train_cmd, os.path.join(work, f"train_{name}.log"))
    check_precision(train_log, precision, os.path.join(work, f"train_{name}.log"))
    last = list_checkpoints(run_dir)[-1]
    eval_cmd = [sys.executable, "eval.py", *common, f"--pre_trained={last}"]
    eval_log, _ = run(eval_cmd, os.path.join(work, f"eval_{name}.log"))
    check_precision(eval_log, precision, os.path.join(work, f"eval_{name}.log"))
    figures = log_figures(train_log, eval_log)
    speeds = figures["speeds"]
    return {
        "precision": precision, "seed": seed,
        "holdout_top1": figures["holdout_top1"],
        "holdout_top1_after_each_epoch": figures["top1_after_each_epoch"],
        "train_wall_seconds": round(train_seconds, 1),
        "epoch_seconds": figures["epoch_seconds"],
        "images_per_second_median": round(statistics.median(speeds), 1) if speeds else None,
        "load_average_at_end": machine.load_average(2),
        "commands": [shown(train_cmd), shown(eval_cmd)],
    }


def verdict(runs):
    """Per-precision mean and sample std of top-1 (fractions), their difference and the
    tolerance (percentage points), and the verdict of RULE."""
    top1 = {p: [r["holdout_top1"] for r in runs if r["precision"] == p] for p in PRECISIONS}
    stats = {p: {"runs": len(v), "mean_top1": statistics.mean(v),
                 "std_top1": statistics.stdev(v)} for p, v in top1.items()}
    pooled = math.sqrt(sum(s["std_top1"] ** 2 for s in stats.values()) / len(stats))
    difference = 100 * (stats["bfloat16"]["mean_top1"] - stats["float32"]["mean_top1"])
    tolerance = max(SPREAD_FACTOR * 100 * pooled, FLOOR_PP)
    return {"per_precision": stats, "pooled_std_top1": pooled,
            "difference_of_means_pp": round(difference, 3), "tolerance_pp": round(tolerance, 3),
            "rule": RULE, "verdict": "same" if abs(difference) <= tolerance else "differs"}


def print_table(runs, result):
    print(f"{'precision':<10} {'seed':>4} {'top-1 %':>8} {'train s':>8} {'img/s':>6}")
    for r in runs:
        speed = r["images_per_second_median"]
        print(f"{r['precision']:<10} {r['seed']:>4} {100 * r['holdout_top1']:>8.2f} "
              f"{r['train_wall_seconds']:>8.1f} {speed if speed is not None else '-':>6}")
    for p, s in result["per_precision"].items():
        print(f"{p:<10} mean {100 * s['mean_top1']:.2f} % +- {100 * s['std_top1']:.2f} "
              f"(sample std, {s['runs']} seeds)")
    print(f"bfloat16 - float32: {result['difference_of_means_pp']:+.2f} points, tolerance "
          f"{result['tolerance_pp']:.2f} -> {result['verdict']}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar_dir", required=True)
    parser.add_argument("--train_images", type=int, default=10000)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated, at least two")
    parser.add_argument("--work", default="runs/bf16_accuracy")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bf16_vs_fp32.json"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(set(args.seeds)) < 2:
        parser.error("--seeds needs at least two different seeds to measure a spread")
    return args


def main():
    args = parse_args()
    refusal = bf16_refusal()
    if refusal:
        sys.exit(f"error: bfloat16 cannot run on this machine: {refusal}")
    work = os.path.abspath(args.work)
    data = training_subset(args.cifar_dir, work, args.holdout, args.train_images)
    expected = estimated_seconds(args.train_images, args.holdout, args.epochs, args.seeds)
    print(f"{len(args.seeds)} seeds x {PRECISIONS}: {args.train_images} images x {args.epochs} "
          f"epochs each; expected about {expected / 60:.0f} min on an idle machine", flush=True)
    load_at_start, start = machine.load_average(2), time.perf_counter()
    runs = []
    for seed in args.seeds:
        for precision in PRECISIONS:
            runs.append(train_and_evaluate(data, work, args.epochs, seed, precision))
            print(f"seed {seed} {precision}: top-1 {runs[-1]['holdout_top1']:.4f}", flush=True)
    result = verdict(runs)
    summary = {
        "what": f"{CONFIG} on real CIFAR-10, float32 vs bfloat16: the first "
                f"{args.train_images} training records, the last {args.holdout} of the "
                "training files held out (never trained on)",
        "epochs": args.epochs, "seeds": args.seeds, **result, "runs": runs,
        "machine": {**machine.cpu_summary(), "bf16_isa": bf16_isa()},
        "load_average_at_start": load_at_start, "load_average_at_end": machine.load_average(2),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "expected_wall_seconds": round(expected), "data": data,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print_table(runs, result)
    print(f"wrote {args.out}")
    if result["verdict"] == "differs":
        sys.exit(1)


if __name__ == "__main__":
    main()
