"""What the GELU costs against ReLU in a training step: the CPU recipe's network, both ways,
measured in the same run.

    python benchmarks/activation_speed.py [--image 32] [--batch 128] [--precision auto]
                                          [--rounds 3] [--warmup 3] [--steps 10]
                                          [--out benchmarks/results/activation_speed.json]

Each round trains `--steps` timed steps (after `--warmup` untimed ones) of
cifar10_cpu_config.yaml's network (ghost batches, identity init, the mlp head; random images)
with `--activation=relu`, then the same with `--activation=gelu`, each in a fresh process as
benchmark.py's training row runs it, so that a machine that drifts during the run moves both
sides alike. Reports, per activation, the images/s of the median step over all rounds and the
peak memory of its processes, and the GELU's speed and memory as ratios of ReLU's.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import harness  # noqa: E402  (path set just above)
import machine  # noqa: E402

RECIPE = os.path.join(os.path.dirname(HERE), "cifar10_cpu_config.yaml")
ACTIVATIONS = ("relu", "gelu")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "activation_speed.json"))
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "batch", "image"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def spec_for(args, activation):
    return {"image": args.image, "batch": args.batch, "fast_conv": "auto",
            "precision": args.precision, "config_path": RECIPE,
            "overrides": [f"--activation={activation}"], "warmup": args.warmup,
            "steps": args.steps}


def summarise(args, runs, source=None, load_start=None):
    """The report from runs[activation] = the worker results of its rounds; `source` is the
    measured checkout (machine.source_revision()), `load_start` the load average before."""
    sides = {}
    for activation, results in runs.items():
        steps = [t for r in results for t in r["step_s"]]
        median = statistics.median(steps)
        sides[activation] = {
            "images_per_second": round(args.batch / median, 1),
            "median_step_s": round(median, 4),
            "round_medians_s": [round(statistics.median(r["step_s"]), 4) for r in results],
            "peak_memory_mb": round(max(r["max_rss_mb"] for r in results), 1),
            "precision": results[0]["precision"],
            "precision_detail": results[0]["precision_detail"],
            "native_convolutions": f"{results[0]['fast_cells']} of {results[0]['conv_cells']}"}
    relu, gelu = sides["relu"], sides["gelu"]
    return {"what": "training step of cifar10_cpu_config.yaml's network, GELU against ReLU, "
                    "fresh process per side and round, random images",
            "image": args.image, "batch": args.batch, "cpu_precision": args.precision,
            "rounds": args.rounds, "warmup": args.warmup, "steps": args.steps, "sides": sides,
            "gelu_speed_vs_relu": round(gelu["images_per_second"] / relu["images_per_second"], 3),
            "gelu_memory_vs_relu": round(gelu["peak_memory_mb"] / relu["peak_memory_mb"], 3),
            "machine": machine.cpu_summary(), "source": source,
            "load_average": {"start": load_start, "end": machine.load_average(2)}}


def main(argv=None):
    args = parse_args(argv)
    source = machine.source_revision()  # before this run writes its (tracked) result
    runs = {activation: [] for activation in ACTIVATIONS}
    load_start = machine.load_average(2)
    with tempfile.TemporaryDirectory() as work:
        for round_index in range(args.rounds):
            for activation in ACTIVATIONS:
                result = harness.run_child("ms_train", spec_for(args, activation), "repo", work,
                                           args.timeout)
                if "error" in result:
                    print(f"activation_speed.py: {activation}, round {round_index + 1}: "
                          f"{result['error']}", file=sys.stderr)
                    return 1
                runs[activation].append(result)
                print(f"round {round_index + 1} {activation}: median step "
                      f"{statistics.median(result['step_s']):.3f} s", flush=True)
    report = summarise(args, runs, source, load_start)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
        handle.write("\n")
    for activation, side in report["sides"].items():
        print(f"{activation}: {side['images_per_second']} images/s, peak "
              f"{side['peak_memory_mb']} MiB ({side['precision']}, {side['precision_detail']})")
    print(f"gelu vs relu: speed {report['gelu_speed_vs_relu']}x, memory "
          f"{report['gelu_memory_vs_relu']}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
