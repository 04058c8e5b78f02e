"""Several runs' metrics.csv side by side: held-out accuracy per epoch as a table, and one plot
of accuracy, training loss and learning rate with the runs overlaid."""
import csv
import os

from src.errors import UserError
from src.progress import METRIC_FIELDS

NEEDED = ("epoch", "global_step", "loss", "lr", "eval_top1")


class Run:
    """One run's metrics: training rows (loss, lr) and evaluation rows (top-1, EMA top-1), with
    numbers parsed."""

    def __init__(self, label, rows):
        self.label = label
        rows = [_numbers(r) for r in rows]
        self.train = [r for r in rows if r["loss"] is not None]
        self.evals = [r for r in rows if r["eval_top1"] is not None]
        self.steps_per_epoch = _steps_per_epoch(rows)

    def top1(self, ema=False):
        """{epoch: held-out top-1 in %} (the EMA weights' with ema=True), the last of an epoch."""
        key = "ema_top1" if ema else "eval_top1"
        return {r["epoch"]: 100 * r[key] for r in self.evals if r.get(key) is not None}

    def epoch_position(self, row):
        """Where a training row lies in epochs (1.5: half way through the second epoch)."""
        return row["global_step"] / self.steps_per_epoch


def _numbers(row):
    """A CSV row with epoch and step as int, the other filled fields as float, empty as None."""
    if None in row:
        raise ValueError(f"a row of epoch {row['epoch']} has more fields than the header")
    out = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
    out["epoch"], out["global_step"] = int(row["epoch"]), int(row["global_step"])
    return out


def _steps_per_epoch(rows):
    """Steps per epoch: from an evaluation row (written at an epoch's end, so its step is
    epoch x steps per epoch), else from the last logged step of an epoch that a later one
    follows (the epoch's end). A run still in its first logged epoch, which says neither, is
    drawn as if that epoch ended at its last logged step."""
    for row in rows:
        if row["eval_top1"] is not None and row["epoch"] > 0:
            return max(row["global_step"] // row["epoch"], 1)
    last = {}
    for row in rows:
        last[row["epoch"]] = max(last.get(row["epoch"], 0), row["global_step"])
    ended = [epoch for epoch in last if epoch + 1 in last and epoch > 0]
    epoch = min(ended) if ended else max(last, default=1)
    return max(last.get(epoch, 1) // max(epoch, 1), 1)


def parse_run_argument(text):
    """`[LABEL=]PATH` -> (label or None, path)."""
    label, sep, path = text.partition("=")
    if sep and label and not os.path.exists(text):
        return label, path
    return None, text


PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg")


def check_plot_path(path):
    """A one-line error, before any work, for a plot file matplotlib cannot write."""
    if not path.lower().endswith(PLOT_FORMATS):
        raise UserError(f"out: {path} must end in {', '.join(PLOT_FORMATS)}")


def metrics_file(path):
    """A run folder's metrics.csv, or the given CSV; a one-line error when there is none."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.csv")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such metrics file (give a run folder or its metrics.csv)")
    return path


def load_run(label, path):
    """The Run of a metrics.csv; refuses a file that is not one, naming the missing column."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [k for k in NEEDED if k not in (reader.fieldnames or ())]
            if missing:
                raise UserError(f"{path}: not a metrics.csv of this repository (no column "
                                f"'{missing[0]}'; expected {', '.join(METRIC_FIELDS)})")
            rows = list(reader)
        return Run(label, rows)
    except (UnicodeDecodeError, ValueError, csv.Error) as err:
        raise UserError(f"{path}: unreadable metrics.csv ({err})") from err


def load_runs(arguments):
    """Runs for `[LABEL=]PATH` arguments; labels default to the run folder's name."""
    runs = []
    for text in arguments:
        label, path = parse_run_argument(text)
        csv_path = metrics_file(path)
        label = label or os.path.basename(os.path.dirname(os.path.abspath(csv_path)))
        if any(run.label == label for run in runs):
            raise UserError(f"{text}: label '{label}' is given twice; "
                            "name the runs with LABEL=PATH")
        runs.append(load_run(label, csv_path))
    return runs


def accuracy_table(runs):
    """Markdown table: one row per epoch, one column per run (held-out top-1, %)."""
    epochs = sorted({e for run in runs for e in run.top1()})
    tops = [run.top1() for run in runs]
    lines = ["| epoch | " + " | ".join(run.label for run in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for epoch in epochs:
        cells = [f"{top[epoch]:.2f}" if epoch in top else "" for top in tops]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    best = [f"{max(top.values()):.2f} (epoch {max(top, key=top.get)})" if top else ""
            for top in tops]
    lines.append("| best | " + " | ".join(best) + " |")
    return "\n".join(lines)


_MARKERS = ("o", "s", "D", "v")
_DASHES = ("-", "--", "-.", ":")


def run_style(index):
    """(color, marker, line style) of the index-th run: matplotlib's ten colours, then the
    same colours with another marker and dash pattern, so that no two of up to forty runs look
    alike in a plot."""
    group = index // 10 % len(_MARKERS)
    return f"C{index % 10}", _MARKERS[group], _DASHES[group]


def plot_runs(runs, png_path, title=""):
    """Three panels, runs overlaid: held-out top-1 per epoch, training loss and learning rate
    against the epoch (steps scaled by each run's steps per epoch, so batch sizes compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, run in enumerate(runs):
        color, marker, dashes = run_style(i)
        top = run.top1()
        axes[0].plot(list(top), list(top.values()), marker=marker, linestyle=dashes, color=color,
                     label=run.label)
        ema = run.top1(ema=True)
        if ema:
            axes[0].plot(list(ema), list(ema.values()), "^:", color=color,
                         label=f"{run.label} (EMA)")
        where = [run.epoch_position(r) for r in run.train]
        axes[1].plot(where, [r["loss"] for r in run.train], linestyle=dashes, color=color,
                     label=run.label)
        axes[2].plot(where, [r["lr"] for r in run.train], linestyle=dashes, color=color,
                     label=run.label)
    axes[0].set(title="held-out top-1", xlabel="epoch", ylabel="%")
    axes[1].set(title="training loss", xlabel="epoch", ylabel="loss")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="lr")
    for axis in axes:
        axis.grid(alpha=0.3)
    # one legend beside the panels (a run keeps its colour and line in all three): per-panel
    # legends of a few runs are fine, but those of twenty cover the curves they name
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               ncol=-(-len(labels) // 24))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png_path
