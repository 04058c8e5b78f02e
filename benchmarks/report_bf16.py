"""The benchmark's bfloat16 rows: this repository with cpu_precision=bfloat16 beside PyTorch
under torch.autocast("cpu", dtype=torch.bfloat16), with PyTorch float32 and onnxruntime from
the float32 rows of the same run; the fraction of the measured bfloat16 matrix-multiply peak
each side reaches; the targets of the bfloat16 work, each met or not. Pure functions of the
raw results, like report.py."""
import dataclasses

from report import (
    RawResults,
    advantage,
    cpu_row,
    layout,
    num_text,
    pct_text,
    per_second,
    ratio,
    to_ms,
    train_flops_per_image,
    vgg_macs,
    x_text,
)

PEERS = {"torch_bf16": "PyTorch bf16 autocast", "torch_fp32": "PyTorch float32",
         "onnxruntime": "onnxruntime (float32 export)"}


@dataclasses.dataclass(frozen=True)
class Target:
    """On one case, ours at least `minimum` times better than the peer (strictly more with
    `strict`), in report.advantage's sense: rates ours / peer, times and sizes peer / ours."""
    case: str
    peer: str
    minimum: float
    text: str
    strict: bool = False

    def met(self, value):
        if value is None:
            return None
        return value > self.minimum if self.strict else value >= self.minimum


# The targets for this machine class (2 cores with AVX512-BF16 or AMX-BF16).
TARGETS = (
    Target("train", "torch_bf16", 2.0, ">= 2.0x PyTorch bf16"),
    Target("train", "torch_fp32", 2.9, ">= 2.9x PyTorch fp32"),
    Target("train224", "torch_bf16", 1.5, ">= 1.5x PyTorch bf16"),
    Target("eval", "torch_bf16", 1.5, ">= 1.5x PyTorch bf16"),
    Target("eval", "onnxruntime", 1.0, "> onnxruntime", strict=True),
    Target("eval224", "torch_bf16", 1.5, ">= 1.5x PyTorch bf16"),
    Target("eval224", "onnxruntime", 1.0, "> onnxruntime", strict=True),
    Target("latency", "torch_bf16", 1.0, "< PyTorch bf16", strict=True),
    Target("memory", "torch_bf16", 1.0, "<= PyTorch bf16"),
    Target("memory224", "torch_bf16", 1.0, "<= PyTorch bf16"),
)


def case_names(plan):
    """{case: row name} of the plan's bfloat16 rows."""
    image, latency = plan.train_image, plan.latency_image
    return {
        "train": f"training {image}x{image} batch {plan.train_batch}, bfloat16",
        "train224": f"training 224x224 batch {plan.train224_batch}, bfloat16",
        "eval": f"evaluation {image}x{image} batch {plan.eval_batch}, bfloat16",
        "eval224": f"evaluation 224x224 batch {plan.eval224_batch}, bfloat16",
        "latency": f"latency {latency}x{latency} batch 1, bfloat16",
        "memory": f"peak memory, training {image}x{image} batch {plan.train_batch}, bfloat16",
        "memory224": f"peak memory, training 224x224 batch {plan.train224_batch}, bfloat16"}


class Bf16Summary(RawResults):
    """Rows, figures per case and targets of the bfloat16 part of a CPU run; `fp32` is the
    float32 report's figures, `skip` why bfloat16 was not measured (None when it was)."""

    def __init__(self, plan, raw, fp32, skip=None):
        super().__init__(raw)
        self.plan, self.fp32, self.skip = plan, fp32, skip
        self.names, self.rows, self.cases = case_names(plan), [], {}
        torch = self.field("bf16_matmul_torch", "torch_bf16_gflops")
        repo = self.field("bf16_matmul_repo", "native_bf16_gflops")
        dense = self.ok("bf16_matmul_repo")
        self.peak = {"n": plan.sgemm_n, "torch_matmul_gflops": torch, "repo_dense_gflops": repo,
                     "repo_dense_unavailable": dense[0].get("unavailable") if dense else None,
                     "peak_gflops": max(filter(None, (torch, repo)), default=None)}

    def fraction(self, rate, flop):
        """Fraction of the bfloat16 peak (the better of the two measured multiplies)."""
        peak = self.peak["peak_gflops"]
        return rate * flop / (peak * 1e9) if rate and peak else None

    def not_bf16(self, key):
        """Why this repository's processes under key computed in float32, or None."""
        fell_back = [r for r in self.ok(key) if r.get("precision") != "bfloat16"]
        if not fell_back:
            return None
        return f"this repository ran float32: {fell_back[0].get('precision_detail')}"

    def case(self, case, unit, better, repo, torch, why=None, ort=None, note="", **figures):
        """Keeps a case and appends its row; ours left empty, with the reason, when this
        repository did not compute in bfloat16."""
        repo = None if why else repo
        target = ", ".join(t.text for t in TARGETS if t.case == case)
        note = "; ".join(filter(None, ("PyTorch: bf16 autocast", note, why)))
        self.rows.append(cpu_row(self.names[case], unit, repo, torch, ort, better, target, note))
        self.cases[case] = {"figure": self.names[case], "unit": unit, "better": better,
                            "repo": repo, "torch_bf16": torch, "onnxruntime": ort,
                            "repo_status": why, **figures,
                            "vs_torch_bf16": advantage(repo, torch, better),
                            "vs_torch_fp32": advantage(repo, figures.get("torch_fp32"), better),
                            "vs_onnxruntime": advantage(repo, ort, better)}

    def training(self, case, tag, image, batch):
        key = f"train{tag}_bf16"
        why = self.not_bf16(f"{key}_repo")
        steps = {side: self.step(f"{key}_{side}") for side in ("repo", "torch")}
        rate = {side: None if why and side == "repo" else per_second(batch, seconds)
                for side, seconds in steps.items()}
        flop = train_flops_per_image(image)
        frac = {side: self.fraction(value, flop) for side, value in rate.items()}
        fp32 = self.fp32.get(f"train{tag}", {})
        torch_fp32 = fp32.get("torch_images_per_s")
        self.case(case, "images/s", "higher", rate["repo"], rate["torch"], why,
                  note=f"vs PyTorch float32 {x_text(ratio(rate['repo'], torch_fp32))}; fraction "
                       f"of bf16 peak: repo {pct_text(frac['repo'])}, PyTorch "
                       f"{pct_text(frac['torch'])}",
                  image=image, batch=batch, torch_fp32=torch_fp32,
                  repo_fp32=fp32.get("repo_images_per_s"), repo_step_s=steps["repo"],
                  torch_step_s=steps["torch"], flop_per_image=flop,
                  repo_fraction_of_bf16_peak=frac["repo"],
                  torch_fraction_of_bf16_peak=frac["torch"],
                  repo_losses=[r["losses"] for r in self.ok(f"{key}_repo")],
                  torch_losses=[r["losses"] for r in self.ok(f"{key}_torch")])

    def memory(self, case, tag):
        key = f"train{tag}_bf16"
        why = self.not_bf16(f"{key}_repo")
        mem = {side: self.field(f"{key}_{side}", "max_rss_mb") for side in ("repo", "torch")}
        fp32 = self.fp32.get(f"train{tag}_peak_rss_mb", {})
        self.case(case, "MiB", "lower", mem["repo"], mem["torch"], why,
                  note=f"float32: repo {num_text(fp32.get('repo'))} MiB, PyTorch "
                       f"{num_text(fp32.get('torch'))} MiB",
                  torch_fp32=fp32.get("torch"), repo_fp32=fp32.get("repo"))

    def evaluation(self, case, image, batch):
        why = self.not_bf16("eval_bf16_repo")
        rate = {side: per_second(batch, self.seconds(f"eval_bf16_{side}", f"{image}x{batch}"))
                for side in ("repo", "torch")}
        flop = 2 * vgg_macs(image=(image, image))
        frac = {side: self.fraction(value, flop) for side, value in rate.items()}
        fp32 = self.fp32.get(f"eval_{image}_b{batch}", {})
        self.case(case, "images/s", "higher", rate["repo"], rate["torch"], why,
                  ort=fp32.get("onnxruntime"),
                  note=f"onnxruntime: float32 export; vs PyTorch float32 "
                       f"{x_text(ratio(rate['repo'], fp32.get('torch')))}; fraction of bf16 "
                       f"peak: repo {pct_text(frac['repo'])}, PyTorch {pct_text(frac['torch'])}",
                  image=image, batch=batch, torch_fp32=fp32.get("torch"),
                  repo_fp32=fp32.get("repo"), flop_per_image=flop,
                  repo_fraction_of_bf16_peak=None if why else frac["repo"],
                  torch_fraction_of_bf16_peak=frac["torch"])

    def latency(self, case, image):
        why = self.not_bf16("eval_bf16_repo")
        lat = {side: to_ms(self.seconds(f"eval_bf16_{side}", f"{image}x1"))
               for side in ("repo", "torch")}
        fp32 = self.fp32.get("latency_ms", {})
        self.case(case, "ms", "lower", lat["repo"], lat["torch"], why,
                  ort=fp32.get("onnxruntime"), note="onnxruntime: float32 export",
                  image=image, torch_fp32=fp32.get("torch"), repo_fp32=fp32.get("repo"))

    def missing(self, target, case):
        """Why a target has no ratio (one line)."""
        if self.skip:
            return self.skip
        if case is None:
            return "not in this plan (the full run measures it)"
        if case["repo_status"]:
            return case["repo_status"]
        if case["repo"] is None:
            return "this repository's figure is missing (see errors)"
        return f"{PEERS[target.peer]} is missing (see errors)"

    def targets(self):
        out = []
        for target in TARGETS:
            case = self.cases.get(target.case)
            peer = case and case.get(target.peer)
            value = advantage(case["repo"], peer, case["better"]) if case else None
            out.append({"figure": self.names[target.case], "target": target.text,
                        "against": PEERS[target.peer], "minimum": target.minimum,
                        "strict": target.strict, "ratio": value, "met": target.met(value),
                        "not_measured": None if value is not None else self.missing(target,
                                                                                    case)})
        return out

    def processes(self):
        """Per raw key of this repository's bfloat16 processes: the precision it resolved to
        and its detail (oneDNN's bfloat16 ISA, or why float32)."""
        return {key: [r.get("precision"), r.get("precision_detail")]
                for key in ("train_bf16_repo", "train224_bf16_repo", "eval_bf16_repo")
                for r in self.ok(key)[:1]}

    def report(self):
        plan = self.plan
        if not self.skip:
            self.training("train", "", plan.train_image, plan.train_batch)
            if plan.train224:
                self.training("train224", "224", 224, plan.train224_batch)
            self.evaluation("eval", plan.train_image, plan.eval_batch)
            if plan.eval224:
                self.evaluation("eval224", 224, plan.eval224_batch)
            self.latency("latency", plan.latency_image)
            self.memory("memory", "")
            if plan.train224:
                self.memory("memory224", "224")
        targets = self.targets()
        met = [t["met"] for t in targets if t["met"] is not None]
        return {"rows": self.rows,
                "bf16": {"skipped_reason": self.skip, "matmul_peak": self.peak,
                         "repo_processes": self.processes(), "cases": self.cases,
                         "targets": targets, "targets_met": sum(met),
                         "targets_measured": len(met)}}


def summarise_bf16(plan, raw, fp32_figures, skip=None):
    """{"rows": the bfloat16 rows for the CPU table, "bf16": the report's bfloat16 part}."""
    return Bf16Summary(plan, raw, fp32_figures, skip).report()


def bf16_lines(bf16):
    """The bfloat16 part of the run's end in lines: the peak, then each target."""
    if bf16["skipped_reason"]:
        return [f"bfloat16: skipped ({bf16['skipped_reason']})"]
    peak = bf16["matmul_peak"]
    lines = [f"bf16 peak {num_text(peak['peak_gflops'])} GFLOP/s (matrix multiply {peak['n']}: "
             f"PyTorch {num_text(peak['torch_matmul_gflops'])}, this repository's dense kernel "
             f"{num_text(peak['repo_dense_gflops'])}); bfloat16 targets met: "
             f"{bf16['targets_met']} of {bf16['targets_measured']} measured "
             f"({len(bf16['targets'])} in all)"]
    for t in bf16["targets"]:
        verdict = ("not measured: " + t["not_measured"] if t["met"] is None
                   else "met" if t["met"] else "NOT MET")
        lines.append(f"  {t['figure']}: {x_text(t['ratio'])} vs {t['against']} "
                     f"(target {t['target']}): {verdict}")
    return lines


def format_bf16_table(bf16, markdown=False):
    """The bfloat16 cases side by side with every peer, and each target met or not."""
    head = ["figure", "unit", "this repo bf16", "PyTorch bf16 autocast", "vs PyTorch bf16",
            "PyTorch float32", "vs PyTorch float32", "onnxruntime (float32 export)", "vs ORT",
            "target", "met"]
    body = []
    for case in bf16["cases"].values():
        targets = [t for t in bf16["targets"] if t["figure"] == case["figure"]]
        met = ", ".join("n/a" if t["met"] is None else "yes" if t["met"] else "no"
                        for t in targets)
        body.append([case["figure"], case["unit"], num_text(case["repo"]),
                     num_text(case["torch_bf16"]), x_text(case["vs_torch_bf16"]),
                     num_text(case.get("torch_fp32")), x_text(case["vs_torch_fp32"]),
                     num_text(case["onnxruntime"]), x_text(case["vs_onnxruntime"]),
                     ", ".join(t["target"] for t in targets), met])
    return layout(head, body, markdown)
