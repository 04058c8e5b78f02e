"""Does averaging a run's last checkpoints beat its last one? For each run folder, eval.py on
its last numbered checkpoint and on the average of its last N (avg_checkpoints.py), on the
same held-out images, everything else as the config has it (its test-time augmentation too).

    python benchmarks/average_last.py --data_dir SPLIT --out FILE.json RUN [RUN ...]
        [--n 2 3] [--config cifar10_cpu_config.yaml] [--logs runs/average_last]

SPLIT is a CIFAR-10 binary folder whose evaluation file holds the held-out images (the `data`
folder that benchmarks/cpu_recipe.py writes into its --work folder); each RUN is a run folder
of that config (the per-epoch checkpoints `<arch>-<epoch>_<steps>.ckpt` it keeps). Per run:

    python eval.py --config_path=CONFIG --data_dir=SPLIT --pre_trained=RUN/<last>.ckpt
    python avg_checkpoints.py RUN --n=N --output=LOGS/<run>_avgN.ckpt
    python eval.py --config_path=CONFIG --data_dir=SPLIT --pre_trained=LOGS/<run>_avgN.ckpt

The JSON records each top-1 and, per N, the average minus last differences, their mean and
how many runs score higher, the same or lower with the average. Logs and averaged
checkpoints go to --logs.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402  (path set just above)
from real_cifar10 import run, shown  # noqa: E402
from tta_eval import parse_eval_log  # noqa: E402

sys.path.insert(0, machine.REPO_ROOT)
from src.checkpoint import list_checkpoints  # noqa: E402


def evaluate(args, checkpoint, log):
    command = [sys.executable, "eval.py", f"--config_path={args.config}",
               f"--data_dir={os.path.abspath(args.data_dir)}",
               f"--pre_trained={os.path.abspath(checkpoint)}"]
    text, _ = run(command, log)
    top1, images, seconds, _ = parse_eval_log(text)
    return {"top1": top1, "images": images, "eval_seconds": seconds, "command": shown(command)}


def average(args, run_dir, n, label):
    output = os.path.join(args.logs, f"{label}_avg{n}.ckpt")
    command = [sys.executable, "avg_checkpoints.py", os.path.abspath(run_dir), f"--n={n}",
               f"--output={output}"]
    run(command, os.path.join(args.logs, f"{label}_avg{n}.log"))
    return output, shown(command)


def summarise(rows, counts):
    """Per N: the average minus last differences of `rows` (top-1 fractions), their mean and
    the count of each sign."""
    summary = {}
    for n in counts:
        differences = [round(r[f"average_{n}"]["top1"] - r["last"]["top1"], 6) for r in rows]
        summary[f"average_{n}"] = {
            "average_minus_last": differences, "mean": round(statistics.fmean(differences), 6),
            "higher": sum(d > 0 for d in differences), "same": sum(d == 0 for d in differences),
            "lower": sum(d < 0 for d in differences)}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 3],
                        help="how many of the last checkpoints to average (each at least 2)")
    parser.add_argument("--config", default="cifar10_cpu_config.yaml")
    parser.add_argument("--logs", default=os.path.join("runs", "average_last"),
                        help="folder for the logs and the averaged checkpoints")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if min(args.n) < 2:
        sys.exit(f"error: --n: {min(args.n)} averages nothing; give 2 or more")
    found = {run_dir: list_checkpoints(run_dir) for run_dir in args.runs}
    for run_dir, paths in found.items():
        if len(paths) < max(args.n):
            sys.exit(f"error: {run_dir}: {len(paths)} numbered checkpoint(s), --n asks for "
                     f"{max(args.n)}")
    args.logs = os.path.abspath(args.logs)  # the commands run from the repository root
    os.makedirs(args.logs, exist_ok=True)
    source = machine.source_revision()
    rows = []
    for run_dir, paths in found.items():
        label = os.path.basename(os.path.normpath(run_dir))
        row = {"run": label, "checkpoints": [os.path.basename(p) for p in paths],
               "last": evaluate(args, paths[-1], os.path.join(args.logs, f"{label}_last.log"))}
        for n in args.n:
            checkpoint, command = average(args, run_dir, n, label)
            row[f"average_{n}"] = {**evaluate(args, checkpoint, os.path.join(
                args.logs, f"{label}_avg{n}_eval.log")), "average_command": command}
        rows.append(row)
        print(f"{label}: last {row['last']['top1']:.4f}, " + ", ".join(
            f"average of {n} {row[f'average_{n}']['top1']:.4f}" for n in args.n), flush=True)
    summary = summarise(rows, args.n)
    record = {"what": "eval.py on each run's last checkpoint and on the average of its last N "
                      "(avg_checkpoints.py), same held-out images", "config": args.config,
              "runs": rows, "summary": summary, "machine": machine.cpu_summary(),
              "source": source, "load_average_at_end": machine.load_average(2)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    for n in args.n:
        s = summary[f"average_{n}"]
        print(f"average of the last {n} - last: mean {100 * s['mean']:+.2f} points; higher on "
              f"{s['higher']}, the same on {s['same']}, lower on {s['lower']} of {len(rows)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
