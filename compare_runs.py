"""Compare training runs: held-out top-1 per epoch as a table, and one plot with the runs overlaid:

    python compare_runs.py RUN [RUN ...] [--out=compare.png] [--title=TEXT]

RUN is a run folder (the `metrics.csv` that train.py writes there) or a metrics.csv file,
optionally named as LABEL=PATH (default label: the folder's name). The plot shows held-out
top-1 per epoch (EMA weights dotted when evaluated), training loss and learning rate against
the epoch, so runs with other batch sizes or lengths line up.
"""
import argparse

from src.cli import add_debug_option, run_entry
from src.run_compare import accuracy_table, check_plot_path, load_runs, plot_runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="[LABEL=]run folder or metrics.csv")
    parser.add_argument("--out", default="compare.png", help="plot file (default compare.png)")
    parser.add_argument("--title", default="", help="title above the plot")
    add_debug_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_plot_path(args.out)
    runs = load_runs(args.runs)
    print("held-out top-1 (%) after each epoch\n" + accuracy_table(runs), flush=True)
    print(f"plot: {plot_runs(runs, args.out, args.title)}", flush=True)
    return runs


if __name__ == "__main__":
    run_entry(main)
