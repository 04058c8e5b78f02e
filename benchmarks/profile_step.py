"""Where a training step's time goes, per oneDNN kernel: this repository's train step (as the
benchmark's training row runs it) under ONEDNN_VERBOSE=profile_exec.

    python benchmarks/profile_step.py [--image 32] [--batch 64] [--precision bfloat16]
                                      [--warmup 3] [--steps 5] [--out FILE.json]
                                      [--matmul_weights_max_pixels N] [--eval]
                                      [--ghost_batch N]

A child process builds the network and train step from cifar10_config.yaml at the given size,
batch and cpu_precision (native kernels on), runs the warm-up steps, then the timed ones between
two markers; oneDNN prints one line per executed primitive with its time. Over the timed steps
the report adds up, per step: each primitive kind and propagation (convolution backward_weights,
reorder, ...), each kind and shape (the layers), and the rest of the wall time ("outside
oneDNN": MindSpore's own operators, the optimiser, Python). Writes the JSON (with the machine's
CPU flags) and prints the table. --matmul_weights_max_pixels sets
VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS for the profiled process (0: every weight gradient on
oneDNN's convolution kernels, to compare with the default im2col + matmul on small outputs).
--eval profiles inference instead, as the benchmark's evaluation row runs it (set_train(False),
one forward pass of the batch per step). --ghost_batch trains with ghost batch normalisation
(`ghost_batch_size`), as train.py builds it.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import harness  # noqa: E402  (path set just above)
import machine  # noqa: E402

BEGIN, END = "@@PROFILE_BEGIN@@", "@@PROFILE_END@@"
MATMUL_WEIGHTS_VAR = "VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS"


def parse_exec_line(line):
    """(kind, implementation, propagation, shape, milliseconds) of one oneDNN
    `...,exec,cpu,KIND,IMPL,PROP,...,SHAPE,MS` verbose line, or None for any other line."""
    if not line.startswith("onednn_verbose,"):
        return None
    fields = line.rstrip("\n").split(",")
    try:
        at = fields.index("exec")
        kind, impl, prop = fields[at + 2], fields[at + 3], fields[at + 4]
        ms = float(fields[-1])
    except (ValueError, IndexError):
        return None
    return kind, impl, prop, fields[-2], ms


def summarise(lines, steps, step_seconds):
    """Per-step milliseconds by kind/propagation and by kind/propagation/shape, from the verbose
    lines between the markers; the share of the measured step left outside oneDNN."""
    by_kind, by_layer, impls = collections.Counter(), collections.Counter(), {}
    calls = collections.Counter()
    for line in lines:
        parsed = parse_exec_line(line)
        if parsed is None:
            continue
        kind, impl, prop, shape, ms = parsed
        key = f"{kind} {prop}"
        by_kind[key] += ms / steps
        calls[key] += 1 / steps
        by_layer[f"{key} {shape}"] += ms / steps
        impls.setdefault(key, set()).add(impl)
    step_ms = 1000 * sum(step_seconds) / len(step_seconds)
    inside = sum(by_kind.values())
    return {"step_ms": step_ms, "onednn_ms": inside, "outside_onednn_ms": step_ms - inside,
            "by_kind_ms": dict(by_kind.most_common()),
            "calls_per_step": {k: round(v, 2) for k, v in calls.items()},
            "implementations": {k: sorted(v) for k, v in impls.items()},
            "top_layers_ms": dict(by_layer.most_common(15))}


def child(args):
    """Runs in the profiled process: warm-up, then the timed steps between the markers."""
    import workers_cpu

    from src.factory import build_network

    config = workers_cpu.repo_config(args.image, args.batch, "auto", args.precision)
    if args.ghost_batch:
        config = config.replace(ghost_batch_size=args.ghost_batch)
    workers_cpu.start_repo_runtime(config)
    import native_kernels

    net = build_network(config, "CPU", training=not args.eval)
    precision, detail = native_kernels.network_precision(net)
    if args.eval:
        import mindspore as ms

        net.set_train(False)
        images = ms.Tensor(workers_cpu.random_images(args.batch, args.image))

        def run(_):
            net(images).asnumpy()
    else:
        step, masks = workers_cpu.repo_train_step(net, config, "CPU")
        run = workers_cpu.ms_step_runner(
            step, workers_cpu.ms_batches(workers_cpu.random_batches(2, args.batch, args.image)),
            masks)
    for i in range(args.warmup):
        run(i)
    sys.stdout.flush()
    os.write(1, f"\n{BEGIN}\n".encode())
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        run(args.warmup + i)
        times.append(time.perf_counter() - start)
    sys.stdout.flush()
    os.write(1, f"\n{END}\n".encode())
    print(harness.RESULT_MARK + json.dumps({
        "step_s": times, "precision": precision, "precision_detail": detail,
        "activation_layout": native_kernels.activation_layout(precision)}), flush=True)


def table(summary):
    rows = [f"{'per step':<48} {summary['step_ms']:9.1f} ms",
            f"{'  inside oneDNN':<48} {summary['onednn_ms']:9.1f} ms",
            f"{'  outside oneDNN':<48} {summary['outside_onednn_ms']:9.1f} ms"]
    for key, ms in summary["by_kind_ms"].items():
        rows.append(f"    {key:<44} {ms:9.1f} ms  {100 * ms / summary['step_ms']:4.1f} %  "
                    f"{summary['calls_per_step'][key]:g} calls")
    return "\n".join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", help="JSON report")
    parser.add_argument("--matmul_weights_max_pixels", type=int,
                        help="VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS for the profiled process "
                             "(default: the library's own choice)")
    parser.add_argument("--eval", action="store_true",
                        help="profile inference (one forward pass per step) instead of training")
    parser.add_argument("--ghost_batch", type=int, default=0,
                        help="train with ghost batch normalisation over runs of N images "
                             "(ghost_batch_size; 0: off)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.image < 32:
        parser.error("--steps and --batch must be >= 1, --warmup >= 0, --image >= 32")
    if args.ghost_batch < 0 or (args.ghost_batch and args.batch % args.ghost_batch):
        parser.error("--ghost_batch must divide --batch (0: off)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    env = harness.child_env("repo")
    env["ONEDNN_VERBOSE"] = "profile_exec"
    env.pop(MATMUL_WEIGHTS_VAR, None)
    if args.matmul_weights_max_pixels is not None:
        env[MATMUL_WEIGHTS_VAR] = str(args.matmul_weights_max_pixels)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--image={args.image}",
           f"--batch={args.batch}", f"--precision={args.precision}", f"--warmup={args.warmup}",
           f"--steps={args.steps}", f"--ghost_batch={args.ghost_batch}"] + (
               ["--eval"] if args.eval else [])
    started = time.time()
    described = machine.machine_description()  # its load average: at the start
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=harness.ROOT)
    out = proc.stdout.splitlines()
    result = next((json.loads(line[len(harness.RESULT_MARK):]) for line in reversed(out)
                   if line.startswith(harness.RESULT_MARK)), None)
    if proc.returncode or result is None or BEGIN not in out or END not in out:
        tail = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:])
        print(f"profile_step.py: the profiled process failed ({proc.returncode}): {tail}",
              file=sys.stderr)
        return 1
    lines = out[out.index(BEGIN) + 1:out.index(END)]
    summary = summarise(lines, args.steps, result["step_s"])
    if not summary["by_kind_ms"]:
        print("profile_step.py: oneDNN printed no exec lines (ONEDNN_VERBOSE not honoured?)",
              file=sys.stderr)
        return 1
    report = {"command": " ".join(["benchmarks/profile_step.py"] + (argv or sys.argv[1:])),
              "mode": "eval" if args.eval else "train", "image": args.image,
              "batch": args.batch, "precision": result["precision"],
              "precision_detail": result["precision_detail"],
              "activation_layout": result["activation_layout"], "steps": args.steps,
              "warmup": args.warmup, "matmul_weights_max_pixels": args.matmul_weights_max_pixels,
              "ghost_batch": args.ghost_batch,
              "step_s": result["step_s"], **summary,
              "machine": {k: described[k] for k in ("cpu_model", "usable_cpus", "cpu_flags",
                                                    "load_average_start")},
              "load_average_end": machine.load_average(),
              "wall_s": time.time() - started}
    print(f"{'inference' if args.eval else 'training'}, "
          f"{args.image}x{args.image} batch {args.batch}, {result['precision']} "
          f"{result['activation_layout']} "
          f"({result['precision_detail']}), {args.steps} steps after {args.warmup} warm-up"
          + (f", ghost batches of {args.ghost_batch}" if args.ghost_batch else ""))
    print(table(summary))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
