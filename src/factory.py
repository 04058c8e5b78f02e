"""Turns a Config into the objects the entry points need (network, datasets), so that the
network and the data code never see the config itself."""
import logging
import os

from src import vgg

log = logging.getLogger("vgg")


def network_kwargs(config, num_classes=None):
    """Builder arguments of src/vgg.py taken from a config."""
    return {
        "num_classes": num_classes or config.num_classes,
        "pad_mode": config.pad_mode,
        "padding": config.padding if config.pad_mode == "pad" else 0,
        "has_bias": config.has_bias,
        "initialize_mode": config.initialize_mode,
        "dropout": config.has_dropout,
        "image_size": tuple(config.image_size),
    }


def model_name(config):
    return config.arch + ("_bn" if config.batch_norm else "")


def conv_cell_for(config, device_target):
    """The convolution cell to use: the project's oneDNN kernels on CPU graph mode when they
    are built and allowed (fast_conv auto/on), MindSpore's own otherwise."""
    from mindspore import nn

    if config.fast_conv == "off" or device_target != "CPU" or config.context_mode != "graph":
        return nn.Conv2d
    try:
        from src import fast_conv
    except ImportError:
        return nn.Conv2d
    available, reason = fast_conv.fast_conv_status()
    if available:
        _lift_isa_cap()
        return fast_conv.FastConv2d
    if config.fast_conv == "on":
        log.warning("fast_conv=on but the oneDNN kernels are not usable (%s); "
                    "using MindSpore's Conv2d", reason)
    return nn.Conv2d


def _lift_isa_cap():
    """Every convolution now runs through the project's kernels, so the AVX2 cap that keeps
    stock convolutions off oneDNN's reference kernel is no longer needed and only slows the
    other oneDNN kernels (pooling among them). oneDNN reads the variable when it first runs,
    which is after the network is built; a user's own setting is kept."""
    import src

    if not src.ISA_CHOSEN_BY_USER:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "ALL"


def build_network(config, device_target="CPU", num_classes=None):
    """The VGG variant the config describes."""
    builder = getattr(vgg, model_name(config))
    return builder(conv_cell=conv_cell_for(config, device_target),
                   **network_kwargs(config, num_classes))


def build_dataset(config, training, runtime=None, epoch=0, start_step=0, batch_size=None,
                  data_dir=None):
    """Training or evaluation batches for this process's shard."""
    from src.dataset import create_dataset

    if data_dir is None:
        data_dir = config.data_dir if training else (config.eval_data_dir or config.data_dir)
    rank, group_size = (runtime.rank, runtime.group_size) if runtime else (0, 1)
    return create_dataset(
        config.dataset, data_dir, batch_size=batch_size or config.batch_size,
        training=training, image_size=tuple(config.image_size),
        num_classes=config.num_classes, num_shards=group_size, shard_id=rank,
        num_parallel_workers=config.num_workers or None, seed=config.seed, epoch=epoch,
        start_step=start_step, list_file=config.data_list or None,
        skip_corrupt=config.skip_corrupt)
