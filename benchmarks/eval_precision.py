"""Does bfloat16 inference cost accuracy? eval.py on the same checkpoints and held-out images in
bfloat16 and in float32, everything else as the config has it (its test-time augmentation too).

    python benchmarks/eval_precision.py --data_dir SPLIT --out FILE.json CKPT [CKPT ...]
        [--config cifar10_cpu_config.yaml] [--logs runs/eval_precision]

SPLIT is a CIFAR-10 binary folder whose evaluation file holds the held-out images (the `data`
folder that benchmarks/cpu_recipe.py writes into its --work folder; every run of it holds out
the same images). Per checkpoint, bfloat16 then float32, each one command:

    python eval.py --config_path=CONFIG --data_dir=SPLIT --pre_trained=CKPT --cpu_precision=P

The JSON records each top-1, evaluation time and images/s (eval.py's own figures), the float32
minus bfloat16 difference per checkpoint, their mean and sample standard deviation, and how
many checkpoints score higher, the same or lower in float32. Refuses to start where bfloat16
cannot run, and stops if a log does not name the precision asked for. eval.py logs go to --logs.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402  (path set just above)
from bf16_accuracy import PRECISIONS, bf16_refusal, check_precision  # noqa: E402
from real_cifar10 import run, shown  # noqa: E402
from tta_eval import parse_eval_log  # noqa: E402

ORDER = tuple(reversed(PRECISIONS))  # bfloat16 first: a refusal shows before float32's wait


def checkpoint_label(path):
    """The checkpoint as `run folder/file`: every run's last one has the same file name."""
    path = os.path.abspath(path)
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"


def summarise(rows):
    """The float32 minus bfloat16 differences of `rows` (top-1 fractions), their mean and
    spread, and the count of each sign."""
    differences = [round(r["float32"]["top1"] - r["bfloat16"]["top1"], 6) for r in rows]
    return {"float32_minus_bfloat16": differences,
            "mean": round(statistics.fmean(differences), 6),
            "stdev": round(statistics.stdev(differences), 6) if len(differences) > 1 else 0.0,
            "float32_higher": sum(d > 0 for d in differences),
            "same": sum(d == 0 for d in differences),
            "float32_lower": sum(d < 0 for d in differences),
            "eval_seconds_mean": {p: round(statistics.fmean(r[p]["eval_seconds"] for r in rows), 2)
                                  for p in ORDER}}


def evaluate(args, checkpoint, precision, index):
    command = [sys.executable, "eval.py", f"--config_path={args.config}",
               f"--data_dir={os.path.abspath(args.data_dir)}",
               f"--pre_trained={os.path.abspath(checkpoint)}", f"--cpu_precision={precision}"]
    log = os.path.join(os.path.abspath(args.logs), f"ckpt{index}_{precision}.log")
    text, _ = run(command, log)
    check_precision(text, precision, log)
    top1, images, seconds, speed = parse_eval_log(text)
    return {"top1": top1, "images": images, "eval_seconds": seconds, "images_per_second": speed,
            "command": shown(command)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="cifar10_cpu_config.yaml")
    parser.add_argument("--logs", default=os.path.join("runs", "eval_precision"),
                        help="folder for the eval.py logs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    missing = [path for path in args.checkpoints if not os.path.isfile(path)]
    if missing:
        sys.exit(f"error: checkpoint not found: {missing[0]}")
    refusal = bf16_refusal()
    if refusal:
        sys.exit(f"error: bfloat16 cannot run here: {refusal}")
    os.makedirs(args.logs, exist_ok=True)
    source = machine.source_revision()
    rows = []
    for index, checkpoint in enumerate(args.checkpoints, 1):
        row = {"checkpoint": checkpoint_label(checkpoint)}
        for precision in ORDER:
            row[precision] = evaluate(args, checkpoint, precision, index)
        rows.append(row)
        print(f"{row['checkpoint']}: bfloat16 {row['bfloat16']['top1']:.4f}, "
              f"float32 {row['float32']['top1']:.4f}", flush=True)
    summary = summarise(rows)
    record = {"what": "eval.py on the same checkpoints and held-out images in bfloat16 and in "
                      "float32", "config": args.config, "checkpoints": rows, "summary": summary,
              "machine": machine.cpu_summary(), "source": source,
              "load_average_at_end": machine.load_average(2)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    print(f"float32 - bfloat16: mean {100 * summary['mean']:+.3f} points, sd "
          f"{100 * summary['stdev']:.3f}; float32 higher on {summary['float32_higher']}, the "
          f"same on {summary['same']}, lower on {summary['float32_lower']} of {len(rows)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
