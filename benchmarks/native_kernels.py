"""The benchmarks' one door to the project's native oneDNN kernels (the `src.native` package):
its name, build command, config key and environment switch, and the few calls the workers
make. No other module under benchmarks/ imports the native layer, so a rename is one line here.

Importing this module imports nothing of the repository: the package (and with its cells,
MindSpore) is loaded only by the calls that need it, in the workers that run this repository.
"""
import importlib

PACKAGE = "src.native"
BUILD_MODULE = PACKAGE + ".build"     # `python -m src.native.build` compiles the kernels
CONFIG_KEY = "native_kernels"         # auto | on | off in the YAML configs
PRECISION_KEY = "cpu_precision"       # float32 | bfloat16 | auto: bfloat16 runs on these kernels
ENV_SWITCH = "VGG_NATIVE_KERNELS"     # =0: MindSpore's own kernels, whatever the config says
OLD_ENV_SWITCH = "FAST_CONV"          # its former name, still honoured when ENV_SWITCH is unset


def config_option(value):
    """The command-line override choosing the kernels: `--native_kernels=off`."""
    return f"--{CONFIG_KEY}={value}"


def precision_option(value):
    """The command-line override choosing the CPU precision: `--cpu_precision=bfloat16`."""
    return f"--{PRECISION_KEY}={value}"


def with_stock_kernels(env):
    """`env` (a dict, changed in place and returned) with the native kernels switched off."""
    env[ENV_SWITCH] = "0"
    return env


def with_native_kernels(env):
    """`env` (changed in place and returned) without any switch that turns them off."""
    env.pop(ENV_SWITCH, None)
    env.pop(OLD_ENV_SWITCH, None)
    return env


def _module(name=""):
    return importlib.import_module(f"{PACKAGE}.{name}" if name else PACKAGE)


def cap_onednn_isa():
    """What every entry point does first (src.cli.run_entry): cap oneDNN's instruction set for
    MindSpore's convolutions unless the user chose one (building a network of native cells
    lifts the cap again). Call it before MindSpore first runs oneDNN."""
    _module("isa").cap_onednn_isa()


def lift_onednn_isa_cap():
    """No cap (unless the user chose one): for a process that runs the native kernels alone,
    as building a network of native cells does. Call it before MindSpore first runs oneDNN."""
    _module("isa").lift_onednn_isa_cap()


def onednn_version():
    """Version of the oneDNN the native library runs on, or None when it does not load."""
    return _module().onednn_version()


def native_conv_cell():
    """(the native convolution cell class or None, one-line reason when None), for cells
    created now (set MindSpore's context first)."""
    layers = _module("layers")
    usable, reason = layers.native_conv_status()
    return (layers.NativeConv2d if usable else None), reason


def count_native_convolutions(net):
    """(convolutions on the native path, all convolution cells) of a network."""
    convs = [cell for _, cell in net.cells_and_names() if hasattr(cell, "conv2d")]
    return sum(1 for c in convs if getattr(c, "uses_fast_path", False)), len(convs)


def network_precision(net):
    """(the precision the VGG `net` computes in on CPU, "float32" or "bfloat16"; detail): for
    bfloat16 oneDNN's bfloat16 instruction set, for float32 why not bfloat16 (one line)."""
    if getattr(getattr(net, "features", None), "precision", "float32") == "bfloat16":
        return "bfloat16", _module().bf16_isa()
    usable, reason = _module("precision").bfloat16_status(net)
    return "float32", reason if not usable else f"{PRECISION_KEY}=float32"


def bf16_isa():
    """oneDNN's bfloat16 instruction set in this process ("avx512_core_bf16", ...), or ""
    when it has none (no such CPU flags, or ONEDNN_MAX_CPU_ISA caps oneDNN below them)."""
    return _module().bf16_isa()


def activation_layout(precision="float32"):
    """The native chain's activation layout in `precision` in this process ("nChw16c",
    "nChw8c", "nhwc"), or "" without the library."""
    return _module().activation_layout(precision)


def native_dense_cell(in_channels, out_channels, precision="bfloat16"):
    """The native dense cell (oneDNN inner product, float32 in and out, computing in
    `precision`), created now: set MindSpore's context first."""
    return _module("layers").NativeDense(in_channels, out_channels, precision=precision)
