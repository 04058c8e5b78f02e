"""Sets up the device, the execution mode and, when asked, distributed communication; hands
the C heap's free pages back to the system after graph compilation."""
import contextlib
import ctypes
import ctypes.util
import io
import os
from dataclasses import dataclass

from src.errors import UserError

# Environment variables through which launchers (msrun, Ascend rank-table scripts, mpirun)
# tell a process its place in a job.
RANK_VARIABLES = ("RANK_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK_ID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


@dataclass(frozen=True)
class Runtime:
    device_target: str
    device_id: int
    rank: int = 0
    group_size: int = 1

    @property
    def is_master(self):
        return self.rank == 0


def _launcher_local_rank():
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def _pick_device_id(device_target, device_id, distributed):
    """A launcher's DEVICE_ID (Ascend rank tables) or local rank wins over the config value."""
    if device_target == "CPU":
        return 0
    if os.environ.get("DEVICE_ID", "").isdigit():
        return int(os.environ["DEVICE_ID"])
    if distributed:
        local = _launcher_local_rank()
        if local is not None:
            return local
    return device_id


def setup_runtime(device_target="CPU", device_id=0, mode="graph", distributed=False,
                  seed=None):
    """Configure MindSpore for this process and return its Runtime (rank 0 of 1 alone).

    The oneDNN ISA cap for CPU convolutions is set before this, when the entry point starts
    (src.cli.run_entry calls src/native/isa.py's cap_onednn_isa before main).
    """
    import mindspore as ms

    if device_target not in ("CPU", "GPU", "Ascend"):
        raise UserError(f"device_target '{device_target}' is not one of CPU, GPU, Ascend")
    if mode not in ("graph", "pynative"):
        raise UserError(f"context_mode '{mode}' is not one of graph, pynative")
    device_id = _pick_device_id(device_target, device_id, distributed)
    try:
        ms.set_device(device_target, device_id)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"device_target {device_target} (device {device_id}) is not "
                        f"usable here: {str(err).splitlines()[0]}") from None
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if mode == "pynative":
        settle_numpy_bridge()
    if seed is not None:
        ms.set_seed(seed)
    rank, group_size = (0, 1)
    if distributed:
        rank, group_size = _init_communication(device_target)
    return Runtime(device_target, device_id, rank, group_size)


def settle_numpy_bridge():
    """Take MindSpore's one failing NumPy C-API import out of the way.

    MindSpore 2.10's C++ extension is built against NumPy 1.x. Under NumPy 2 its lazy import of
    the NumPy C API fails once, and the first eager tensor operation that triggers it (e.g.
    ``tensor * 0.5`` or ``tensor * mask`` in PyNative mode) raises SystemError; every later
    operation runs. Running one such operation here, and absorbing that error and the message
    NumPy writes to stderr with it, keeps it from stopping the first training step in PyNative
    mode (graph mode compiles its products and never meets it). True when the error was met;
    MindSpore still logs one "Numpy init failed" warning."""
    import mindspore as ms
    import numpy as np

    probe = ms.Tensor(np.ones(1, np.float32))
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            probe * 0.5
        except SystemError:
            return True
    return False


def _init_communication(device_target):
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except (RuntimeError, ValueError) as err:
        raise UserError("is_distributed=True but distributed communication could not start "
                        f"({str(err).splitlines()[0]}); launch with msrun, mpirun or "
                        "scripts/run_distribute_train*.sh") from None
    rank, group_size = get_rank(), get_group_size()
    ms.reset_auto_parallel_context()
    # Gradients are all-reduced in 64 MB buckets, which suits every VGG variant (the
    # upstream index list [2, 18] fits one layer layout only).
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=group_size,
                                 comm_fusion={"allreduce": {"mode": "size", "config": 64}})
    return rank, group_size


_malloc_trim = []  # [glibc's malloc_trim or None], looked up once


def release_freed_heap():
    """Return the free pages of the C heap to the system (glibc's ``malloc_trim(0)``, which
    also releases free pages in the middle of the heap); True when it could.

    Graph compilation allocates and frees about 110 MiB of small objects (VGG16-BN's train
    step); glibc keeps the freed pages resident, so they would count in the process's peak
    memory for the rest of training. About 40 MiB of them are whole free pages that this
    returns; the rest share pages with objects that live on. A no-op (False) where the C
    library is not glibc."""
    if not _malloc_trim:
        try:
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            trim = None
        _malloc_trim.append(trim)
    if _malloc_trim[0] is None:
        return False
    _malloc_trim[0](0)
    return True
