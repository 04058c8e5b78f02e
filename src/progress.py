"""Run logging: a console for rank 0, one log file per rank, a metrics CSV and a final plot."""
import csv
import logging
import os
import sys
import time

METRIC_FIELDS = ("epoch", "global_step", "loss", "lr", "images_per_sec", "eval_top1", "eval_top5",
                 "ema_top1", "ema_top5")


def setup_logger(run_dir, rank, name="vgg", file_stem="train"):
    """Logger writing to `<run_dir>/<file_stem>_rank<rank>.log`, and to stdout on rank 0."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(run_dir, f"{file_stem}_rank{rank}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StepTimer:
    """Throughput and ETA from the steps since the last report (compile time excluded)."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.last_time = time.perf_counter()
        self.steps = 0

    def tick(self):
        self.steps += 1

    def report(self, steps_left):
        now = time.perf_counter()
        elapsed = now - self.last_time
        per_step = elapsed / self.steps if self.steps else 0.0
        images_per_sec = self.batch_size / per_step if per_step else 0.0
        self.last_time, self.steps = now, 0
        return per_step, images_per_sec, per_step * steps_left


class MetricsCSV:
    """`metrics.csv` in the run folder; on resume, rows after the resumed step are dropped
    so the file reads as one continuous run."""

    def __init__(self, path, resume_step=None):
        self.path = path
        rows = []
        if resume_step is not None and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["global_step"]) <= resume_step]
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def add(self, **row):
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=METRIC_FIELDS).writerow(
                {k: row.get(k, "") for k in METRIC_FIELDS})


def read_metrics(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_metrics(csv_path, png_path):
    """Loss and learning rate against step, and evaluation accuracy against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    train = [r for r in rows if r["loss"]]
    evals = [r for r in rows if r["eval_top1"]]
    panels = 3 if evals else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    steps = [int(r["global_step"]) for r in train]
    axes[0].plot(steps, [float(r["loss"]) for r in train], color="tab:blue")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot(steps, [float(r["lr"]) for r in train], color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step", ylabel="lr")
    if evals:
        epochs = [int(r["epoch"]) for r in evals]
        axes[2].plot(epochs, [100 * float(r["eval_top1"]) for r in evals], "o-", label="top-1")
        axes[2].plot(epochs, [100 * float(r["eval_top5"]) for r in evals], "s--", label="top-5")
        if any(r.get("ema_top1") for r in evals):
            axes[2].plot(epochs, [100 * float(r["ema_top1"] or "nan") for r in evals], "^:",
                         label="EMA top-1")
        axes[2].set(title="evaluation accuracy", xlabel="epoch", ylabel="%")
        axes[2].legend()
    for axis in axes:
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
