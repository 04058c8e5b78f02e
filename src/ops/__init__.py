"""Native operators: the oneDNN convolution library built by ``python -m src.ops.build``.

This module must stay importable without importing MindSpore, so that the oneDNN ISA
choice (``preferred_onednn_isa``) can be made before MindSpore first runs oneDNN.
"""
import ctypes
import os

LIB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "libfastconv.so")
DISABLE_ENV = "FAST_CONV"  # FAST_CONV=0 turns the fast convolution off

_load_result = None  # (ctypes.CDLL or None, reason or "")


def fast_conv_disabled():
    """True when the user turned the fast convolution off with FAST_CONV=0."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def load_library():
    """Loads the built library once. Returns (library or None, one-line reason if None)."""
    global _load_result
    if _load_result is None:
        if not os.path.isfile(LIB_PATH):
            _load_result = (None, f"{LIB_PATH} is not built (run: python -m src.ops.build)")
        else:
            try:
                lib = ctypes.CDLL(LIB_PATH)
                for symbol in ("FastConvFwd", "FastConvBwd", "FastConvOneDnnVersion",
                               "FastConvInferPlain", "FastConvInferBlocked",
                               "FastMaxPool2Blocked", "FastUnblock", "FastBlockSize",
                               "FastBnWorkspaceBytes", "FastMomentumUpdate",
                               "FastReferenceKernels"):
                    getattr(lib, symbol)
                lib.FastConvOneDnnVersion.restype = ctypes.c_char_p
                lib.FastBlockSize.restype = ctypes.c_int
                lib.FastBnWorkspaceBytes.restype = ctypes.c_int64
                lib.FastBnWorkspaceBytes.argtypes = [ctypes.c_int64] * 4
                _load_result = (lib, "")
            except (OSError, AttributeError) as exc:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                _load_result = (None, f"cannot load {LIB_PATH}: {text} (rebuild: python -m src.ops.build --force)")
    return _load_result


def library_status():
    """(usable, reason): whether the library is built, loadable and not disabled."""
    if fast_conv_disabled():
        return False, f"disabled by {DISABLE_ENV}=0"
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


def reference_kernels():
    """How many oneDNN primitives the library has built on reference (slow) kernels."""
    lib, reason = load_library()
    if lib is None:
        raise RuntimeError(reason)
    return int(lib.FastReferenceKernels())


def bn_workspace_bytes(shape):
    """Bytes of the ReLU workspace the fused BatchNorm + ReLU kernel keeps for an
    (N, C, H, W) input (oneDNN decides it: about one bit per element)."""
    lib, reason = load_library()
    if lib is None:
        raise RuntimeError(reason)
    size = int(lib.FastBnWorkspaceBytes(*(int(d) for d in shape)))
    if size < 0:
        raise RuntimeError(f"no fused BatchNorm + ReLU for shape {tuple(shape)}")
    return size


def preferred_onednn_isa():
    """The value ONEDNN_MAX_CPU_ISA should take for a network whose convolutions are all
    FastConv2d: "ALL" (no cap: the custom convolutions and the stock pooling/other oneDNN
    kernels use AVX-512) when the fast convolution is usable, else "AVX2" (stock NCHW
    convolutions need the cap to avoid oneDNN's slow reference kernel with AVX-512).

    Call it before MindSpore runs its first oneDNN primitive; the variable is process-wide.
    Any stock convolution left in the network would hit the slow kernel under "ALL".
    """
    usable, _ = library_status()
    return "ALL" if usable else "AVX2"
