"""Training: optimiser and train step from a config, and the epoch loop (class Trainer) that
checkpoints, resumes exactly, logs progress and stops cleanly on a bad loss or Ctrl-C."""
import math
import os
import signal
import time

import numpy as np

from src.errors import UserError
from src.factory import plain_epoch
from src.lr_schedule import learning_rates
from src.mixing import mixer_from_config, one_hot
from src.momentum import (
    decayed_momentum_class,
    fused_momentum_class,
    is_batchnorm_shift,
    nesterov_momentum_class,
    split_parameter_groups,
)
from src.progress import MetricsCSV, StepTimer, format_duration, plot_metrics
from src.train_loss import DropoutMasks, create_loss_cell, uses_dropout
from src.training_checkpoints import (
    Position,
    RunPaths,  # noqa: F401  (train.py imports it from here)
    TrainingCheckpoints,
    restore_train_state,  # noqa: F401  (tests import it from here)
)
from src.training_ema import TrainingEMA, lookahead_from_config, training_state
from src.training_eval import TrainingEvaluator


def _fused_optimizer_usable(config, device_target):
    """Whether the config and this process allow the native optimizer kernel."""
    from src.native.optimizer import fused_momentum_usable

    return fused_momentum_usable(device_target, config.context_mode, config.native_kernels)


def build_optimizer(net, config, lr_per_step, loss_scale, device_target="CPU"):
    """Momentum SGD with per-group weight decay and learning rate (the features and the
    BatchNorm shifts may have their own factors)."""
    import mindspore as ms

    groups, decay_by_name = [], {}
    groups_by_kind = split_parameter_groups(net, config.freeze_features)
    shift_scale = config.get("bn_bias_lr_scale", 1.0)
    for (is_feature, decayed), params in groups_by_kind.items():
        scale = config.features_lr_scale if is_feature else 1.0
        apart = [shift_scale != 1.0 and is_batchnorm_shift(p) for p in params]
        for subset, factor in (([p for p, a in zip(params, apart) if not a], 1.0),
                               ([p for p, a in zip(params, apart) if a], shift_scale)):
            if subset:
                groups.append({"params": subset,
                               "lr": ms.Tensor(lr_per_step * scale * factor, ms.float32)})
        decay_by_name.update((p.name, config.weight_decay if decayed else 0.0) for p in params)
    if not groups:
        raise UserError("nothing to train: every parameter is frozen")
    groups.append({"order_params": net.trainable_params()})
    rates = ms.Tensor(lr_per_step, ms.float32)
    fused = _fused_optimizer_usable(config, device_target)
    nesterov = bool(config.get("nesterov", False))
    if fused:
        return fused_momentum_class()(groups, rates, config.momentum, loss_scale, decay_by_name,
                                      nesterov=nesterov)
    cls = nesterov_momentum_class() if nesterov else decayed_momentum_class()
    return cls(groups, rates, config.momentum, loss_scale, decay_by_name)


def choose_precision(config, device_target, log):
    """(amp_level, loss_scale_type) that will actually be used, logged when it differs."""
    amp_level, scale_type = config.amp_level, config.loss_scale_type
    if device_target == "CPU":
        # the CPU precision (float32 or bfloat16) is cpu_precision's, logged with the network
        if amp_level != "O0":
            log.info("amp_level %s ignored on CPU (float16 is slower than float32 there; "
                     "bfloat16 is chosen by cpu_precision)", amp_level)
        if scale_type == "dynamic":
            log.info("loss scale: fixed %.1f on CPU (dynamic loss scaling is not supported "
                     "there; float32 needs none)", config.loss_scale)
        return "O0", "fixed"
    log.info("precision: amp_level %s, %s loss scale %.1f", amp_level, scale_type,
             config.loss_scale)
    return amp_level, scale_type


def build_train_step(net, config, lr_per_step, device_target, log):
    """The train step for this device: the precision choose_precision settles on, composed
    by compose_train_step."""
    amp_level, scale_type = choose_precision(config, device_target, log)
    return compose_train_step(net, config, lr_per_step, device_target, amp_level, scale_type)


def mixed_precision(net, amp_level, dtype=None):
    """``ms.amp.auto_mixed_precision(net, amp_level)``: the VGG converted in place, wrapped in
    a cell that casts its output to float32.

    dtype is the low-precision type (float16 when None). ``ms.float32`` builds the same cells
    and wrappers with every low-precision cast made a float32 one: how CPU, where float16 is
    slow and would blur what is compared, runs the GPU/Ascend composition to check it.
    """
    import mindspore as ms

    as_float32 = dtype == ms.float32
    low = ms.float16 if dtype is None or as_float32 else dtype
    wrapped = ms.amp.auto_mixed_precision(net, amp_level, low)
    if as_float32 and wrapped is not net:
        wrapped.to_float(ms.float32)
        for _, cell in wrapped.cells_and_names():
            if type(cell).__name__ == "_OutputTo16":  # what O2 puts around BatchNorm
                cell.dtype = ms.float32
    return wrapped


def compose_train_step(net, config, lr_per_step, device_target, amp_level, scale_type,
                       amp_dtype=None, make_optimizer=None):
    """Train step for an explicit (amp_level, scale_type): mixed-precision wrapper, loss cell
    (masked dropout when the VGG has dropout), loss-scale cell and optimizer.

    fixed: TrainOneStepCell backpropagates ``loss_scale`` as the loss gradient, and the
    optimizer, built with the same loss_scale, divides the gradients by it (nn.Optimizer's
    scale_grad) inside its update. dynamic: TrainOneStepWithLossScaleCell divides the
    gradients by its current scale itself and skips the update on overflow; the optimizer is
    built with loss_scale 1. Either way weight decay must end up added to unscaled gradients
    (see src/momentum.py).

    clip_grad_norm and accumulate_steps replace these cells with those of src/train_steps.py.

    amp_dtype: see mixed_precision. make_optimizer: ``(net, config, lr_per_step,
    loss_scale, device_target) -> optimizer``, build_optimizer when None.
    """
    make_optimizer = make_optimizer or build_optimizer
    masked_dropout = uses_dropout(net)  # asked of the VGG itself, before any AMP wrapper
    if amp_level != "O0":
        wrapped = mixed_precision(net, amp_level, amp_dtype)
        # The masked-dropout loss reaches into the VGG's classifier, so it takes the VGG
        # (converted in place) rather than the wrapper, which only casts its output to
        # float32 (that loss casts its logits itself).
        net = getattr(wrapped, "_backbone", wrapped) if masked_dropout else wrapped
    smoothing = config.label_smooth_factor if config.label_smooth else 0.0
    with_loss = create_loss_cell(net, smoothing, masked_dropout)
    def optimizer_for(loss_scale):
        return make_optimizer(net, config, lr_per_step, loss_scale, device_target)

    step = _step_cell(with_loss, optimizer_for, config, scale_type)
    step.set_train(True)
    return trim_heap_after_first_compile(step)


def trim_heap_after_first_compile(cell):
    """`cell`, which from now on returns the memory its graph compilation freed to the system
    (src.runtime.release_freed_heap) once its first compilation is done, before that first
    graph runs: about 37 MiB less peak memory for VGG16-BN's train step on CPU, for a few
    tens of milliseconds once. In graph mode a call compiles (cached after the first time)
    and then runs, through ``cell.compile``, which this wraps."""
    from src.runtime import release_freed_heap

    compile_graph = cell.compile
    pending = [True]

    def compile_then_trim(*args, **kwargs):
        compile_graph(*args, **kwargs)
        if pending:
            pending.clear()
            release_freed_heap()

    cell.compile = compile_then_trim
    return cell


def _step_cell(with_loss, make_optimizer, config, scale_type):
    """The loss-scale / clipping / accumulation cell around the loss cell (src/train_steps.py);
    MindSpore's own cells when clip_grad_norm and accumulate_steps are off.
    make_optimizer: ``loss_scale -> optimizer`` (1 where the cell unscales the gradients
    itself)."""
    from mindspore import nn

    from src import train_steps

    max_norm, steps = config.get("clip_grad_norm", 0.0), config.get("accumulate_steps", 1)
    dynamic = scale_type == "dynamic"
    scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=config.loss_scale, scale_factor=2,
                                          scale_window=2000) if dynamic else config.loss_scale
    if steps > 1:
        return train_steps.AccumulatingTrainStep(with_loss, make_optimizer(1.0), scale, steps,
                                                 max_norm)
    if dynamic and max_norm:
        return train_steps.ClippedLossScaleTrainStep(with_loss, make_optimizer(1.0), scale,
                                                     max_norm)
    if dynamic:
        return nn.TrainOneStepWithLossScaleCell(with_loss, make_optimizer(1.0), scale_sense=scale)
    if max_norm:
        return train_steps.ClippedTrainStep(with_loss, make_optimizer(scale), scale, max_norm)
    return nn.TrainOneStepCell(with_loss, make_optimizer(scale), sens=scale)


class StopRequest:
    """Ctrl-C (SIGINT) as a request that the loop honours between steps.

    MindSpore's runtime installs its own SIGINT handlers around graph execution and ends the
    process from them, so train.py blocks SIGINT in every thread before MindSpore starts
    and the loop polls for a pending one: the state saved on interruption is then always a
    whole step.
    """

    @staticmethod
    def check():
        if signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
            raise KeyboardInterrupt


def usable_batches(batches, accumulate_steps):
    """Batches of an epoch that training uses: whole accumulation windows only (the last
    batches of an epoch that cannot fill one are skipped, like a partial batch)."""
    usable = batches - batches % accumulate_steps
    if usable < 1:
        raise UserError(f"accumulate_steps: {accumulate_steps} is more than the {batches} "
                        "batches of an epoch; lower accumulate_steps or batch_size")
    return usable


class Trainer:
    """Runs the epochs of one training job; checkpoints (src/training_checkpoints.py), the
    EMA (src/training_ema.py) and evaluation (src/training_eval.py) are its parts."""

    def __init__(self, config, runtime, net, make_dataset, steps_per_epoch, paths, log,
                 config_yaml="", eval_dataset_fn=None):
        self.config = config
        self.runtime = runtime
        self.net = net
        self.make_dataset = make_dataset
        # batches per epoch (micro-batches with gradient accumulation): positions, dropout
        # masks and mixing count these; the schedule counts optimizer steps
        self.accumulate = config.get("accumulate_steps", 1)
        self.steps_per_epoch = usable_batches(steps_per_epoch, self.accumulate)
        self.paths = paths
        self.log = log
        self.lr = learning_rates(config, self.steps_per_epoch // self.accumulate)
        self.train_step = build_train_step(net, config, self.lr, runtime.device_target, log)
        self.dropout_masks = DropoutMasks(config.seed, runtime.rank) if uses_dropout(net) \
            else None
        self.mixer = mixer_from_config(config, runtime.rank)
        self.ema = TrainingEMA(config, net)
        self.lookahead = lookahead_from_config(config, net)
        self.checkpoints = TrainingCheckpoints(
            training_state(self.train_step, self.ema.averages, self.lookahead), paths,
            self.steps_per_epoch, self.accumulate, config.keep_checkpoint_max, config_yaml,
            self.ema)
        self.evaluator = TrainingEvaluator(config, net, eval_dataset_fn, runtime.group_size,
                                           self.ema, self.checkpoints, log)
        self.window_losses = []
        self.position = Position()
        self.stop = StopRequest()

    # --- checkpoints -------------------------------------------------------------------
    def save(self, position, reason):
        path = self.checkpoints.save(position)
        if path is not None:
            self.log.info("saved checkpoint %s (%s)", path, reason)
        return path

    def resume_from(self, path):
        self.position = self.checkpoints.resume(path)
        self.log.info("resumed from %s at epoch %d, step %d (global step %d, lr %.6f)", path,
                      self.position.epoch + 1, self.position.step_in_epoch,
                      self.position.global_step, self._lr_at(self.position.global_step))
        best = self.evaluator.restore_best(self.position.epoch)
        if best:
            self.log.info("%s", best)

    def _lr_at(self, global_step):
        """The rate of the optimizer step that batch number global_step belongs to."""
        index = global_step // self.accumulate
        return float(self.lr[min(index, len(self.lr) - 1)])

    # --- the loop ----------------------------------------------------------------------
    def train(self):
        config, pos = self.config, self.position
        metrics = MetricsCSV(self.paths.metrics_csv, resume_step=pos.global_step) \
            if self.runtime.is_master else None
        total_steps = config.max_epoch * self.steps_per_epoch
        self.log.info("training %s: %d epochs x %d steps, batch %d x %d device(s)",
                      self.paths.prefix, config.max_epoch, self.steps_per_epoch,
                      config.batch_size, self.runtime.group_size)
        plain = config.get("no_aug_epochs", 0)
        if plain:
            self.log.info("no_aug_epochs: the last %d epoch(s), from epoch %d, train on the "
                          "images as they are (flip only: no crop, auto_augment, random_erasing "
                          "or mixing)", plain, config.max_epoch - plain + 1)
        if self.accumulate > 1:
            self.log.info("gradient accumulation: %d batches per optimizer step, %d images per "
                          "optimizer step, %d optimizer steps per epoch", self.accumulate,
                          config.batch_size * self.accumulate * self.runtime.group_size,
                          self.steps_per_epoch // self.accumulate)
        loss = float("nan")
        try:
            while pos.epoch < config.max_epoch:
                loss = self._run_epoch(pos, metrics, total_steps)
                pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                if pos.epoch % config.ckpt_interval == 0 or pos.epoch == config.max_epoch:
                    self.save(pos, f"epoch {pos.epoch}")
                self.evaluator.after_epoch(pos, metrics)
        except KeyboardInterrupt:
            self.log.info("interrupted at epoch %d step %d; saving the current state",
                          pos.epoch + 1, pos.step_in_epoch)
            self.save(pos, "interrupted")
            raise
        if metrics is not None:
            png = plot_metrics(metrics.path, os.path.join(self.paths.ckpt_dir, "metrics.png"))
            self.log.info("metrics: %s, plot: %s", metrics.path, png)
        return loss

    def _run_epoch(self, pos, metrics, total_steps):
        config = self.config
        dataset = self.make_dataset(pos.epoch, pos.step_in_epoch)
        timer = StepTimer(config.batch_size * self.runtime.group_size)
        epoch_start = time.perf_counter()
        steps_this_run = 0
        loss = float("nan")
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            loss = self._train_batch(image, label, pos.global_step)
            pos.step_in_epoch += 1
            pos.global_step += 1
            steps_this_run += 1
            timer.tick()
            if not math.isfinite(loss):
                kept = self.checkpoints.last or "none was written yet"
                raise UserError(f"loss is {loss} at epoch {pos.epoch + 1} step "
                                f"{pos.step_in_epoch} (global step {pos.global_step}); "
                                f"stopped; last good checkpoint: {kept}; try a lower lr")
            if steps_this_run == 1:
                timer.report(0)  # the first step includes graph compilation
            elif pos.step_in_epoch % config.log_interval == 0 or \
                    pos.step_in_epoch == self.steps_per_epoch:
                self._log_progress(pos, loss, timer, total_steps, metrics)
            self.stop.check()
            if pos.step_in_epoch == self.steps_per_epoch:
                break  # batches that cannot fill an accumulation window are left out
        if pos.step_in_epoch != self.steps_per_epoch:
            raise UserError(f"epoch {pos.epoch + 1} delivered {pos.step_in_epoch} batches, "
                            f"expected {self.steps_per_epoch}; the dataset changed during "
                            "training")
        seconds = time.perf_counter() - epoch_start
        skipped = getattr(dataset, "skipped_files", None)
        if skipped is not None and len(skipped):
            self.log.info("skipped %d corrupt image(s) this epoch (skip_corrupt=True)",
                          len(skipped))
        self.log.info("epoch: %d step: %d, loss is %.6f", pos.epoch + 1, self.steps_per_epoch,
                      loss)
        self.log.info("epoch time: %.1f s, per step time: %.1f ms", seconds,
                      1000 * seconds / max(steps_this_run, 1))
        return loss

    def _train_batch(self, image, label, global_step):
        """One batch; at the end of an accumulation window (every batch without accumulation)
        also the optimizer step, the Lookahead synchronisation when one is due, and the EMA
        update. Returns the mean loss of the window's batches so far: the loss of the optimizer
        step once the window is complete."""
        output = self.train_step(*self._batch_inputs(image, label, global_step))
        loss, overflow = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
        self.window_losses.append(float(loss.asnumpy()))
        mean = float(np.mean(self.window_losses))
        if (global_step + 1) % self.accumulate == 0:
            if self.accumulate > 1:
                overflow = self.train_step.apply_update()
            skipped = overflow is not None and bool(overflow.asnumpy())  # dynamic loss scale
            if self.lookahead is not None and self.lookahead.due(
                    global_step, self.steps_per_epoch, self.accumulate):
                self.lookahead()  # by position alone, so a resumed run syncs where it did
            if not skipped:
                self.ema.update()
            self.window_losses = []
        return mean

    def _batch_inputs(self, image, label, global_step):
        """(image, label[, mask1, mask2]) for the train step: mixed on the host with soft
        labels when mixup or CutMix is on, with this step's dropout masks."""
        if self.mixer is not None:
            import mindspore as ms

            if plain_epoch(self.config, global_step // self.steps_per_epoch):
                label = ms.Tensor(one_hot(label.asnumpy(), self.config.num_classes))
            else:
                mixed, targets = self.mixer(image.asnumpy(), label.asnumpy(), global_step)
                image, label = ms.Tensor(mixed), ms.Tensor(targets)
        if self.dropout_masks is None:
            return image, label
        return (image, label, *self.dropout_masks(global_step, image.shape[0]))

    def _log_progress(self, pos, loss, timer, total_steps, metrics):
        lr = self._lr_at(pos.global_step - 1)
        per_step, images_per_sec, eta = timer.report(total_steps - pos.global_step)
        self.log.info("epoch %d/%d step %d/%d loss %.4f lr %.6f | %.1f img/s %.0f ms/step | "
                      "eta %s", pos.epoch + 1, self.config.max_epoch, pos.step_in_epoch,
                      self.steps_per_epoch, loss, lr, images_per_sec, 1000 * per_step,
                      format_duration(eta))
        if metrics is not None:
            metrics.add(epoch=pos.epoch + 1, global_step=pos.global_step,
                        loss=f"{loss:.6f}", lr=f"{lr:.8f}",
                        images_per_sec=f"{images_per_sec:.1f}")
