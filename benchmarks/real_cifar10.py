"""One training epoch on the real CIFAR-10 training split, scored on a held-out part of it.

    python benchmarks/real_cifar10.py --cifar_dir DATA [--epochs 1] [--holdout 5000]
                                      [--out runs/real_c10]

DATA holds `cifar-10-batches-bin/data_batch_*.bin` (e.g. written by
`python ../shared/data/make_cifar10_bin.py DATA`). The last --holdout records (the files are
already shuffled) become the evaluation split; the rest is trained on with
`cifar10_config.yaml` at 32x32 (VGG16-BN, batch 64), exactly through train.py and eval.py.
Prints the held-out accuracy, images per second and wall time, and writes them to
OUT/summary.json.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import cifar_bin  # noqa: E402  (path set just above)

from src.class_names import CIFAR10_META_FILE  # noqa: E402
from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_TRAIN_DIR  # noqa: E402


def split_holdout(cifar_dir, out_dir, holdout):
    """Write OUT/data/{cifar-10-batches-bin,cifar-10-verify-bin} from the training files, with
    the release's class names (batches.meta.txt) when it has them."""
    files = sorted(glob.glob(os.path.join(cifar_dir, CIFAR10_TRAIN_DIR, "data_batch_*.bin")))
    if not files:
        sys.exit(f"error: no data_batch_*.bin under {cifar_dir}/{CIFAR10_TRAIN_DIR}")
    records = cifar_bin.read_records(files)
    data = os.path.join(out_dir, "data")
    cifar_bin.write_records(os.path.join(data, CIFAR10_TRAIN_DIR, "data_batch_1.bin"),
                            records[:-holdout])
    cifar_bin.write_records(os.path.join(data, CIFAR10_EVAL_DIR, "test_batch.bin"),
                            records[-holdout:])
    meta = os.path.join(cifar_dir, CIFAR10_TRAIN_DIR, CIFAR10_META_FILE)
    if os.path.isfile(meta):
        shutil.copyfile(meta, os.path.join(data, CIFAR10_TRAIN_DIR, CIFAR10_META_FILE))
    return data, len(records) - holdout


def run(command, log_path):
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
    seconds = time.perf_counter() - start
    with open(log_path, encoding="utf-8") as log:
        text = log.read()
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed (exit {result.returncode}), see {log_path}")
    return text, seconds


def shown(command):
    """A subprocess command as a user types it (python, not this interpreter's path)."""
    return " ".join(["python"] + command[1:])


def epoch_seconds(train_log):
    """The 'epoch time: X s' figures of a train.py log."""
    return [float(x) for x in re.findall(r"epoch time: ([0-9.]+) s", train_log)]


def log_figures(train_log, eval_log):
    """The figures train.py's and eval.py's logs print: held-out top-1 of eval.py, and from
    training the images/s of every progress line, every epoch time and the in-training top-1
    after each epoch (the last one logged for an epoch, should a resumed run repeat it), and the
    precision line of the last start: float32 or bfloat16, native or MindSpore's own kernels, and
    why (a figure of the run describes the path that line names)."""
    top1 = {int(epoch): float(value) for epoch, value in re.findall(
        r"eval after epoch (\d+): top1 ([0-9.]+)", train_log)}
    precision = re.findall(r"^(?:\S+ \S+ )?(precision: .+)$", train_log, re.MULTILINE)
    return {
        "precision": precision[-1] if precision else None,
        "holdout_top1": float(re.search(r"result: \{'acc': ([0-9.]+)\}", eval_log).group(1)),
        "speeds": [float(x) for x in re.findall(r"\| ([0-9.]+) img/s", train_log)],
        "epoch_seconds": epoch_seconds(train_log),
        "top1_after_each_epoch": [top1[epoch] for epoch in sorted(top1)],
    }


# the first line every start of train.py writes to <run folder>/train_rank0.log (appended to)
ATTEMPT_START = re.compile(r"device \S+, rank \d+ of \d+, run folder ", re.IGNORECASE)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# the line a start of train.py that continues a run logs, with where it continued
RESUMED = re.compile(r"resumed from .+ at (epoch \d+, step \d+)")


def run_attempts(rank_log):
    """The starts of train.py that make up the latest run in a run folder's train_rank0.log:
    the last start that did not resume and every resumed start after it, each as its text."""
    attempts = []
    for line in rank_log.splitlines():
        if ATTEMPT_START.search(line) or not attempts:
            attempts.append([])
        attempts[-1].append(line)
    fresh = [i for i, lines in enumerate(attempts)
             if not any(RESUMED.search(line) for line in lines)]
    return ["\n".join(lines) for lines in attempts[fresh[-1] if fresh else 0:]]


def logged_seconds(text):
    """Seconds from the first to the last timestamped line of a log."""
    stamps = [datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for match in map(STAMP.match, text.splitlines()) if match]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar_dir", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--out", default="runs/real_cifar10")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    data, n_train = split_holdout(args.cifar_dir, out, args.holdout)
    common = ["--config_path=cifar10_config.yaml", "--device_target=CPU", "--image_size=32,32",
              f"--data_dir={data}", f"--ckpt_path={out}/run"]
    train_cmd = [sys.executable, "train.py", *common, f"--max_epoch={args.epochs}",
                 f"--T_max={args.epochs}", "--warmup_epochs=0", "--lr_scheduler=cosine_annealing",
                 "--lr=0.02", "--log_interval=50", "--keep_checkpoint_max=1"]
    train_log, train_seconds = run(train_cmd, os.path.join(out, "train.log"))
    checkpoint = sorted(glob.glob(os.path.join(out, "run", "vgg16_bn-*_*.ckpt")))[-1]
    eval_cmd = [sys.executable, "eval.py", *common, f"--pre_trained={checkpoint}"]
    eval_log, _ = run(eval_cmd, os.path.join(out, "eval.log"))
    figures = log_figures(train_log, eval_log)
    summary = {
        "train_images": n_train, "holdout_images": args.holdout, "epochs": args.epochs,
        "holdout_top1": figures["holdout_top1"],
        "train_images_per_sec_median": float(np.median(figures["speeds"])),
        "epoch_seconds": figures["epoch_seconds"], "train_wall_seconds": round(train_seconds, 1),
        "command": shown(train_cmd),
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
