"""The oneDNN instruction-set rule, in one place: which ``ONEDNN_MAX_CPU_ISA`` the process
runs with.

On x86 CPUs with AVX-512, MindSpore 2.10's oneDNN runs stock NCHW convolutions on its
reference kernel (about 60x slower); capped at AVX2 it picks im2col+GEMM instead. The
project's native kernels have no such problem and gain from AVX-512, so the cap is lifted
when every convolution of the network is native. A value the user set is never changed.

oneDNN reads the variable once, when MindSpore first runs it: ``cap_onednn_isa()`` is called
at the start of every entry point (``src.cli.run_entry`` does it before ``main``), and
``lift_onednn_isa_cap()`` when the network is built, before it first runs.
"""
import os

from src.native import library_status

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
_chosen_by_user = None  # whether ISA_VAR was set before this module first touched it


def isa_chosen_by_user():
    """True when the user set ONEDNN_MAX_CPU_ISA (remembered from the first call here)."""
    global _chosen_by_user
    if _chosen_by_user is None:
        _chosen_by_user = ISA_VAR in os.environ
    return _chosen_by_user


def cap_onednn_isa():
    """Cap oneDNN at AVX2 for stock convolutions unless the user chose an ISA (or the cap
    was already lifted). Call it before MindSpore runs its first oneDNN primitive."""
    if not isa_chosen_by_user():
        os.environ.setdefault(ISA_VAR, "AVX2")


def lift_onednn_isa_cap():
    """No cap (ALL): for a network whose convolutions all run through the native kernels,
    where the cap would only slow the other oneDNN kernels (pooling among them). A user's
    own setting is kept."""
    if not isa_chosen_by_user():
        os.environ[ISA_VAR] = "ALL"


def preferred_onednn_isa():
    """The value ONEDNN_MAX_CPU_ISA should take for a network whose convolutions are all
    native cells: "ALL" when the native kernels are usable, else "AVX2" (stock NCHW
    convolutions need the cap). Any stock convolution left in the network would hit the
    slow kernel under "ALL"."""
    usable, _ = library_status()
    return "ALL" if usable else "AVX2"
