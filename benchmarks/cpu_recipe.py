"""The CPU recipe (cifar10_cpu_config.yaml) on real CIFAR-10, scored on a held-out split.

    python benchmarks/cpu_recipe.py --cifar_dir DATA --epochs 2 [--holdout 5000]
                                    [--work runs/cpu_recipe] [--resume]
                                    [--set=--crop_padding=4 ... --tag pad4]

DATA holds `cifar-10-batches-bin/data_batch_*.bin` with the 50,000 real training images (e.g.
written by `python ../shared/data/make_cifar10_bin.py DATA`). The last --holdout records become
the evaluation split (never trained on); the rest is trained on with exactly the README's two
commands:

    python train.py --config_path=cifar10_cpu_config.yaml --data_dir=SPLIT --max_epoch=N
    python eval.py --config_path=cifar10_cpu_config.yaml --data_dir=SPLIT --pre_trained=LAST

Writes benchmarks/results/cifar10_cpu_<N>ep.json (held-out top-1, wall times, images/s, the
commands, the machine's CPU flags) and the run's metrics.csv and metrics.png beside it. Each
--set adds one `--key=value` to the training command (a longer run may want other values than
the recipe's short-run ones); --tag then names the run folder and the result files
(cifar10_cpu_<N>ep_<TAG>.*) so that they never mix with the plain recipe's.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402  (path set just above)
import real_cifar10  # noqa: E402
from real_cifar10 import log_figures, run, shown, split_holdout  # noqa: E402

CONFIG = "cifar10_cpu_config.yaml"


def summarise(args, data, n_train, run_dir, train, evaluation):
    (train_log, train_s), (eval_log, eval_s), last = train, evaluation[:2], evaluation[2]
    figures = log_figures(train_log, eval_log)
    speeds = figures["speeds"]
    return {
        "what": f"{CONFIG} on real CIFAR-10: {n_train} training images, the last "
                f"{args.holdout} of the 50,000 held out (never trained on)",
        "epochs": args.epochs, "train_images": n_train, "holdout_images": args.holdout,
        "holdout_top1": figures["holdout_top1"],
        "holdout_top1_after_each_epoch": figures["top1_after_each_epoch"],
        "train_wall_seconds": round(train_s, 1), "eval_wall_seconds": round(eval_s, 1),
        "epoch_seconds": figures["epoch_seconds"],
        "train_images_per_second_median": round(statistics.median(speeds), 1) if speeds else None,
        "precision": figures["precision"],
        "checkpoint": os.path.basename(last), "machine": machine.cpu_summary(),
        "source": getattr(args, "source", None),
        "load_average_at_end": machine.load_average(2),
        "seed": run_seed(run_dir), "overrides": args.set,
        "commands": [args.train_command, args.eval_command],
        "data": data, "run_dir": run_dir, **resume_record(train_log),
    }


def run_seed(run_dir):
    """The seed the run trained with (config's or --set), from the config.yaml train.py saved
    in the run folder; None without one."""
    from model_utils.config import load_yaml

    path = os.path.join(run_dir, "config.yaml")
    return int(load_yaml(path)[0]["seed"]) if os.path.isfile(path) else None


def resumed_training(run_dir, last_seconds):
    """The training log and wall time of a run that --resume continued: train.py appends every
    start to the run folder's train_rank0.log, so the figures come from all of its attempts;
    each earlier attempt is timed from its first to its last log line (an interrupted one to
    its last line before the interruption), the last one whole."""
    path = os.path.join(run_dir, "train_rank0.log")
    if not os.path.isfile(path):
        sys.exit(f"error: {path} is missing: --resume needs the run folder of the interrupted "
                 "run")
    with open(path, encoding="utf-8") as handle:
        attempts = real_cifar10.run_attempts(handle.read())
    return "\n".join(attempts), sum(map(real_cifar10.logged_seconds, attempts[:-1])) + last_seconds


def resume_record(train_log):
    """What a JSON must say when the run took several attempts: how many, and where each resumed
    one started (an epoch resumed part-way has only its resumed part in epoch_seconds)."""
    resumed = real_cifar10.RESUMED.findall(train_log)
    if not resumed:
        return {}
    return {"attempts": len(resumed) + 1, "resumed_at": resumed,
            "timing_note": "train_wall_seconds sums the attempts, each earlier one from its "
                           "first to its last log line; an epoch resumed part-way is timed in "
                           "epoch_seconds from where it resumed"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar_dir", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--work", default="runs/cpu_recipe")
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of the same --work/--epochs "
                             "(adds --resume=auto to the training command; the JSON then "
                             "counts every attempt from the run folder's train_rank0.log)")
    parser.add_argument("--set", action="append", default=[], metavar="--KEY=VALUE",
                        help="one more option for train.py and eval.py, e.g. "
                             "--set=--crop_padding=4 (repeatable)")
    parser.add_argument("--tag", default="", help="suffix for the run folder and result files; "
                        "required with --set")
    args = parser.parse_args(argv)
    bad = [item for item in args.set if not (item.startswith("--") and "=" in item)]
    if bad:
        parser.error(f"--set {bad[0]!r}: expected --key=value")
    if args.set and not args.tag:
        parser.error("--set changes the recipe: give --tag so its results are not filed as the "
                     "plain recipe's")
    args.suffix = f"_{args.tag}" if args.tag else ""
    return args


def recipe_options(data):
    """The options the README's training and evaluation commands share."""
    return [f"--config_path={CONFIG}", f"--data_dir={data}"]


def train_command(args, data, run_dir):
    """The README's training command for this run, with the --set options and --resume."""
    return [sys.executable, "train.py", *recipe_options(data), f"--max_epoch={args.epochs}",
            f"--ckpt_path={run_dir}", *args.set] + (["--resume=auto"] if args.resume else [])


def main(argv=None):
    args = parse_args(argv)
    args.source = machine.source_revision()  # before this run writes its (tracked) results
    suffix = args.suffix
    work = os.path.abspath(args.work)
    data, n_train = split_holdout(args.cifar_dir, work, args.holdout)
    run_dir = os.path.join(work, f"ep{args.epochs}{suffix}")
    train_cmd = train_command(args, data, run_dir)
    args.train_command = shown(train_cmd)
    train = run(train_cmd, os.path.join(work, f"train_ep{args.epochs}{suffix}.log"))
    if args.resume:
        train = resumed_training(run_dir, train[1])
    last = max(glob.glob(os.path.join(run_dir, "vgg16_bn-*_*.ckpt")), key=os.path.getmtime)
    # the overrides go to eval.py too: some shape the network (head, arch, image_size)
    eval_cmd = [sys.executable, "eval.py", *recipe_options(data), f"--pre_trained={last}",
                *args.set]
    args.eval_command = shown(eval_cmd)
    evaluation = run(eval_cmd, os.path.join(work, f"eval_ep{args.epochs}{suffix}.log")) + (last,)
    summary = summarise(args, data, n_train, run_dir, train, evaluation)
    name = f"cifar10_cpu_{args.epochs}ep{suffix}"
    os.makedirs(args.out_dir, exist_ok=True)
    for kind in ("csv", "png"):
        source = os.path.join(run_dir, f"metrics.{kind}")
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(args.out_dir, f"{name}_metrics.{kind}"))
    with open(os.path.join(args.out_dir, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
