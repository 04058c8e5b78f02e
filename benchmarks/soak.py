"""Long-run memory stability: train for a fixed wall time and watch the resident memory.

    python benchmarks/soak.py [--minutes 20] [--work DIR] [--out-dir DIR] [--data-dir DATA]
                              [--interval 5] [--arch vgg16] [--batch-size 64]
                              [-- extra train.py options]

Runs train.py with cpu_quickstart_config.yaml (VGG16-BN, 32x32, evaluation and a checkpoint
every epoch) on the demo digits (written to WORK/data unless --data-dir is given) with enough
epochs to outlast --minutes, samples the RSS of the process and its children every
--interval seconds (psutil), and stops it with Ctrl-C (SIGINT) when the time is up. Writes
soak_rss.csv (seconds, rss_mb, epochs done), soak_rss.png and soak.json (the RSS at the end
of the first epoch, the last and highest RSS after it, the least-squares slope after it in MB
per hour, whether it stayed flat, epochs, minutes and the machine) to --out-dir (default:
WORK), and prints the same figures. Not a CI test: it takes --minutes of two busy cores.
"""
import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (path set just above)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_LINE = re.compile(r"^epoch: (\d+) step: \d+, loss is")
# Growth below this over the whole run after the first epoch counts as flat (allocator noise).
FLAT_MB = 50.0
FLAT_RULE = (f"flat unless both the fitted growth (slope x time after the first epoch) and the "
             f"last minus the first RSS after the first epoch exceed {FLAT_MB:g} MB")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall time")
    parser.add_argument("--work", default=None, help="folder for data, run and results")
    parser.add_argument("--out-dir", default=None,
                        help="folder for soak_rss.csv, soak_rss.png and soak.json "
                             "(default: --work)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 layout data (default: demo)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("extra", nargs="*", help="more train.py --key=value options")
    return parser.parse_args(argv)


def demo_data(work):
    folder = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
        subprocess.run([sys.executable, "-m", "src.demo_data", folder], cwd=REPO, check=True)
    return folder


def tree_rss(process):
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total = 0
    try:
        procs = [process] + process.children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def follow(stream, epochs_done, log):
    """Copy train.py's output to a log file, counting finished epochs."""
    for line in stream:
        log.write(line)
        log.flush()
        match = EPOCH_LINE.match(line)
        if match:
            epochs_done[0] = int(match.group(1))
            print(f"  {line.rstrip()}", flush=True)


def train_command(args, data, work):
    return [sys.executable, os.path.join(REPO, "train.py"),
            "--config_path=cpu_quickstart_config.yaml", f"--data_dir={data}",
            f"--arch={args.arch}", f"--batch_size={args.batch_size}", "--max_epoch=100000",
            "--T_max=100000", f"--ckpt_path={os.path.join(work, 'run')}", *args.extra]


def run_and_sample(command, log_path, minutes, interval):
    """Runs command for `minutes`, sampling its RSS every `interval` seconds, then stops it
    with SIGINT. Returns ([(seconds, rss_mb, epochs done)], exit code, minutes run)."""
    samples, epochs_done = [], [0]
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        reader = threading.Thread(target=follow, args=(child.stdout, epochs_done, log),
                                  daemon=True)
        reader.start()
        process = psutil.Process(child.pid)
        start = time.monotonic()
        end = start + 60 * minutes
        while child.poll() is None and time.monotonic() < end:
            samples.append((time.monotonic() - start, tree_rss(process) / 2**20, epochs_done[0]))
            time.sleep(interval)
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # saves a checkpoint and exits 130
        code = child.wait(timeout=600)
        ran = (time.monotonic() - start) / 60
        reader.join(timeout=60)
    return samples, code, ran


def soak(args):
    work = args.work or tempfile.mkdtemp(prefix="vgg_soak_")
    out_dir = args.out_dir or work
    for folder in (work, out_dir):
        os.makedirs(folder, exist_ok=True)
    command = train_command(args, args.data_dir or demo_data(work), work)
    print("command:", " ".join(command), flush=True)
    log_path = os.path.join(work, "soak_train.log")
    samples, code, minutes = run_and_sample(command, log_path, args.minutes, args.interval)
    if code not in (0, 130):
        print(f"train.py failed (exit {code}); see {log_path}", file=sys.stderr)
        return 1
    result = summarise(samples)
    run = {"command": " ".join(["python", "benchmarks/soak.py"] + sys.argv[1:]),
           "minutes": round(minutes, 1), "interval_s": args.interval, "samples": len(samples)}
    paths = write_results(samples, dict(run, **result), out_dir)
    print(describe(result), flush=True)
    print(f"samples: {paths[0]}\nplot: {paths[1]}\nsummary: {paths[2]}\n"
          f"training log: {log_path}", flush=True)
    return 0


def write_results(samples, summary, out_dir):
    """soak_rss.csv, soak_rss.png and soak.json (the summary and the machine) in out_dir."""
    csv_path = os.path.join(out_dir, "soak_rss.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "rss_mb", "epochs_done"])
        writer.writerows((f"{t:.1f}", f"{m:.1f}", e) for t, m, e in samples)
    png_path = plot(samples, os.path.join(out_dir, "soak_rss.png"))
    json_path = os.path.join(out_dir, "soak.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(dict(summary, machine=dict(machine.cpu_summary(),
                                             load_average_at_end=machine.load_average(2))),
                  handle, indent=2)
        handle.write("\n")
    return csv_path, png_path, json_path


def summarise(samples):
    """The memory figures after the first epoch, from (seconds, rss_mb, epochs done) samples;
    None where fewer than 3 samples follow the first epoch."""
    after = [(t, m) for t, m, e in samples if e >= 1]
    result = {"epochs": samples[-1][2] if samples else 0, "rss_after_first_epoch_mb": None,
              "rss_at_end_mb": None, "rss_highest_mb": None, "slope_mb_per_hour": None,
              "minutes_after_first_epoch": None, "flat": None, "flat_threshold_mb": FLAT_MB,
              "rule": FLAT_RULE}
    if len(after) < 3:
        return dict(result, problem="fewer than 3 samples after the first epoch: run longer "
                                    "(--minutes)")
    times, rss = np.array(after).T
    slope_per_hour = float(np.polyfit(times / 3600, rss, 1)[0])
    span_h = float(times[-1] - times[0]) / 3600
    grew = slope_per_hour * span_h > FLAT_MB and rss[-1] - rss[0] > FLAT_MB
    return dict(result, rss_after_first_epoch_mb=float(rss[0]), rss_at_end_mb=float(rss[-1]),
                rss_highest_mb=float(rss.max()), slope_mb_per_hour=slope_per_hour,
                minutes_after_first_epoch=60 * span_h, flat=not grew)


def describe(result):
    """The summary as the lines the script prints."""
    if result["flat"] is None:
        return result["problem"]
    return (f"epochs done: {result['epochs']}; RSS at the end of epoch 1: "
            f"{result['rss_after_first_epoch_mb']:.0f} MB, last: {result['rss_at_end_mb']:.0f} "
            f"MB, highest after epoch 1: {result['rss_highest_mb']:.0f} MB; slope after epoch 1: "
            f"{result['slope_mb_per_hour']:+.1f} MB/hour over "
            f"{result['minutes_after_first_epoch']:.1f} min\n"
            f"RSS grew after the first epoch: {'no' if result['flat'] else 'YES'} "
            f"(threshold {FLAT_MB:.0f} MB over the run)")


def plot(samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [t / 60 for t, _, _ in samples]
    fig, axis = plt.subplots(figsize=(8, 4))
    axis.plot(times, [m for _, m, _ in samples], label="RSS (train.py and children)")
    ends = [t / 60 for (t, _, e), (_, _, before) in zip(samples[1:], samples) if e > before]
    for index, minute in enumerate(ends):
        axis.axvline(minute, color="grey", alpha=0.3, label="epoch end" if index == 0 else None)
    axis.set_xlabel("minutes")
    axis.set_ylabel("MB")
    axis.set_title("train.py resident memory")
    axis.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(soak(parse_args()))
