"""Test-time augmentation compared on one checkpoint: eval.py on the same held-out images with
no TTA, with flip TTA, and with flip TTA plus each diagonal shift.

    python benchmarks/tta_eval.py --data_dir SPLIT --checkpoint CKPT [--shifts 1,2]
                                  [--config cifar10_cpu_config.yaml] [--logs runs/tta_eval]
                                  --out FILE.json

SPLIT is a CIFAR-10 binary folder whose evaluation file holds the held-out images (e.g. the
`data` folder that benchmarks/cpu_recipe.py writes into its --work folder). Each setting is one
`python eval.py --config_path=CONFIG --data_dir=SPLIT --pre_trained=CKPT --eval_flip_tta=...
--eval_tta_shift=...` command; the JSON records its top-1, its evaluation time and images/s
(eval.py's own figures, without start-up) and the command. Each eval.py log is kept in --logs
(not beside --out, which is usually benchmarks/results), named after the JSON and the setting.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402  (path set just above)
from real_cifar10 import run, shown  # noqa: E402

RESULT = re.compile(r"result: \{'acc': ([0-9.]+)\}")
SPEED = re.compile(r"eval speed: (\d+) images in ([0-9.]+) s, ([0-9.]+) images/s")


def settings(shifts):
    """(flip, shift) pairs: none, flip, then flip with each shift."""
    return [(False, 0), (True, 0)] + [(True, shift) for shift in shifts]


def parse_eval_log(text):
    """(top-1, images, seconds, images/s) from an eval.py log."""
    result, speed = RESULT.search(text), SPEED.search(text)
    if not result or not speed:
        raise SystemExit("error: eval.py printed no result/speed line")
    return float(result.group(1)), int(speed.group(1)), float(speed.group(2)), float(
        speed.group(3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default="cifar10_cpu_config.yaml")
    parser.add_argument("--shifts", default="1,2",
                        type=lambda text: [int(x) for x in text.split(",") if x])
    parser.add_argument("--logs", default=os.path.join("runs", "tta_eval"),
                        help="folder for the eval.py logs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.makedirs(args.logs, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    rows = []
    for flip, shift in settings(args.shifts):
        command = [sys.executable, "eval.py", f"--config_path={args.config}",
                   f"--data_dir={os.path.abspath(args.data_dir)}",
                   f"--pre_trained={os.path.abspath(args.checkpoint)}",
                   f"--eval_flip_tta={flip}", f"--eval_tta_shift={shift}"]
        log = os.path.join(os.path.abspath(args.logs), f"{stem}_flip{int(flip)}_shift{shift}.log")
        text, _ = run(command, log)
        top1, images, seconds, speed = parse_eval_log(text)
        rows.append({"flip": flip, "shift": shift, "top1": top1, "images": images,
                     "eval_seconds": seconds, "images_per_second": speed,
                     "command": shown(command)})
        print(f"flip={flip} shift={shift}: top-1 {top1:.4f}, {seconds:.1f} s")
    record = {"what": "test-time augmentation settings of eval.py on one checkpoint, the same "
                      "held-out images", "checkpoint": os.path.basename(args.checkpoint),
              "config": args.config, "settings": rows, "machine": machine.cpu_summary(),
              "load_average_at_end": machine.load_average(2)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")


if __name__ == "__main__":
    main()
