"""Short trials of the CPU recipe with overridden keys, scored on a held-out split: how the
values in cifar10_cpu_config.yaml were chosen, and how to try others.

    python benchmarks/recipe_trials.py --cifar_dir DATA [--epochs 2] [--holdout 5000]
        [--work runs/recipe_trials] [--out benchmarks/results/cifar10_cpu_trials.json]
        --trial NAME="--lr=0.05 --crop_padding=2" [--trial NAME2="..."] [--rerun] [--append]

DATA holds `cifar-10-batches-bin/data_batch_*.bin` with the 50,000 real training images; the
last --holdout records are held out (real_cifar10.split_holdout, as benchmarks/cpu_recipe.py
does). Each trial is one command:

    python train.py --config_path=cifar10_cpu_config.yaml --data_dir=SPLIT --max_epoch=E
                    --ckpt_path=WORK/NAME OVERRIDES

and is scored by train.py's own evaluation after each epoch (flip TTA as the config sets it,
and the EMA weights as well when ema_decay is on). A trial whose run folder already holds a
metrics.csv with every epoch evaluated is read, not run again (--rerun runs it anyway); its
config.yaml must hold every overridden value, else it is refused (a key the run's config.yaml
does not know at all, from before the key existed, is listed as unrecorded). Writes, per trial:
the command, the held-out top-1 after each epoch (raw and EMA weights), the epoch times and
median images/s, and the CPU flags and load average of the machine that ran it.

--append keeps the trials --out already holds (a trial of the same name is replaced), so trials
run in another session, perhaps on another CPU, land in the same file; the file must be for the
same number of epochs and the same held-out split.
"""
import argparse
import csv
import json
import os
import shlex
import statistics
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402  (path set just above)
from real_cifar10 import epoch_seconds, run, shown, split_holdout  # noqa: E402

CONFIG = "cifar10_cpu_config.yaml"


def parse_trial(text):
    """'NAME=--key=value --key2=value2' -> (NAME, ['--key=value', '--key2=value2'])."""
    name, sep, overrides = text.partition("=")
    if not sep or not name or "/" in name or name.startswith("-"):
        raise SystemExit(f"error: --trial {text!r}: expected NAME=\"--key=value ...\"")
    args = shlex.split(overrides)
    bad = [a for a in args if not a.startswith("--") or "=" not in a]
    if bad:
        raise SystemExit(f"error: --trial {name}: {bad[0]!r} is not --key=value")
    return name, args


def epoch_scores(metrics_csv):
    """{epoch: (top1, ema_top1 or None, images/s of its progress lines)} from a metrics.csv."""
    scores, speeds = {}, {}
    with open(metrics_csv, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch = int(row["epoch"])
            if row.get("images_per_sec"):
                speeds.setdefault(epoch, []).append(float(row["images_per_sec"]))
            if row.get("eval_top1"):
                ema = row.get("ema_top1")
                scores[epoch] = (float(row["eval_top1"]), float(ema) if ema else None)
    return {e: (*scores[e], speeds.get(e, [])) for e in sorted(scores)}


def check_config(run_dir, overrides):
    """Every overridden value is the one the run's config.yaml holds; returns the overridden
    keys that config.yaml does not hold at all."""
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as handle:
        saved = next(yaml.safe_load_all(handle))
    unrecorded = []
    for arg in overrides:
        key, value = arg[2:].split("=", 1)
        if key not in saved:
            unrecorded.append(key)
        elif yaml.safe_load(value) != saved[key]:
            raise SystemExit(f"error: {run_dir}/config.yaml has {key}={saved[key]!r}, "
                             f"the trial asks for {value}")
    return unrecorded


def run_epoch_seconds(run_dir):
    """The epoch times of the run folder's training log ([] without one)."""
    path = os.path.join(run_dir, "train_rank0.log")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return epoch_seconds(handle.read())


def summarise(name, overrides, command, run_dir, epochs, unrecorded):
    scores = epoch_scores(os.path.join(run_dir, "metrics.csv"))
    speeds = [s for e in scores for s in scores[e][2]]
    return {
        "trial": name, "overrides": overrides, "command": command,
        "top1_after_each_epoch": [scores[e][0] for e in scores],
        "ema_top1_after_each_epoch": ([scores[e][1] for e in scores]
                                      if all(scores[e][1] is not None for e in scores) else None),
        "final_top1": scores[epochs][0],
        "train_images_per_second_median": round(statistics.median(speeds), 1) if speeds else None,
        "epoch_seconds": run_epoch_seconds(run_dir), "unrecorded_overrides": unrecorded,
    }


def merge_reports(old, new):
    """new's trials added to old's, a trial of the same name replaced; each trial keeps the
    machine it ran on (a file from before per-trial machines lends its own to its trials)."""
    for key in ("epochs", "what"):
        if old.get(key) != new[key]:
            raise SystemExit(f"error: --append: the file holds {key}={old.get(key)!r}, "
                             f"these trials have {new[key]!r}")
    kept = []
    for trial in old.get("trials", []):
        trial = dict(trial)
        for key in ("machine", "load_average_at_end"):
            if key not in trial and key in old:
                trial[key] = old[key]
        kept.append(trial)
    names = {trial["trial"] for trial in new["trials"]}
    merged = dict(new, trials=[t for t in kept if t["trial"] not in names] + new["trials"])
    notes = [text for text in (old.get("note"), new.get("note")) if text]
    if notes:
        merged["note"] = " ".join(notes)
    return merged


def complete(run_dir, epochs):
    path = os.path.join(run_dir, "metrics.csv")
    return os.path.exists(path) and epochs in epoch_scores(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar_dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--work", default="runs/recipe_trials")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cifar10_cpu_trials.json"))
    parser.add_argument("--trial", action="append", required=True, type=parse_trial)
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--append", action="store_true",
                        help="keep the trials --out already holds (same-name ones are replaced)")
    parser.add_argument("--note", default="", help="free text stored in the report")
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    data, n_train = split_holdout(args.cifar_dir, work, args.holdout)
    results = []
    for name, overrides in args.trial:
        run_dir = os.path.join(work, name)
        command = [sys.executable, "train.py", f"--config_path={CONFIG}", f"--data_dir={data}",
                   f"--max_epoch={args.epochs}", f"--ckpt_path={run_dir}", *overrides]
        if args.rerun or not complete(run_dir, args.epochs):
            run(command, os.path.join(work, f"{name}.log"))
        unrecorded = check_config(run_dir, overrides)
        results.append(summarise(name, overrides, shown(command), run_dir, args.epochs,
                                 unrecorded))
        results[-1].update(machine=machine.cpu_summary(),
                           load_average_at_end=machine.load_average(2))
        print(f"{name}: top-1 after each epoch {results[-1]['top1_after_each_epoch']}")
    report = {
        "what": f"{CONFIG} with overridden keys on real CIFAR-10: {n_train} training images, "
                f"the last {args.holdout} of the 50,000 held out (never trained on)",
        "epochs": args.epochs, "trials": results,
    }
    if args.note:
        report["note"] = args.note
    if args.append and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as handle:
            report = merge_reports(json.load(handle), report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
