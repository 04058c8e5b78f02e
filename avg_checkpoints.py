"""Average checkpoints into one weights checkpoint (BatchNorm statistics included):

    python avg_checkpoints.py RUN_DIR [--n=5] [--use_ema] [--output=FILE]
    python avg_checkpoints.py A.ckpt B.ckpt ... --output=FILE

A folder gives its newest N numbered checkpoints (<arch>-<epoch>_<step>.ckpt); --use_ema
averages their EMA weights (ema.*) instead of the raw ones. The result (default
<folder>/<arch>-avg.ckpt) is evaluated like any checkpoint:
python eval.py ... --pre_trained=RUN_DIR/vgg16_bn-avg.ckpt
"""
import argparse
import os

from src.averaging import average_checkpoints, checkpoints_to_average, save_average
from src.cli import add_debug_option, run_entry
from src.errors import UserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="checkpoint files, or one run folder")
    parser.add_argument("--n", type=int, default=5,
                        help="newest numbered checkpoints of a folder to average (default 5)")
    parser.add_argument("--use_ema", action="store_true",
                        help="average the EMA weights (ema.*) of the checkpoints")
    parser.add_argument("--output", default="",
                        help="output file (default: <folder>/<arch>-avg.ckpt)")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    if args.n < 1:
        raise UserError(f"--n: {args.n} must be at least 1")
    return args


def default_output(paths, meta, use_ema):
    arch = meta.get("arch") or "model"
    return os.path.join(os.path.dirname(os.path.abspath(paths[-1])),
                        f"{arch}-{'ema-' if use_ema else ''}avg.ckpt")


def main(argv=None):
    args = parse_args(argv)
    paths = checkpoints_to_average(args.inputs, args.n)
    weights, meta = average_checkpoints(paths, args.use_ema)
    output = args.output or default_output(paths, meta, args.use_ema)
    save_average(weights, output, meta)
    kind = "EMA weights" if args.use_ema else "weights"
    print(f"averaged the {kind} of {len(paths)} checkpoint(s) into {output}: "
          + ", ".join(os.path.basename(p) for p in paths), flush=True)
    return output


if __name__ == "__main__":
    run_entry(main)
