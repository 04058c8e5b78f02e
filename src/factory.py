"""Turns a Config into the objects the entry points need (network, datasets), so that the
network and the data code never see the config itself."""
import logging

from src import vgg
from src.native.isa import lift_onednn_isa_cap

log = logging.getLogger("vgg")


def network_kwargs(config, num_classes=None):
    """Builder arguments of src/vgg.py taken from a config."""
    return {
        "num_classes": num_classes or config.num_classes,
        "pad_mode": config.pad_mode,
        "padding": config.padding if config.pad_mode == "pad" else 0,
        "has_bias": config.has_bias,
        "initialize_mode": config.initialize_mode,
        "identity_init": config.get("identity_init", False),
        "dropout": config.has_dropout,
        "head": config.get("head", "mlp"),
        "logit_scale": config.get("logit_scale", 1.0),
        "activation": config.get("activation", "relu"),
        "image_size": tuple(config.image_size),
    }


def model_name(config):
    return config.arch + ("_bn" if config.batch_norm else "")


def layer_cells_for(config, device_target):
    """Builder arguments `conv_cell` and `features_cell`: the native cells of
    src/native/layers.py on CPU graph mode when the kernels are built and allowed
    (native_kernels auto/on), MindSpore's own otherwise."""
    from mindspore import nn

    stock = {"conv_cell": nn.Conv2d, "features_cell": nn.SequentialCell}
    if config.native_kernels == "off" or device_target != "CPU" or config.context_mode != "graph":
        return stock
    try:
        from src.native import layers
    except ImportError:
        return stock
    available, reason = layers.native_conv_status()
    if available:
        # every convolution is native: oneDNN reads the ISA when the network first runs
        lift_onednn_isa_cap()
        return {"conv_cell": layers.NativeConv2d, "features_cell": layers.NativeFeatures}
    if config.native_kernels == "on":
        log.warning("native_kernels=on but the oneDNN kernels are not usable (%s); "
                    "using MindSpore's Conv2d", reason)
    return stock


def build_network(config, device_target="CPU", num_classes=None, training=False):
    """The VGG variant the config describes; on CPU in the precision cpu_precision resolves to
    (src/native/precision.py, which logs it in one line). training: the network train.py
    trains (with ghost batch normalisation when ghost_batch_size asks for it; inference and
    checkpoints are the same either way)."""
    builder = getattr(vgg, model_name(config))
    ghost = config.get("ghost_batch_size", 0) if training else 0  # used only with BatchNorm
    net = builder(**layer_cells_for(config, device_target), **network_kwargs(config, num_classes),
                  ghost_batch=ghost)
    if training and net.head == "linear" and config.has_dropout:
        log.info("head=linear: one dense layer, no dropout (has_dropout applies to the mlp head)")
    if device_target == "CPU":
        from src.native.precision import apply_cpu_precision

        apply_cpu_precision(net, config.get("cpu_precision", "float32"))
    return net


def whiten_stem(net, config, log, resuming=False):
    """stem_whitening > 0: the first convolution set from the patch statistics of the first
    stem_whitening training images and frozen (src/whitening.py); when resuming, only frozen,
    as the checkpoint holds its filters."""
    from src.dataset import first_training_images
    from src.whitening import apply_patch_whitening, first_convolution

    if resuming:
        first_convolution(net).weight.requires_grad = False
        log.info("stem whitening: the first convolution frozen, its filters from the checkpoint")
        return
    images = first_training_images(config.dataset, config.data_dir, config.stem_whitening,
                                   image_size=tuple(config.image_size),
                                   num_classes=config.num_classes,
                                   list_file=config.data_list or None)
    filters = apply_patch_whitening(net, images)
    log.info("stem whitening: %d filters of the first convolution set from the patches of %d "
             "training images, the convolution frozen", filters, len(images))


def plain_epoch(config, epoch):
    """True for the last `no_aug_epochs` epochs of the run (epoch counted from 0): they train on
    the images as they are, flip only, and unmixed."""
    return epoch >= config.max_epoch - config.get("no_aug_epochs", 0)


def build_dataset(config, training, runtime=None, epoch=0, start_step=0, batch_size=None,
                  data_dir=None):
    """Training or evaluation batches for this process's shard; a training epoch that
    plain_epoch names gets no crop (CIFAR-10), auto_augment or random_erasing."""
    from src.dataset import create_dataset

    if data_dir is None:
        data_dir = config.data_dir if training else (config.eval_data_dir or config.data_dir)
    rank, group_size = (runtime.rank, runtime.group_size) if runtime else (0, 1)
    plain = training and plain_epoch(config, epoch)
    return create_dataset(
        config.dataset, data_dir, batch_size=batch_size or config.batch_size,
        training=training, image_size=tuple(config.image_size),
        num_classes=config.num_classes, num_shards=group_size, shard_id=rank,
        num_parallel_workers=config.num_workers or None, seed=config.seed, epoch=epoch,
        start_step=start_step, list_file=config.data_list or None,
        skip_corrupt=config.skip_corrupt,
        auto_augment="none" if plain else config.get("auto_augment", "none"),
        random_erasing=0.0 if plain else config.get("random_erasing", 0.0),
        crop_padding=0 if plain else config.get("crop_padding", 4),
        alternate_flip=config.get("alternate_flip", False),
        crop_padding_mode=config.get("crop_padding_mode", "zero"))
