"""Train a VGG network: python train.py --config_path=cifar10_config.yaml --data_dir=DATA"""
import contextlib
import json
import os
import signal
import time

# Ctrl-C is handled between training steps (see StopRequest in src/trainer.py); the block
# must be in place before MindSpore starts its threads, which inherit it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

from model_utils.config import save_config  # noqa: E402
from model_utils.entry import run_with_config  # noqa: E402
from src import checkpoint as ckpt
from src.class_names import CIFAR10_META_FILE, CLASS_NAMES_FILE, cifar10_meta_names
from src.cli import run_entry
from src.dataset import cifar10_folder, find_classes, imagenet_folder
from src.errors import UserError
from src.factory import build_dataset, build_network, model_name, whiten_stem
from src.momentum import freeze_batchnorm_scales
from src.profiling import StepProfiler
from src.progress import format_duration, setup_logger
from src.runtime import setup_runtime
from src.sync_bn import apply_sync_bn
from src.trainer import RunPaths, Trainer


def prepare_run_folder(config, runtime):
    """The run folder (ckpt_path) and this rank's checkpoint folder, checked writable."""
    run_dir = os.path.abspath(config.ckpt_path)
    per_rank = config.is_distributed and not config.is_save_on_master
    ckpt_dir = os.path.join(run_dir, f"rank_{runtime.rank}") if per_rank else run_dir
    writes = per_rank or runtime.is_master
    for folder in {run_dir, ckpt_dir}:
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".write-test-{os.getpid()}")
            with open(probe, "w", encoding="utf-8"):
                pass
            os.remove(probe)
        except OSError as err:
            raise UserError(f"output folder {folder} is not writable ({err.strerror}); "
                            "set --ckpt_path to a writable folder") from None
    return RunPaths(run_dir, ckpt_dir, model_name(config), writes)


def find_resume_checkpoint(config, paths, log):
    if not config.resume:
        return None
    if config.resume != "auto":
        return config.resume
    found = ckpt.list_checkpoints(paths.ckpt_dir)
    if not found:
        log.info("resume=auto: no checkpoint in %s yet, starting from scratch", paths.ckpt_dir)
        return None
    return found[-1]


def load_pretrained(net, config, log):
    entries = ckpt.read_checkpoint(config.pre_trained)
    skipped = ckpt.load_weights(net, entries, config.pre_trained, config.reinit_classifier)
    log.info("loaded pre-trained weights from %s", config.pre_trained)
    if skipped:
        log.info("re-initialised for %d classes (not loaded): %s", config.num_classes,
                 ", ".join(skipped))


def save_class_names(config, paths, log):
    """Class names in index order to class_names.json, for eval, export and predict: the class
    folders of folder-mode ImageNet-style data (they must match num_classes), or the names in
    the CIFAR-10 release's batches.meta.txt when it is there."""
    if config.dataset == "cifar10":
        names = cifar10_class_names(config, log)
    elif not config.data_list:
        names = folder_class_names(config)
    else:
        names = None
    if not names:
        return
    path = os.path.join(paths.run_dir, CLASS_NAMES_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(names, handle, indent=1)
    shown = ", ".join(f"{i}={name}" for i, name in enumerate(names[:20]))
    log.info("classes: %s%s (saved to %s)", shown, ", ..." if len(names) > 20 else "", path)


def folder_class_names(config):
    folder = imagenet_folder(config.data_dir, training=True)
    classes = find_classes(folder)
    if len(classes) != config.num_classes:
        raise UserError(f"{folder} has {len(classes)} class folders but num_classes is "
                        f"{config.num_classes}; set --num_classes={len(classes)}")
    return classes


def cifar10_class_names(config, log):
    """batches.meta.txt's names; none (logged: the names are optional) when it cannot be read
    or lists another count than num_classes."""
    folder = cifar10_folder(config.data_dir, training=True)
    try:
        names = cifar10_meta_names(folder)
    except UserError as err:
        log.info("%s; classes are shown by index", err)
        return None
    if names is not None and len(names) != config.num_classes:
        log.info("%s lists %d class names but num_classes is %d: classes are shown by index",
                 os.path.join(folder, CIFAR10_META_FILE), len(names), config.num_classes)
        return None
    return names


def staged_config_yaml(config, paths, runtime):
    """The resolved config as YAML text for the checkpoints. It is staged under a private
    name: the run folder's config.yaml (which describes the checkpoints there) is replaced
    only once the data and checkpoints have been checked."""
    if not runtime.is_master:
        return ""
    staged = save_config(config, paths.run_dir, name=f".config-{os.getpid()}.yaml")
    with open(staged, encoding="utf-8") as handle:
        text = handle.read()
    os.remove(staged)
    return text


def make_profiler(config, runtime, paths, log):
    """A StepProfiler writing to <run folder>/profile when enable_profiling is set."""
    if not config.enable_profiling:
        return None
    return StepProfiler(os.path.join(paths.run_dir, "profile"), runtime.rank,
                        runtime.device_target, log)


def make_eval_fn(config, runtime):
    if not config.eval_interval:
        return None
    # built now so its files are checked before training; the first evaluation uses it
    checked = [build_dataset(config, training=False, runtime=runtime)]

    def eval_fn():
        return checked.pop() if checked else build_dataset(config, training=False,
                                                           runtime=runtime)
    return eval_fn


def check_train_keys(config):
    """Key combinations that only training refuses (eval.py reads pre_trained as the
    checkpoint to evaluate)."""
    if config.pre_trained and config.stem_whitening:
        raise UserError("config keys 'pre_trained' and 'stem_whitening' both set the first "
                        "convolution; set --stem_whitening=0 to start from pre_trained")
    ghost, batch = config.ghost_batch_size, config.batch_size
    if ghost and batch % ghost:
        raise UserError(f"config key 'ghost_batch_size' is {ghost}; it must divide batch_size "
                        f"({batch}), or set --ghost_batch_size=0")


def train(config):
    check_train_keys(config)
    runtime = setup_runtime(config.device_target, config.device_id, config.context_mode,
                            config.is_distributed, seed=config.seed)
    paths = prepare_run_folder(config, runtime)
    log = setup_logger(paths.run_dir, runtime.rank)
    config_yaml = staged_config_yaml(config, paths, runtime)
    log.info("device %s, rank %d of %d, run folder %s", runtime.device_target, runtime.rank,
             runtime.group_size, paths.run_dir)

    if runtime.is_master:
        save_class_names(config, paths, log)
    first = build_dataset(config, training=True, runtime=runtime)
    steps_per_epoch = first.get_dataset_size()
    profiler = make_profiler(config, runtime, paths, log)

    def make_dataset(epoch, start_step):
        if epoch == 0 and start_step == 0:
            dataset = first
        else:
            dataset = build_dataset(config, training=True, runtime=runtime, epoch=epoch,
                                    start_step=start_step)
        return profiler.wrap(dataset) if profiler else dataset

    eval_fn = make_eval_fn(config, runtime)
    net = apply_sync_bn(build_network(config, runtime.device_target, training=True), config,
                        runtime, log)
    if config.ghost_batch_size:
        log.info("ghost batch normalisation: BatchNorm statistics over each run of %d of the %d "
                 "images of a batch", config.ghost_batch_size, config.batch_size)
    resume = find_resume_checkpoint(config, paths, log)
    if config.pre_trained:
        load_pretrained(net, config, log)
    elif config.stem_whitening:
        whiten_stem(net, config, log, resuming=bool(resume))
    if config.freeze_bn_scale:
        log.info("BatchNorm scales frozen: %d gamma parameters kept at their start value",
                 freeze_batchnorm_scales(net))
    trainer = Trainer(config, runtime, net, make_dataset, steps_per_epoch, paths, log,
                      config_yaml, eval_fn)
    if resume:
        trainer.resume_from(resume)
    if runtime.is_master:
        save_config(config, paths.run_dir)
    remaining = config.max_epoch * trainer.steps_per_epoch - trainer.position.global_step
    start = time.perf_counter()
    with profiler.recording(remaining) if profiler else contextlib.nullcontext():
        trainer.train()
    log.info("training finished in %s%s%s; checkpoints in %s",
             format_duration(time.perf_counter() - start), " since the resume" if resume else "",
             best_summary(trainer.evaluator), paths.ckpt_dir)


def best_summary(evaluator):
    """'; best top-1 0.8824 after epoch 10 (EMA weights)' once the run has evaluated (the
    best of the run folder: a resumed run starts from the one <arch>-best.ckpt holds)."""
    if not evaluator.best_epoch:
        return ""
    ema = " (EMA weights)" if evaluator.ema.on else ""
    return f"; best top-1 {evaluator.best_acc:.4f} after epoch {evaluator.best_epoch}{ema}"


def main():
    run_with_config(train)


if __name__ == "__main__":
    run_entry(main)
