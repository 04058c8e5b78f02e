"""The CPU precision rule (config key ``cpu_precision``): float32, or bfloat16 through the
native kernels where oneDNN runs bfloat16 instructions (AVX512-BF16 or AMX-BF16), and the one
log line that says which was chosen and why.

bfloat16 covers the blocked chain of ``NativeFeatures`` (convolutions, BatchNorm + ReLU or
GELU, max pooling; training and inference) and the classifier's dense layers
(``NativeDense``). What stays float32: the parameters (master weights) and so the
checkpoints, the optimizer and its state, the weight gradients, BatchNorm's statistics,
scale and shift, the loss. bfloat16 has float32's exponent range, so it needs no loss scale
(a fixed ``loss_scale`` from the config still applies, as in float32).
"""
import logging
import os

from src.native import bf16_isa
from src.native.isa import ISA_VAR

CHOICES = ("float32", "bfloat16", "auto")
log = logging.getLogger("vgg")


def bfloat16_status(net):
    """(usable, reason): whether the VGG `net` can run in bfloat16 in this process; the
    reason (one line) when it cannot."""
    from src.native.layers import NativeFeatures, native_conv_status

    features = getattr(net, "features", None)
    if not isinstance(features, NativeFeatures):
        # the reason names the way out: most often a library not built yet, which also
        # slows float32 training
        usable, why = native_conv_status()
        why = why if not usable else "native_kernels is off"
        return False, f"the network runs MindSpore's own kernels ({why})"
    if not features.blocked_inference:
        return False, f"the native blocked chain is not used ({features.inference_reason})"
    isa = bf16_isa()
    if not isa:
        return False, f"no bfloat16 instructions for oneDNN ({_why_no_bf16_isa()})"
    return True, isa


def _why_no_bf16_isa():
    flags = cpu_flags()
    if flags and not flags & {"avx512_bf16", "amx_bf16"}:
        return "the CPU has neither AVX512-BF16 nor AMX-BF16"
    cap = os.environ.get(ISA_VAR, "")
    if cap and cap != "ALL":
        return f"oneDNN is capped below them by {ISA_VAR}={cap}"
    if flags:
        return f"oneDNN's instruction set was fixed before {ISA_VAR} was lifted"
    return "the CPU's flags are unknown"


def cpu_flags():
    """The CPU's feature flags (Linux /proc/cpuinfo), or an empty set where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def apply_cpu_precision(net, requested):
    """Run the VGG `net` (built for CPU) in the precision `requested` ("float32", "bfloat16"
    or "auto") resolves to here, and log one line saying which and why. Returns "float32" or
    "bfloat16". Call it before the network first runs."""
    if requested not in CHOICES:
        raise ValueError(f"cpu_precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "float32":
        log.info("precision: float32 on CPU (cpu_precision=float32)")
        return "float32"
    usable, detail = bfloat16_status(net)
    if not usable:
        report = log.warning if requested == "bfloat16" else log.info
        report("precision: float32 on CPU (cpu_precision=%s, but bfloat16 is not available: %s)",
               requested, detail)
        return "float32"
    net.features.set_precision("bfloat16")
    dense = 0
    if getattr(net, "include_top", False):
        from src.native.layers import use_native_dense

        dense = use_native_dense(net.classifier)
    log.info("precision: bfloat16 on CPU (cpu_precision=%s, oneDNN %s): %s; weights, optimizer, "
             "weight gradients, BatchNorm statistics and loss in float32; no loss scale needed "
             "for bfloat16", requested, detail, _covered(net.features, dense))
    return "bfloat16"


def _covered(features, dense):
    """What computes in bfloat16, as a phrase for the log line."""
    if features.blocked_training:
        bn_act = "BatchNorm+" + {"gelu": "GELU"}.get(features.activation, "ReLU")
        parts = ["convolutions", bn_act, "pooling"] + (["dense layers"] if dense else [])
        return f"{', '.join(parts[:-1])} and {parts[-1]} in bfloat16"
    parts = ["inference convolutions", "pooling"] + (["dense layers"] if dense else [])
    return (f"{', '.join(parts[:-1])} and {parts[-1]} in bfloat16; training runs the "
            f"convolutions in float32 ({features.training_reason})")
