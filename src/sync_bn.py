"""SyncBatchNorm for distributed GPU/Ascend training: BatchNorm statistics computed over the
whole global batch instead of each device's share.

MindSpore's nn.SyncBatchNorm synchronises over HCCL (Ascend) or NCCL (GPU); it has no CPU
form, so sync_bn is refused on CPU. The converted cells keep the BatchNorm parameter names
and values, so checkpoints load into the plain network (eval.py, export.py) unchanged.
"""
from src.errors import UserError


def convert_to_sync_batchnorm(net, process_groups=None):
    """Replace every nn.BatchNorm2d of net.features by an nn.SyncBatchNorm with the same
    settings, parameter names and values. process_groups: nn.SyncBatchNorm's (None: all
    devices). Returns how many cells were replaced."""
    import mindspore as ms
    from mindspore import nn

    replaced = 0
    for index, cell in enumerate(net.features):
        if type(cell) is not nn.BatchNorm2d:  # pylint: disable=unidiomatic-typecheck
            continue
        synced = nn.SyncBatchNorm(cell.num_features, eps=cell.eps,
                                  momentum=1.0 - cell.momentum,  # stored as 1 - momentum
                                  process_groups=process_groups)
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            getattr(synced, name).set_data(ms.Tensor(getattr(cell, name).asnumpy().copy()))
        net.features[index] = synced
        replaced += 1
    return replaced


def apply_sync_bn(net, config, runtime, log):
    """net with synchronised BatchNorm when config.sync_bn asks for it and can have it."""
    if not config.get("sync_bn", False):
        return net
    if runtime.device_target == "CPU":
        raise UserError("sync_bn: MindSpore has no SyncBatchNorm on CPU (GPU and Ascend "
                        "only); set --sync_bn=False")
    if not config.batch_norm:
        raise UserError("sync_bn: the network has no BatchNorm (batch_norm=False); set "
                        "--sync_bn=False or --batch_norm=True")
    if runtime.group_size == 1:
        log.info("sync_bn: one device, nothing to synchronise; plain BatchNorm")
        return net
    count = convert_to_sync_batchnorm(net)
    log.info("sync_bn: %d BatchNorm layers synchronised over %d devices", count,
             runtime.group_size)
    return net
