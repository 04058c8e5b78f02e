"""The project's native oneDNN kernels for CPU: where the library is, whether it loads and
whether the user allows it. ``python -m src.native.build`` builds it from ``csrc/``;
``src.native.layers`` (convolution cell, blocked VGG chain, dense cell) and
``src.native.optimizer`` (fused momentum) run it; ``src.native.isa`` holds the oneDNN
instruction-set rule and ``src.native.precision`` the CPU precision rule (float32 or
bfloat16).

This package imports no MindSpore, so that the ISA can be chosen before MindSpore first
runs oneDNN.

Environment override (the config key ``native_kernels`` chooses otherwise), read when a
cell or optimizer is created:

    VGG_NATIVE_KERNELS=1|on    everything the config allows (the default; also auto)
    VGG_NATIVE_KERNELS=layers  no blocked chain: per-layer native convolutions and the
                               fused optimizer only (to tell a chain problem from a
                               convolution problem)
    VGG_NATIVE_KERNELS=0|off   MindSpore's own kernels everywhere

When it is unset, the old names still count: ``FAST_CONV=0`` means off and
``FAST_CONV_CHAIN=0`` means layers.

Diagnostics: ``VGG_NATIVE_VERBOSE=1`` prints on stderr the oneDNN implementation each
primitive runs (``jit_bf16:avx512_core_bf16``, ``brg_conv_fwd:avx512_core_amx``, never
``ref``); ``VGG_NATIVE_BF16_LAYOUT=blocked|nhwc`` overrides the layout of bfloat16
activations (default: nChw16c, NHWC on CPUs with AMX), and ``VGG_NATIVE_F32_LAYOUT`` that of
float32 ones (default: nChw16c with AVX-512, NHWC with AVX2 only), to compare the two.
"""
import ctypes
import os

from src.errors import UserError

LIB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "libvgg_native.so")
ENV = "VGG_NATIVE_KERNELS"
OLD_ENVS = (("FAST_CONV", "off"), ("FAST_CONV_CHAIN", "layers"))  # "=0" meant this mode
ON_WORDS = ("1", "true", "yes", "on", "auto")
OFF_WORDS = ("0", "false", "no", "off")
SYMBOLS = ("FastConvFwd", "FastConvBwd", "FastConvOneDnnVersion", "FastConvInferPlain",
           "FastConvInferBlocked", "FastMaxPool2Blocked", "FastUnblock", "FastBlockSize",
           "FastBnWorkspaceBytes", "FastMomentumUpdate", "FastReferenceKernels", "FastBf16Isa",
           "FastDenseFwdBf16", "FastDenseBwdBf16", "FastDenseFwdF32", "FastDenseBwdF32",
           "FastBnStatsUpdate", "FastActivationLayout", "FastBnGeluTrain", "FastBnGeluBwd",
           "FastConvInferPlainGelu", "FastConvInferBlockedGelu")

_load_result = None  # (ctypes.CDLL or None, reason or "")


def env_mode():
    """("on" | "layers" | "off", the setting that chose it, "" for the default) from
    VGG_NATIVE_KERNELS, else from the old FAST_CONV / FAST_CONV_CHAIN."""
    raw = os.environ.get(ENV, "").strip()
    value = raw.lower()
    if value in ON_WORDS:
        return "on", ""
    if value in OFF_WORDS:
        return "off", f"{ENV}={raw}"
    if value == "layers":
        return "layers", f"{ENV}={raw}"
    if value:
        raise UserError(f"{ENV}={raw} is not understood; use 1 (or on), layers, or 0 (or off)")
    for name, mode in OLD_ENVS:
        old = os.environ.get(name, "").strip()
        if old.lower() in OFF_WORDS:
            return mode, f"{name}={old}"
    return "on", ""


def load_library():
    """Loads the built library once. Returns (library or None, one-line reason if None)."""
    global _load_result
    if _load_result is None:
        if not os.path.isfile(LIB_PATH):
            _load_result = (None, f"{LIB_PATH} is not built (run: python -m src.native.build)")
        else:
            try:
                lib = ctypes.CDLL(LIB_PATH)
                for symbol in SYMBOLS:
                    getattr(lib, symbol)
                lib.FastConvOneDnnVersion.restype = ctypes.c_char_p
                lib.FastBlockSize.restype = ctypes.c_int
                lib.FastBnWorkspaceBytes.restype = ctypes.c_int64
                lib.FastBnWorkspaceBytes.argtypes = [ctypes.c_int64] * 7
                lib.FastBf16Isa.restype = ctypes.c_char_p
                lib.FastActivationLayout.restype = ctypes.c_char_p
                lib.FastActivationLayout.argtypes = [ctypes.c_int]
                _load_result = (lib, "")
            except (OSError, AttributeError) as exc:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                _load_result = (None, f"cannot load {LIB_PATH}: {text} "
                                      "(rebuild: python -m src.native.build --force)")
    return _load_result


def library_status():
    """(usable, reason): whether the library is built, loadable and not turned off."""
    mode, setting = env_mode()
    if mode == "off":
        return False, f"disabled by {setting}"
    lib, reason = load_library()
    return lib is not None, reason


def onednn_version():
    """Version of the oneDNN the library runs on ("3.10.1"), or None."""
    lib, _ = load_library()
    return lib.FastConvOneDnnVersion().decode() if lib is not None else None


def block_size():
    """Channel block (16 with AVX-512, 8 with AVX2) of the layout the blocked inference
    chain passes between layers, or 0 when the library is unusable or the CPU has neither.
    Fixes oneDNN's ISA for the process: call it after ONEDNN_MAX_CPU_ISA is settled."""
    usable, _ = library_status()
    return int(load_library()[0].FastBlockSize()) if usable else 0


def activation_layout(precision="float32"):
    """Layout of the blocked chain's activations in `precision` ("nChw16c", "nChw8c" or
    "nhwc"; float32 on AVX2 without AVX-512 is NHWC, see ActivationTag in engine.cc), or ""
    when the library is unusable or the CPU has no AVX2. Fixes oneDNN's ISA, like
    block_size()."""
    usable, _ = library_status()
    if not usable:
        return ""
    return load_library()[0].FastActivationLayout(int(precision == "bfloat16")).decode()


def bf16_isa():
    """The bfloat16 instruction set oneDNN runs with in this process ("avx512_core_bf16",
    "avx512_core_amx", ...), or "" when it has none (the CPU lacks AVX512-BF16 and AMX-BF16,
    or ONEDNN_MAX_CPU_ISA caps oneDNN below them) or the library is unusable. Fixes oneDNN's
    ISA for the process, like block_size()."""
    usable, _ = library_status()
    return load_library()[0].FastBf16Isa().decode() if usable else ""


def reference_kernels():
    """How many oneDNN primitives the library has built on reference (slow) kernels."""
    lib, reason = load_library()
    if lib is None:
        raise RuntimeError(reason)
    return int(lib.FastReferenceKernels())


def bn_workspace_bytes(shape, bf16=False, ghost=0, activation="relu"):
    """Bytes of the workspace the BatchNorm + activation kernel keeps for an (N, C, H, W)
    input of float32 (or, with bf16, bfloat16) activations: the activation's workspace (relu:
    oneDNN's, about one bit per element; gelu: the BatchNorm output, the GELU's input) and,
    with ghost batches of `ghost` images (0: none), one per ghost batch followed by their
    means and variances."""
    lib, reason = load_library()
    if lib is None:
        raise RuntimeError(reason)
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be relu or gelu, got {activation!r}")
    size = int(lib.FastBnWorkspaceBytes(*(int(d) for d in shape), int(bool(bf16)), int(ghost),
                                        int(activation == "gelu")))
    if size < 0:
        raise RuntimeError(f"no BatchNorm + {activation} for shape {tuple(shape)}"
                           + (f" in ghost batches of {ghost}" if ghost else ""))
    return size
