"""bfloat16 vs float32 on CPU, back to back in one process per framework:

    python benchmarks/bench_bf16.py repo  [--steps N] [--eval]   # this repository, native kernels
    python benchmarks/bench_bf16.py torch [--steps N] [--eval]   # PyTorch fp32 vs autocast bf16
    python benchmarks/bench_bf16.py all [--eval]                 # both, then the rows
    (--image 224 --train_batch 8 --eval_batch 32 for ImageNet size)

VGG16-BN, 10 classes, at 32x32 by default: training step at batch 64 (forward, backward,
optimizer, host dropout masks as Trainer feeds them), evaluation at batch 256. The two
precisions are timed in alternation (step of one, step of the other, ...) so that load from
other processes hits both alike; medians are reported. Also the bf16 and fp32 matrix-multiply
rates (PyTorch matmul and this repository's dense kernel, 4096^3), the CPU flags and the load.
Prints one JSON object per side; `all` prints both and the benchmark rows.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV_MACS_32 = 0.3135e9  # VGG16's convolutions at 32x32, per image


def flop_per_image(image, training):
    """Forward (x1) or forward + backward (x3) FLOP of VGG16-BN per image at image x image."""
    cells = (image // 32) ** 2
    macs = CONV_MACS_32 * cells + 512 * cells * 4096 + 4096 * 4096 + 4096 * 10
    return (3 if training else 1) * 2 * macs


def cpu_info():
    flags, model = set(), ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return {"model": model, "flags": [f for f in wanted if f in flags],
            "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}


def alternate(runners, warmup, steps):
    """{name: [seconds]} timing each runner once per round, in turn."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {name: [] for name in runners}
    for _ in range(steps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times, images, flop_per_image):
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "images_per_s": images / med,
            "gflops": images * flop_per_image / med / 1e9, "samples": len(times)}


# ------------------------------------------------------------------ this repository

def repo_side(steps, with_eval, image, train_batch, eval_batch):
    sys.path.insert(0, REPO)
    os.chdir(REPO)
    from src.native.isa import cap_onednn_isa

    cap_onednn_isa()
    import logging

    import numpy as np

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import mindspore as ms

    from model_utils.config import get_config
    from src.factory import build_network
    from src.lr_schedule import learning_rates
    from src.native import bf16_isa, reference_kernels
    from src.runtime import setup_runtime
    from src.trainer import DropoutMasks, build_train_step

    log = logging.getLogger("vgg")

    def config(precision, batch):
        return get_config([f"--config_path={REPO}/cifar10_config.yaml", "--device_target=CPU",
                           f"--image_size={image},{image}", f"--batch_size={batch}", "--arch=vgg16",
                           "--batch_norm=True", "--native_kernels=auto",
                           f"--cpu_precision={precision}"])

    setup_runtime("CPU", mode="graph", seed=1)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((train_batch, 3, image, image), dtype=np.float32))
    y = ms.Tensor(rng.integers(0, 10, train_batch).astype(np.int32))
    runners, losses = {}, {}
    for precision in ("float32", "bfloat16"):
        ms.set_seed(1)  # the same initial weights in both precisions
        cfg = config(precision, train_batch)
        net = build_network(cfg, "CPU")
        step = build_train_step(net, cfg, learning_rates(cfg, 781), "CPU", log)
        masks = DropoutMasks(1, 0)
        losses[precision] = []
        state = {"n": 0}

        def run(step=step, masks=masks, state=state, out=losses[precision]):
            loss = step(x, y, *masks(state["n"], train_batch))
            out.append(float(loss.asnumpy()))
            state["n"] += 1

        runners[precision] = run
    times = alternate(runners, 2, steps)
    result = {"side": "repo", "cpu": cpu_info(), "bf16_isa": bf16_isa(),
              "onednn_isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "image": image, "train_batch": train_batch, "eval_batch": eval_batch,
              "train": {p: summary(t, train_batch, flop_per_image(image, True))
                        for p, t in times.items()},
              "losses": {p: values[:6] for p, values in losses.items()}}
    if with_eval:
        xe = ms.Tensor(rng.standard_normal((eval_batch, 3, image, image), dtype=np.float32))
        nets = {}
        for precision in ("float32", "bfloat16"):
            ms.set_seed(1)  # the same weights in both precisions
            net = build_network(config(precision, eval_batch), "CPU")
            net.set_train(False)
            nets[precision] = net
        outs = {p: n(xe).asnumpy() for p, n in nets.items()}
        times = alternate({p: (lambda n=n: n(xe).asnumpy()) for p, n in nets.items()}, 1,
                          max(3, steps // 2))
        result["eval"] = {p: summary(t, eval_batch, flop_per_image(image, False))
                          for p, t in times.items()}
        ref = outs["float32"]
        result["eval_logits_rel_err"] = float(np.abs(outs["bfloat16"] - ref).max()
                                              / np.abs(ref).max())
        result["eval_top1_agree"] = float((outs["bfloat16"].argmax(1) == ref.argmax(1)).mean())
    result["native_matmul_gflops"] = native_matmul_peak(ms, np)
    result["reference_kernels"] = reference_kernels()
    result["train"]["speedup_bf16"] = (result["train"]["float32"]["median_s"]
                                       / result["train"]["bfloat16"]["median_s"])
    if with_eval:
        result["eval"]["speedup_bf16"] = (result["eval"]["float32"]["median_s"]
                                          / result["eval"]["bfloat16"]["median_s"])
    result["load_avg_1m_end"] = os.getloadavg()[0]
    return result


def native_matmul_peak(ms, np, n=4096, reps=5):
    """GFLOP/s of this repository's dense kernel (oneDNN inner product) on n x n x n, float32
    and bfloat16 (the float32 -> bfloat16 casts of x and w included)."""
    from src.native.layers import NativeDense

    x = ms.Tensor(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    peaks = {}
    for precision in ("float32", "bfloat16"):
        cell = NativeDense(n, n, precision=precision)
        cell(x).asnumpy()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            cell(x).asnumpy()
            times.append(time.perf_counter() - start)
        peaks[precision] = 2 * n ** 3 / min(times) / 1e9
    return peaks


# ------------------------------------------------------------------ PyTorch

def torch_vgg16_bn(image):
    from torch import nn

    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                       nn.ReLU(inplace=True)]
            cin = v
    flat = 512 * (image // 32) ** 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 4096), nn.ReLU(True),
                         nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(4096, 10))


def matmul_peak(dtype, n=4096, reps=5):
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def torch_side(steps, with_eval, image, train_batch, eval_batch):
    import torch
    from torch import nn

    torch.manual_seed(1)
    x = torch.randn(train_batch, 3, image, image)
    y = torch.randint(0, 10, (train_batch,))
    runners = {}
    for precision in ("fp32", "bf16_autocast"):
        net = torch_vgg16_bn(image).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()

        def run(net=net, opt=opt, loss_fn=loss_fn, bf16=precision != "fp32"):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            return float(loss)

        runners[precision] = run
    times = alternate(runners, 2, steps)
    result = {"side": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": cpu_info(),
              "train": {p: summary(t, train_batch, flop_per_image(image, True))
                        for p, t in times.items()}}
    if with_eval:
        xe = torch.randn(eval_batch, 3, image, image)
        nets = {p: torch_vgg16_bn(image).eval() for p in ("fp32", "bf16_autocast")}

        def infer(net, bf16):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return net(xe)

        times = alternate({p: (lambda n=n, b=(p != "fp32"): infer(n, b)) for p, n in nets.items()},
                          1, max(3, steps // 2))
        result["eval"] = {p: summary(t, eval_batch, flop_per_image(image, False))
                          for p, t in times.items()}
    result["matmul_gflops"] = {"fp32": matmul_peak(torch.float32),
                               "bf16": matmul_peak(torch.bfloat16)}
    result["train"]["speedup_bf16"] = (result["train"]["fp32"]["median_s"]
                                       / result["train"]["bf16_autocast"]["median_s"])
    result["load_avg_1m_end"] = os.getloadavg()[0]
    return result


def rows(repo, torch_result):
    """The benchmark rows: this repository bf16 vs PyTorch bf16 autocast, and each as a
    fraction of the measured bf16 matmul peak."""
    # the better of the two measured bfloat16 matrix-multiply rates: PyTorch's matmul and this
    # repository's dense kernel (both oneDNN)
    peak = max(torch_result["matmul_gflops"]["bf16"], repo["native_matmul_gflops"]["bfloat16"])
    out = []
    for kind in ("train", "eval"):
        if kind not in repo or kind not in torch_result:
            continue
        r, t = repo[kind], torch_result[kind]
        batch = repo["train_batch" if kind == "train" else "eval_batch"]
        out.append({
            "row": f"{'training' if kind == 'train' else 'evaluation'} {repo['image']}x"
                   f"{repo['image']} batch {batch}, VGG16-BN, bfloat16",
            "repo_bf16_images_per_s": r["bfloat16"]["images_per_s"],
            "repo_fp32_images_per_s": r["float32"]["images_per_s"],
            "torch_bf16_autocast_images_per_s": t["bf16_autocast"]["images_per_s"],
            "torch_fp32_images_per_s": t["fp32"]["images_per_s"],
            "repo_bf16_vs_torch_bf16": r["bfloat16"]["images_per_s"]
            / t["bf16_autocast"]["images_per_s"],
            "repo_bf16_vs_repo_fp32": r["bfloat16"]["images_per_s"] / r["float32"]["images_per_s"],
            "repo_bf16_fraction_of_bf16_matmul_peak": r["bfloat16"]["gflops"] / peak,
            "torch_bf16_fraction_of_bf16_matmul_peak": t["bf16_autocast"]["gflops"] / peak,
            "bf16_matmul_peak_gflops": peak,
        })
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("repo", "torch", "all"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--train_batch", type=int, default=64)
    parser.add_argument("--eval_batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="all: repo/torch alternations")
    args = parser.parse_args()
    sizes = (args.image, args.train_batch, args.eval_batch)
    if args.side == "repo":
        print(json.dumps(repo_side(args.steps, args.eval, *sizes)), flush=True)
    elif args.side == "torch":
        print(json.dumps(torch_side(args.steps, args.eval, *sizes)), flush=True)
    else:
        results = {"repo": [], "torch": []}
        for _ in range(args.rounds):  # alternate the sides: both meet the same load
            for side in ("repo", "torch"):
                cmd = [sys.executable, os.path.abspath(__file__), side, "--steps",
                       str(args.steps), "--image", str(args.image), "--train_batch",
                       str(args.train_batch), "--eval_batch", str(args.eval_batch)]
                if args.eval:
                    cmd.append("--eval")
                env = dict(os.environ, GLOG_v="3")
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    sys.exit(proc.stderr[-3000:])
                results[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        best = {side: best_round(runs) for side, runs in results.items()}
        print(json.dumps({**best, "rounds": results, "rows": rows(best["repo"], best["torch"])},
                         indent=1))


def best_round(runs):
    """The round whose bfloat16 training step was fastest (the least disturbed by other
    processes), with every round's figures kept beside it."""
    def bf16_train_s(run):
        train = run["train"]
        return train.get("bfloat16", train.get("bf16_autocast"))["median_s"]
    return min(runs, key=bf16_train_s)


if __name__ == "__main__":
    main()
