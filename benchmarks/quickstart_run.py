"""Runs the README's quick-start main job exactly as written, in a fresh copy of the
repository, and records what it took in benchmarks/results/quickstart.json (the figures the
README's quick start quotes)::

    python benchmarks/quickstart_run.py [--out FILE] [--keep DIR]

The commands come from README.md, parsed as tests/test_readme.py parses them
(benchmarks/readme_commands.py); they run one by one as `&&` would, `python` and `pip` being
this interpreter. Recorded: each command's wall time and the peak resident memory of its
largest process, the whole chain's wall time, the training epochs' times, the final
`result: {'acc': ...}`, whether the native kernels were built, and the machine (CPU model,
ISA flags, cores, load averages), date and package versions. Each command's CPU time
(user + system) is recorded beside its wall time: on a shared machine the wall time grows
with the other jobs' load, the CPU time much less. `pip install` is part of the
chain, as in the README; with the packages already installed it takes seconds.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (path set just above)
import native_kernels  # noqa: E402
from readme_commands import REPO, final_accuracy, fresh_copy, quick_start_commands, run_commands  # noqa: E402
from real_cifar10 import epoch_seconds  # noqa: E402

DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results", "quickstart.json")


def run(workdir):
    main_job, _ = quick_start_commands()
    copy = fresh_copy(os.path.join(workdir, "repo"))
    load = machine.load_average(2)
    started = datetime.datetime.now(datetime.UTC)
    steps = run_commands(main_job, cwd=copy)
    total = sum(step.seconds for step in steps)
    ok = len(steps) == len(main_job) and steps[-1].returncode == 0
    build = next((s for s in steps if native_kernels.BUILD_MODULE in s.command), None)
    train = next((s for s in steps if s.command.startswith("python train.py")), None)
    epochs = epoch_seconds(train.stdout + train.stderr) if train else []
    load_end = machine.load_average(2)
    record = {
        "what": "README.md quick start, main job, run as written in a fresh copy of the "
                "repository (no build outputs, no demo data) by benchmarks/quickstart_run.py",
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine.cpu_summary(),
                    "load_average_at_start": load,
                    "load_average_at_end": load_end,
                    "note": "a shared machine: other jobs may run at the same time (see the "
                            "load averages over 1, 5 and 15 minutes), which makes the wall "
                            "times pessimistic; cpu_seconds is less affected"},
        "versions": {"python": platform.python_version(),
                     "mindspore": machine.package_version("mindspore"),
                     "numpy": machine.package_version("numpy")},
        "succeeded": ok,
        "total_seconds": round(total, 1),
        "cpu_seconds": round(sum(step.cpu_seconds for step in steps), 1),
        "commands": [{"command": s.command, "seconds": round(s.seconds, 1),
                      "cpu_seconds": round(s.cpu_seconds, 1),
                      "peak_rss_mb": round(s.peak_rss_mb), "returncode": s.returncode}
                     for s in steps],
        "native_kernels": (build.stdout + build.stderr).strip() if build else None,
        "training_epoch_seconds": epochs,
        "peak_rss_mb": round(max(s.peak_rss_mb for s in steps)),
        "accuracy": final_accuracy(steps[-1].stdout) if ok else None,
        "result_line": next((line for line in steps[-1].stdout.splitlines() if "result: {" in line),
                            None) if ok else None,
    }
    if not ok:
        record["failure"] = (steps[-1].stdout[-2000:] + steps[-1].stderr[-2000:]).strip()
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="result file (JSON)")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary "
                                       "folder, removed afterwards)")
    args = parser.parse_args(argv)
    workdir = args.keep or tempfile.mkdtemp(prefix="quickstart_")
    try:
        record = run(workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    for command in record["commands"]:
        print(f"{command['seconds']:7.1f} s {command['peak_rss_mb']:6d} MB  {command['command']}")
    print(f"total {record['total_seconds']} s, accuracy {record['accuracy']}, "
          f"peak {record['peak_rss_mb']} MB -> {args.out}")
    return 0 if record["succeeded"] else 1


if __name__ == "__main__":
    sys.exit(main())
