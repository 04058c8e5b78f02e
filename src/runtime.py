"""Sets up the device, the execution mode and, when asked, distributed communication."""
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
    if seed is not None:
        ms.set_seed(seed)
    rank, group_size = (0, 1)
    if distributed:
        rank, group_size = _init_communication(device_target)
    return Runtime(device_target, device_id, rank, group_size)


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
