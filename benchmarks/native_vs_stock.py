"""Native oneDNN kernels against stock MindSpore on real CIFAR-10: the same short training,
several seeds.

    python benchmarks/native_vs_stock.py [--cifar_dir DATA] [--work runs/native_vs_stock]
        [--train_images 2048] [--holdout 5000] [--epochs 3] [--warmup_epochs 1]
        [--lr_init 0.001] [--lr_max 0.01] [--dropout False] [--native_seeds 1 2]
        [--stock_seeds 1 2 3] [--out benchmarks/results/native_vs_stock.json]

DATA holds `cifar-10-batches-bin/data_batch_*.bin` (the 50,000 real training images); when
--cifar_dir is not given it is written to WORK/cifar10 from
/work/shared/data/cifar10-train-jpg.tar.gz by make_cifar10_bin.py. The last --holdout records
(the files are shuffled) become WORK/data/cifar-10-verify-bin/test_batch.bin, never trained
on; the first --train_images of the rest become the training set (benchmarks/real_cifar10.py
makes the split).

Every run is `train.py` then `eval.py` with cifar10_config.yaml (VGG16-BN, batch 64, 32x32,
momentum 0.9, weight decay 5e-4; the classifier's dropout off by default, which learns
faster in so short a run) and the `step` schedule: linear warmup lr_init -> lr_max over the
first epoch, then lr_max * (1 - progress)^2 down to 0 by the last step. The defaults (2,048
images, 3 epochs: 96 steps) fit five runs in about 45 minutes on 2 shared cores. With
native_kernels=auto the network runs on the project's native kernels (convolutions,
BatchNorm+ReLU, pooling, fused optimiser; oneDNN ISA uncapped); with native_kernels=off on
stock MindSpore (ISA capped at AVX2 by the repository, as train.py does); each run records
its setting as `fast_conv`. ONEDNN_MAX_CPU_ISA is removed from the children's environment so
that the repository makes that choice itself.

Per run: the final training loss (mean of the last --tail logged step losses, metrics.csv
with log_interval=1) and the held-out top-1 (eval.py's `result: {'acc': ...}`).

Verdict rule (stated in the JSON): native agrees with stock when, for both the final loss and
the held-out top-1, every native seed lies within stock mean +- 3 x stock std (sample std,
ddof=1, over the stock seeds). Whether each native value lies inside stock min..max is
reported beside it. The script exits with status 1 when the verdict is "differ".
"""
import argparse
import csv
import glob
import json
import os
import re
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, REPO]  # the benchmarks' helpers, the repository's modules
import cifar_bin  # noqa: E402  (path set just above)
import machine  # noqa: E402
import native_kernels  # noqa: E402
from real_cifar10 import run, split_holdout  # noqa: E402

SHARED = cifar_bin.SHARED_DATA
SPREAD_SIGMAS = 3.0
RULE = ("native agrees with stock when, for both final_loss and holdout_top1, every native seed "
        f"lies within stock mean +- {SPREAD_SIGMAS:g} x stock std (sample std, ddof=1, over the "
        "stock seeds); 'in_min_max' tells whether it also lies inside stock min..max")
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16")


def prepare_data(args, work):
    cifar_dir = args.cifar_dir
    if not cifar_dir:
        cifar_dir = os.path.join(work, "cifar10")
        if not glob.glob(os.path.join(cifar_dir, "cifar-10-batches-bin", "data_batch_*.bin")):
            run([sys.executable, cifar_bin.MAKE_CIFAR, cifar_dir],
                os.path.join(work, "make_cifar10_bin.log"))
    data, n_rest = split_holdout(cifar_dir, work, args.holdout)
    train_file = os.path.join(data, "cifar-10-batches-bin", "data_batch_1.bin")
    if args.train_images > n_rest:
        sys.exit(f"error: --train_images {args.train_images} exceeds the {n_rest} non-held-out "
                 "images")
    records = cifar_bin.read_records([train_file])
    cifar_bin.write_records(train_file, records[:args.train_images])
    labels = np.bincount(records[:args.train_images, 0], minlength=10).tolist()
    return data, labels


def final_loss(metrics_csv, tail):
    """(mean of the last `tail` step losses, its standard error, number of logged steps)."""
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle) if r.get("loss")]
    last = np.array(losses[-tail:])
    sem = float(last.std(ddof=1) / np.sqrt(len(last))) if len(last) > 1 else 0.0
    return float(last.mean()), sem, len(losses)


def one_run(kind, seed, args, data, work):
    out = os.path.join(work, "runs", f"{kind}_seed{seed}")
    os.makedirs(out, exist_ok=True)
    fast = "auto" if kind == "native" else "off"
    common = ["--config_path=cifar10_config.yaml", "--device_target=CPU", "--image_size=32,32",
              f"--data_dir={data}", f"--ckpt_path={out}", native_kernels.config_option(fast),
              f"--seed={seed}"]
    train_cmd = [sys.executable, "train.py", *common, f"--max_epoch={args.epochs}",
                 "--lr_scheduler=step", f"--lr_init={args.lr_init}", f"--lr_max={args.lr_max}",
                 f"--warmup_epochs={args.warmup_epochs}", "--log_interval=1",
                 f"--has_dropout={args.dropout}",
                 f"--ckpt_interval={args.epochs}", "--keep_checkpoint_max=1"]
    train_log, train_s = run(train_cmd, os.path.join(out, "train.log"))
    checkpoint = sorted(glob.glob(os.path.join(out, "vgg16_bn-*_*.ckpt")))[-1]
    eval_cmd = [sys.executable, "eval.py", *common, f"--pre_trained={checkpoint}"]
    try:
        eval_log, eval_s = run(eval_cmd, os.path.join(out, "eval.log"))
    except SystemExit:  # e.g. a moment of low memory on a shared machine: once more
        time.sleep(30)
        eval_log, eval_s = run(eval_cmd, os.path.join(out, "eval.log"))
    acc = float(re.search(r"result: \{'acc': ([0-9.]+)\}", eval_log).group(1))
    loss, sem, logged = final_loss(os.path.join(out, "metrics.csv"), args.tail)
    step_ms = [float(s) for s in re.findall(r"per step time: ([0-9.]+) ms", train_log)]
    result = {"kind": kind, "fast_conv": fast, "seed": seed, "final_loss": round(loss, 5),
              "final_loss_sem": round(sem, 5), "holdout_top1": acc, "logged_steps": logged,
              "epoch_ms_per_step": step_ms, "train_wall_s": round(train_s, 1),
              "eval_wall_s": round(eval_s, 1),
              "train_command": " ".join(["python"] + train_cmd[1:]),
              "eval_command": " ".join(["python"] + eval_cmd[1:])}
    print(json.dumps({k: result[k] for k in ("kind", "seed", "final_loss", "holdout_top1",
                                             "train_wall_s")}), flush=True)
    return result


def compare(native, stock, key):
    values = [r[key] for r in stock]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    low, high = mean - SPREAD_SIGMAS * std, mean + SPREAD_SIGMAS * std
    per_seed = [{"seed": r["seed"], "value": r[key], "within_band": low <= r[key] <= high,
                 "in_min_max": min(values) <= r[key] <= max(values)} for r in native]
    return {"stock_values": values, "stock_min": min(values), "stock_max": max(values),
            "stock_mean": round(mean, 5), "stock_std": round(std, 5),
            "band": [round(low, 5), round(high, 5)],
            "native_values": [r[key] for r in native],
            "native_mean": round(statistics.fmean(r[key] for r in native), 5),
            "native": per_seed, "agree": all(p["within_band"] for p in per_seed)}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar_dir", default="")
    parser.add_argument("--work", default="runs/native_vs_stock")
    parser.add_argument("--train_images", type=int, default=2048)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup_epochs", type=int, default=1)
    parser.add_argument("--lr_init", type=float, default=0.001)
    parser.add_argument("--lr_max", type=float, default=0.01)
    parser.add_argument("--tail", type=int, default=20)
    parser.add_argument("--dropout", choices=("True", "False"), default="False",
                        help="the classifier's dropout (off: learns faster in a short run)")
    parser.add_argument("--native_seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--stock_seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "native_vs_stock.json"))
    parser.add_argument("--reuse", action="store_true",
                        help="take finished runs (same kind and seed) from an existing --out "
                             "report instead of training them again, e.g. after an interruption")
    return parser.parse_args()


def run_order(native_seeds, stock_seeds):
    """(kind, seed) pairs interleaved, so machine load drifts affect both sides alike."""
    order = []
    for i in range(max(len(native_seeds), len(stock_seeds))):
        if i < len(native_seeds):
            order.append(("native", native_seeds[i]))
        if i < len(stock_seeds):
            order.append(("stock", stock_seeds[i]))
    return order


def previous_report(args):
    """The existing --out report when --reuse asks for its runs, else None."""
    if not (args.reuse and os.path.isfile(args.out)):
        return None
    with open(args.out, encoding="utf-8") as handle:
        return json.load(handle)


def reused_run(result, work, tail):
    """A finished run taken from the previous report, its final-loss noise added if missing."""
    metrics = os.path.join(work, "runs", f"{result['kind']}_seed{result['seed']}", "metrics.csv")
    if "final_loss_sem" not in result and os.path.isfile(metrics):
        result["final_loss_sem"] = round(final_loss(metrics, tail)[1], 5)
    return result


def main():
    args = parse_args()
    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)  # the repository chooses, as for a user
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    start = time.perf_counter()
    data, class_counts = prepare_data(args, work)
    order = run_order(args.native_seeds, args.stock_seeds)
    previous = previous_report(args)
    done = {(r["kind"], r["seed"]): r for r in previous["runs"]} if previous else {}
    results = []
    for kind, seed in order:
        if (kind, seed) in done:
            results.append(reused_run(done[(kind, seed)], work, args.tail))
        else:
            results.append(one_run(kind, seed, args, data, work))
        write_report(args, results, class_counts, start, len(order), previous)
    return write_report(args, results, class_counts, start, len(order), previous)


def comparison_and_verdict(results, planned):
    native = [r for r in results if r["kind"] == "native"]
    stock = [r for r in results if r["kind"] == "stock"]
    comparison, verdict = {}, f"incomplete ({len(results)} of {planned} runs)"
    if native and stock:
        comparison = {"final_loss": compare(native, stock, "final_loss"),
                      "holdout_top1": compare(native, stock, "holdout_top1")}
    if len(results) == planned and comparison:
        verdict = "agree" if all(c["agree"] for c in comparison.values()) else "differ"
    return comparison, verdict


def recipe(args, class_counts):
    """The report's data and schedule entries."""
    steps_per_epoch = args.train_images // 64
    data = {"source": os.path.join(SHARED, "cifar10-train-jpg.tar.gz"),
            "prepared_by": f"python {cifar_bin.MAKE_CIFAR} "
                           f"{args.cifar_dir or os.path.join(args.work, 'cifar10')}",
            "train_images": args.train_images, "train_class_counts": class_counts,
            "holdout_images": args.holdout,
            "holdout": "last records of the shuffled 50,000 training images, never trained on"}
    schedule = {"epochs": args.epochs, "steps_per_epoch": steps_per_epoch,
                "total_steps": steps_per_epoch * args.epochs, "lr_scheduler": "step",
                "lr_init": args.lr_init, "lr_max": args.lr_max,
                "warmup_epochs": args.warmup_epochs, "has_dropout": args.dropout,
                "final_loss": f"mean of the last {args.tail} logged step losses"}
    return {"data": data, "schedule": schedule}


def write_report(args, results, class_counts, start, planned, previous=None):
    """Writes the JSON (after every run, so a cut-short run keeps what it measured)."""
    comparison, verdict = comparison_and_verdict(results, planned)
    report = {
        "what": "VGG16-BN at 32x32, batch 64, real CIFAR-10: native kernels (fast_conv=auto) "
                "vs stock MindSpore (fast_conv=off), same recipe, several seeds",
        "command": " ".join(["python", "benchmarks/native_vs_stock.py"] + sys.argv[1:]),
        **recipe(args, class_counts),
        "runs": results, "comparison": comparison, "rule": RULE, "verdict": verdict,
        "final_loss_noise": {
            "stock_seed_std": comparison.get("final_loss", {}).get("stock_std"),
            "per_run_sem": {f"{r['kind']}_seed{r['seed']}": r.get("final_loss_sem")
                            for r in results},
            "note": "final_loss_sem: standard error of the mean of the last step losses of one "
                    "run (batch-to-batch noise); a stock seed std below it means the stock "
                    "seeds happen to lie closer together than one run's own measurement noise"},
        "cpu": machine.cpu_summary(CPU_FLAGS), "load_average_at_end": machine.load_average(2),
        "total_wall_s": round(time.perf_counter() - start, 1),
    }
    if previous is not None:  # runs taken over: keep the command and time that made them
        report["regenerated_by"] = report["command"]
        report["command"] = previous.get("regenerated_from_command", previous["command"])
        report["total_wall_s"] = round(previous["total_wall_s"] + report["total_wall_s"], 1)
        report["regenerated_from_command"] = report["command"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    if len(results) == planned:
        print(json.dumps({"comparison": comparison, "verdict": verdict}, indent=2))
        print(f"wrote {args.out}")
    return 0 if verdict == "agree" else 1


if __name__ == "__main__":
    sys.exit(main())
