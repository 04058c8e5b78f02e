"""The benchmark's report from the workers' raw results: rows (this repository beside PyTorch,
onnxruntime or the upstream figure, with ratios), figures, the loss check, and the tables
printed at the end (plain or Markdown). Pure functions of the raw results: no process runs
here."""
import dataclasses
import statistics

from harness import compare_losses
from vgg_table import layer_table
from workers_cpu import NUM_CLASSES
from workers_gpu import GPU_AMP_LEVEL, GPU_MODELS, MODEL_LABELS, UPSTREAM_GPU, case_key

# ------------------------------------------------------------------- arithmetic

def vgg_macs(layer_cfg=None, image=(32, 32), num_classes=NUM_CLASSES):
    """Multiply-adds of one forward pass of one image (convolutions 3x3 'same', dense);
    VGG16 unless another row of the layer table is given."""
    height, width = image
    channels, macs = 3, 0
    for item in layer_cfg or layer_table()["vgg16"]:
        if item == "M":
            height, width = height // 2, width // 2
            continue
        macs += height * width * channels * item * 9
        channels = item
    flat = channels * height * width
    macs += flat * 4096 + 4096 * 4096 + 4096 * num_classes
    return macs


def train_flops_per_image(image):
    """Forward + backward is about 3x the forward's multiply-adds, 2 FLOP each."""
    return 3 * 2 * vgg_macs(image=(image, image))


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def per_second(batch, seconds):
    return batch / seconds if seconds else None


def to_ms(seconds):
    return seconds * 1000 if seconds else None


class RawResults:
    """The workers' results by key; failed ones (with an 'error') set apart."""

    def __init__(self, raw):
        self.raw = raw

    def ok(self, key):
        return [r for r in self.raw.get(key, []) if "error" not in r]

    def step(self, key):
        """Median seconds of the timed training steps of every process under key."""
        return median([t for r in self.ok(key) for t in r["step_s"]])

    def field(self, key, name):
        return median([r.get(name) for r in self.ok(key)])

    def seconds(self, key, name):
        """Median seconds of the timed calls named `name` under key."""
        return median([t for r in self.ok(key) for t in r["times"].get(name, [])])


# ------------------------------------------------------------------- the CPU report

def advantage(repo, peer, better="higher"):
    """How many times better this repository is than the peer: repo / peer for rates, the
    peer's value over ours for times and sizes (> 1: ours is better either way)."""
    return ratio(repo, peer) if better == "higher" else ratio(peer, repo)


def cpu_row(name, unit, repo, torch=None, ort=None, better="higher", target=None, note=""):
    """One row of the CPU table: the figures, and how many times better ours is than each."""
    return {"figure": name, "unit": unit, "repo": repo, "torch": torch, "onnxruntime": ort,
            "better": better, "target": target, "note": note,
            "vs_torch": advantage(repo, torch, better),
            "vs_onnxruntime": advantage(repo, ort, better)}


class CpuSummary(RawResults):
    """Rows and figures of a CPU run."""

    def __init__(self, plan, raw):
        super().__init__(raw)
        self.plan, self.rows, self.figures = plan, [], {}
        sg = self.ok("sgemm")
        self.sgemm = sg[0] if sg else None
        self.peak = max(v for v in (self.sgemm["numpy_gflops"], self.sgemm["torch_gflops"])
                        if v) * 1e9 if self.sgemm else None

    def row(self, name, unit, repo, torch=None, ort=None, better="higher", target=None,
            note=""):
        self.rows.append(cpu_row(name, unit, repo, torch, ort, better, target, note))

    def train_rate(self, key, batch):
        per_step = self.step(key)
        return (batch / per_step if per_step else None), per_step

    def fraction_of_peak(self, rate, flops):
        return rate * flops / self.peak if rate and self.peak else None

    def training(self, tag, image, batch, target):
        repo, repo_step = self.train_rate(f"train{tag}_repo", batch)
        torch, torch_step = self.train_rate(f"train{tag}_torch", batch)
        flops = train_flops_per_image(image)
        frac = {"repo": self.fraction_of_peak(repo, flops),
                "torch": self.fraction_of_peak(torch, flops)}
        label = f"training {image}x{image} batch {batch}"
        self.row(label, "images/s", repo, torch, target=f">= {target}x PyTorch",
                 note=f"fraction of fp32 peak: repo {pct_text(frac['repo'])}, "
                      f"PyTorch {pct_text(frac['torch'])}")
        figure = self.figures[f"train{tag}"] = {
            "image": image, "batch": batch, "repo_images_per_s": repo,
            "torch_images_per_s": torch, "repo_step_s": repo_step, "torch_step_s": torch_step,
            "flop_per_image": flops, "repo_fraction_of_peak": frac["repo"],
            "torch_fraction_of_peak": frac["torch"]}
        if self.raw.get(f"train{tag}_repo_stock"):
            stock, stock_step = self.train_rate(f"train{tag}_repo_stock", batch)
            self.row(f"{label}, fast_conv=off (stock MindSpore)", "images/s", stock, torch,
                     note=f"fast_conv=auto is {x_text(ratio(repo, stock))} this")
            figure.update({"repo_stock_images_per_s": stock, "repo_stock_step_s": stock_step,
                           "fast_over_stock": ratio(repo, stock),
                           "repo_stock_fraction_of_peak": self.fraction_of_peak(stock, flops)})

    def evaluation(self):
        plan, sides = self.plan, ("repo", "torch", "onnxruntime")
        evals = [(plan.train_image, plan.eval_batch)]
        if plan.eval224:
            evals.append((224, plan.eval224_batch))
        for image, batch in evals:
            rates = {side: per_second(batch, self.seconds(f"eval_{side}", f"{image}x{batch}"))
                     for side in sides}
            self.row(f"evaluation {image}x{image} batch {batch}", "images/s", rates["repo"],
                     rates["torch"], rates["onnxruntime"],
                     target=">= 1.2x PyTorch, >= 0.9x onnxruntime")
            self.figures[f"eval_{image}_b{batch}"] = rates
        image = plan.latency_image
        lat_ms = {side: to_ms(self.seconds(f"eval_{side}", f"{image}x1")) for side in sides}
        self.row(f"latency {image}x{image} batch 1", "ms", lat_ms["repo"], lat_ms["torch"],
                 lat_ms["onnxruntime"], better="lower", target="<= PyTorch")
        self.figures["latency_ms"] = lat_ms

    def first_step(self):
        train_py = median([r["first_step_s"] for r in self.ok("train_py")])
        own = self.field("train_repo", "launch_to_first_step_s")
        torch_first = self.field("train_torch", "launch_to_first_step_s")
        self.row("process start to first training step (train.py)", "s", train_py, torch_first,
                 better="lower", target="<= 15 s",
                 note="train.py on 64 generated CIFAR-10 images; PyTorch: import, build, one step")
        self.row("process start to first training step (import, build, step)", "s", own,
                 torch_first, better="lower", target="<= 15 s")
        self.figures["first_step_s"] = {"train_py": train_py, "repo_worker": own,
                                        "torch": torch_first}

    def memory(self):
        plan = self.plan
        mem = {side: self.field(f"train_{side}", "max_rss_mb")
               for side in ("repo", "torch", "repo_stock")}
        self.row(f"peak memory, training {plan.train_image}x{plan.train_image} batch "
                 f"{plan.train_batch}", "MiB", mem["repo"], mem["torch"], better="lower",
                 target="<= PyTorch", note=f"fast_conv=off: {num_text(mem['repo_stock'])} MiB")
        self.figures["train_peak_rss_mb"] = mem
        if plan.train224:
            mem224 = {side: self.field(f"train224_{side}", "max_rss_mb")
                      for side in ("repo", "torch")}
            self.row(f"peak memory, training 224x224 batch {plan.train224_batch}", "MiB",
                     mem224["repo"], mem224["torch"], better="lower", target="<= PyTorch")
            self.figures["train224_peak_rss_mb"] = mem224

    def data(self):
        data = self.ok("data")
        if not data:
            return
        d = data[0]
        cifar, imagenet = median(d["cifar_images_per_s"]), median(d["imagenet_images_per_s"])
        self.row("CIFAR-10 training pipeline alone", "images/s", cifar, target=">= 5000",
                 note=f"{d['cifar_images']} images per pass, {d['workers']} workers, "
                      f"{d['cifar_data']} data")
        self.row("ImageNet folder pipeline alone, 224x224", "images/s", imagenet,
                 note=f"{d['imagenet_images']} generated JPEGs (500x375)")
        self.figures["data"] = {"cifar_images_per_s": cifar, "imagenet_images_per_s": imagenet}

    def loss_check(self):
        """Losses of fast_conv=auto against fast_conv=off from the same seed and data, judged
        by compare_losses (the rule is in LOSS_CHECK_RULE and in the report)."""
        runs, fast = self.ok("train_repo_stock"), self.ok("train_repo")
        stock = [r for r in runs if not r.get("perturb")]
        reference = [r for r in runs if r.get("perturb")]
        if not fast or not stock:
            return {"checked": False}
        result = compare_losses(fast[0]["losses"], stock[0]["losses"],
                                reference[0]["losses"] if reference else None,
                                self.plan.loss_check_steps, self.plan.loss_rtol)
        result["fast_path_active"] = fast[0]["fast_cells"] > 0
        return result

    def processes(self):
        """How the processes ran: native cells, oneDNN ISA, PyTorch's threads and kernels."""
        fast_runs = self.ok("train_repo")
        torch_run = (self.ok("train_torch") or [{}])[0]
        return {
            "fast_conv_active": bool(fast_runs) and fast_runs[0]["fast_cells"] > 0,
            "fast_conv_cells": [fast_runs[0]["fast_cells"], fast_runs[0]["conv_cells"]]
            if fast_runs else None,
            "onednn_max_cpu_isa_per_process": {
                key: sorted({str(r.get("isa_env")) for r in self.ok(key)})
                for key in ("train_repo", "train_repo_stock", "train_torch", "eval_repo")},
            "torch_threads": torch_run.get("torch_threads"),
            "torch_cpu_capability": torch_run.get("torch_cpu_capability")}

    def report(self):
        plan = self.plan
        self.training("", plan.train_image, plan.train_batch, 1.2)
        if plan.train224:
            self.training("224", 224, plan.train224_batch, 1.0)
        self.evaluation()
        self.first_step()
        self.memory()
        self.data()
        processes = self.processes()
        return {"plan": dataclasses.asdict(plan),
                "peak_gflops": self.peak / 1e9 if self.peak else None, "sgemm": self.sgemm,
                "fast_conv_active": processes.pop("fast_conv_active"), **processes,
                "loss_check": self.loss_check(), "rows": self.rows, "figures": self.figures}


def summarise_cpu(plan, raw):
    return CpuSummary(plan, raw).report()


def loss_check_line(check, perturbation):
    """The loss check in one line, or None when it did not run."""
    if not check.get("checked"):
        return None
    ref = check.get("reference_relative_difference")
    return (f"losses, fast_conv=auto vs off, first {check['steps']} steps from seed 1 "
            f"(fast path {'active' if check['fast_path_active'] else 'not active'}): "
            f"{'MATCH' if check['match'] else 'DIFFER'}; relative differences "
            f"{' '.join(f'{d:.1e}' for d in check['relative_difference'])}"
            + (f"; stock vs stock with inputs x(1+{perturbation:g} noise): "
               f"{' '.join(f'{d:.1e}' for d in ref)}" if ref else "")
            + f"; allowed {' '.join(f'{d:.1e}' for d in check['allowed'])}")


def run_line(report, plan):
    """The run's last line: fp32 peak, oneDNN ISA per process, load, duration."""
    machine = report["machine"]
    return (f"fp32 peak {num_text(report['peak_gflops'])} GFLOP/s (sgemm {plan.sgemm_n}); "
            f"ONEDNN_MAX_CPU_ISA per process: {machine['onednn_max_cpu_isa']}; load average "
            f"{machine['load_average_start']} -> {machine['load_average_end']}; "
            f"{report['duration_s'] / 60:.1f} min")


# ------------------------------------------------------------------- the GPU report

class GpuSummary(RawResults):
    """Rows and figures of a GPU run. A row's repo_status is None when this repository was
    measured, '' where it is not meant to be (PyTorch float32 reference rows), else
    'unavailable: <reason>'."""

    def __init__(self, plan, raw):
        super().__init__(raw)
        self.plan, self.rows, self.figures = plan, [], {}
        self.train_note = (f"this repo amp_level {GPU_AMP_LEVEL} (the config's loss scale); "
                           "PyTorch autocast float16 + GradScaler" if plan.amp else "float32 both")
        self.eval_note = (f"this repo amp_level {GPU_AMP_LEVEL} (eval.py itself keeps float32); "
                          "PyTorch autocast float16" if plan.amp else "float32 both")

    def status(self, key):
        failed = [r for r in self.raw.get(key, []) if "error" in r]
        if self.ok(key) or not failed:
            return None
        return f"unavailable: {failed[0]['error']}"

    def row(self, name, unit, repo, torch, upstream=None, better="higher", note="",
            repo_status=None):
        if repo_status is not None:
            vs_torch = None
        else:
            vs_torch = ratio(repo, torch) if better == "higher" else ratio(torch, repo)
        self.rows.append({"figure": name, "unit": unit, "repo": repo, "torch": torch,
                          "vs_torch": vs_torch, "upstream": upstream, "better": better,
                          "note": note, "repo_status": repo_status})

    def training(self, model, image, batch):
        key = f"train_{case_key(model, image, batch)}"
        keys = {"repo": f"{key}_repo", "amp": f"{key}_torch_amp", "fp32": f"{key}_torch_fp32"}
        why = self.status(keys["repo"])
        up = UPSTREAM_GPU if (model, image, batch) == (
            UPSTREAM_GPU["model"], UPSTREAM_GPU["image"], UPSTREAM_GPU["batch"]) else {}
        up_note = (f"upstream: the published figure ({UPSTREAM_GPU['framework']}, "
                   f"{UPSTREAM_GPU['device']}), not measured here") if up else ""
        case = f"{image}x{image} batch {batch}, {MODEL_LABELS[model]}"
        steps = {side: self.step(k) for side, k in keys.items()}
        rate = {side: per_second(batch, value) for side, value in steps.items()}
        self.row(f"training {case}, mixed precision", "images/s", rate["repo"], rate["amp"],
                 up.get("images_per_s"), note="; ".join(filter(None, (self.train_note, up_note))),
                 repo_status=why)
        self.row(f"training {case}, mixed precision, step time", "ms/step", to_ms(steps["repo"]),
                 to_ms(steps["amp"]), up.get("ms_per_step"), better="lower", note=up_note,
                 repo_status=why)
        self.row(f"training {case}, float32, PyTorch reference", "images/s", None, rate["fp32"],
                 repo_status="", note=f"{num_text(to_ms(steps['fp32']))} ms/step; PyTorch's "
                                      "defaults (cuDNN may use TF32 in convolutions)")
        launch, peak = self.training_process_rows(case, keys, why)
        self.figures[key[len("train_"):]] = {
            "model": model, "config": GPU_MODELS[model], "image": image, "batch": batch,
            **{f"{side}_images_per_s": rate[short] for side, short in
               (("repo", "repo"), ("torch_amp", "amp"), ("torch_fp32", "fp32"))},
            **{f"{side}_ms_per_step": to_ms(steps[short]) for side, short in
               (("repo", "repo"), ("torch_amp", "amp"), ("torch_fp32", "fp32"))},
            "launch_to_first_step_s": launch, "peak_device_memory_mb": peak,
            "upstream_ms_per_step": up.get("ms_per_step")}

    def training_process_rows(self, case, keys, why):
        """Rows of the training processes themselves: launch to first step, peak memory."""
        launch = {"repo": self.field(keys["repo"], "launch_to_first_step_s"),
                  "torch_amp": self.field(keys["amp"], "launch_to_first_step_s")}
        self.row(f"process start to first training step, {case}", "s", launch["repo"],
                 launch["torch_amp"], better="lower", repo_status=why,
                 note="import, build, graph compile or cuDNN autotuning, one step")
        peak = {"repo": self.field(keys["repo"], "peak_device_memory_mb"),
                "torch_amp": self.field(keys["amp"], "peak_device_memory_mb")}
        self.row(f"peak GPU memory allocated, training {case}, mixed precision", "MiB",
                 peak["repo"], peak["torch_amp"], better="lower", repo_status=why)
        return launch, peak

    def evaluation(self):
        why = self.status("eval_repo")
        sides = {"repo": ("eval_repo", ""), "torch_amp": ("eval_torch", "amp/"),
                 "torch_fp32": ("eval_torch", "fp32/")}
        for model, image, batch in self.plan.eval_cases:
            rate = {side: per_second(batch, self.seconds(key, f"{prefix}{model}_{image}x{batch}"))
                    for side, (key, prefix) in sides.items()}
            label = f"evaluation {image}x{image} batch {batch}, {MODEL_LABELS[model]}"
            self.row(f"{label}, mixed precision", "images/s", rate["repo"], rate["torch_amp"],
                     note=self.eval_note, repo_status=why)
            self.row(f"{label}, float32, PyTorch reference", "images/s", None,
                     rate["torch_fp32"], repo_status="")
            self.figures[f"eval_{model}_{image}_b{batch}"] = rate
        model, image = self.plan.latency_case
        lat = {side: to_ms(self.seconds(key, f"{prefix}{model}_{image}x1"))
               for side, (key, prefix) in sides.items()}
        label = f"latency {image}x{image} batch 1, {MODEL_LABELS[model]}"
        self.row(f"{label}, mixed precision", "ms", lat["repo"], lat["torch_amp"],
                 better="lower", repo_status=why)
        self.row(f"{label}, float32, PyTorch reference", "ms", None, lat["torch_fp32"],
                 better="lower", repo_status="")
        self.figures["latency_ms"] = lat

    def report(self):
        for case in self.plan.train_cases:
            self.training(*case)
        self.evaluation()
        repo = [r for key, results in self.raw.items() if key.endswith("_repo") for r in results]
        settings = next((r["settings"] for key, results in self.raw.items() if "_torch" in key
                         for r in results if "settings" in r), None)
        return {"plan": dataclasses.asdict(self.plan), "upstream_reference": UPSTREAM_GPU,
                "repo": {"available": any("error" not in r for r in repo),
                         "unavailable_reason": next((r["error"] for r in repo if "error" in r),
                                                    None),
                         "amp_level": GPU_AMP_LEVEL if self.plan.amp else "O0"},
                "torch_settings": settings, "rows": self.rows, "figures": self.figures}


def summarise_gpu(plan, raw):
    return GpuSummary(plan, raw).report()


def upstream_line():
    up = UPSTREAM_GPU
    return (f"upstream: {up['ms_per_step']:g} ms/step ({up['images_per_s']:.0f} images/s), "
            f"VGG16 {up['image']}x{up['image']} batch {up['batch']}, {up['device']}, "
            f"{up['framework']}, {up['precision']}: the published figure, not measured here")


# ------------------------------------------------------------------- tables

def pct_text(value):
    return f"{100 * value:.0f} %" if value is not None else "n/a"


def x_text(value):
    return f"{value:.2f}x" if value is not None else "n/a"


def num_text(value):
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 \
        else f"{value:.1f}"


def format_table(rows, markdown=False):
    head = ["figure", "unit", "this repo", "PyTorch", "repo vs PyTorch", "onnxruntime",
            "repo vs ORT", "target", "note"]
    body = [[r["figure"], r["unit"], num_text(r["repo"]), num_text(r["torch"]),
             x_text(r["vs_torch"]), num_text(r["onnxruntime"]), x_text(r["vs_onnxruntime"]),
             r["target"] or "", r["note"]]
            for r in rows]
    return layout(head, body, markdown)


def _repo_cell(row, width=72):
    if row["repo_status"] is None:
        return num_text(row["repo"])
    text = row["repo_status"]
    return text if len(text) <= width else text[:width - 3] + "..."


def format_gpu_table(rows, markdown=False):
    head = ["figure", "unit", "this repo", "PyTorch", "repo vs PyTorch",
            "upstream V100 (published)", "note"]
    body = [[r["figure"], r["unit"], _repo_cell(r), num_text(r["torch"]),
             "" if r["repo_status"] is not None else x_text(r["vs_torch"]),
             "" if r["upstream"] is None else num_text(r["upstream"]), r["note"]] for r in rows]
    return layout(head, body, markdown)


def layout(head, body, markdown):
    """Columns padded to their widest cell (the last one, a free-text note, not padded)."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(str(line[i])) for line in [head] + body) for i in range(len(head) - 1)]
    out = []
    for cells in [head] + body:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1])
    return "\n".join(out)
