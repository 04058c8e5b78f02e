"""Training: optimiser and train step from a config, and an epoch loop that checkpoints,
resumes exactly, logs progress and stops cleanly on a bad loss or Ctrl-C."""
import logging
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from src import checkpoint as ckpt
from src.errors import UserError
from src.evaluation import allreduce_counts, evaluate
from src.lr_schedule import learning_rates
from src.mixing import mixer_from_config
from src.progress import MetricsCSV, StepTimer, format_duration, plot_metrics


def split_parameter_groups(net, freeze_features=False):
    """Trainable parameters split by (feature extractor?, weight-decayed?).

    Conv and dense weights (rank > 1) get weight decay; BatchNorm gamma/beta and biases
    (rank 1) do not. Frozen feature parameters are excluded from training altogether.
    """
    if freeze_features:
        for param in net.get_parameters():
            if param.name.startswith("features."):
                param.requires_grad = False
    groups = {}
    for param in net.trainable_params():
        key = (param.name.startswith("features."), len(param.shape) > 1)
        groups.setdefault(key, []).append(param)
    return groups


def _decayed_momentum_class():
    """nn.Momentum whose weight decay is one fused ``g + wd * w`` per parameter.

    nn.Momentum adds weight decay as ``AddN(w * wd, g)``: two passes over every weight and
    a temporary, about 45 ms a step for VGG16's 34 M parameters on 2 CPU cores (the
    momentum update itself takes about as long). ``mint.add(g, w, alpha=wd)`` does it in
    one pass. Same update, same state (``moments.*``), so checkpoints are unchanged.

    nn.Momentum.construct calls decay_weight before scale_grad divides the gradients by
    ``loss_scale``, so the gradients decay_weight sees are still multiplied by the loss
    scale. As nn.Optimizer does for its own weight decay (``_preprocess_weight_decay``), the
    decay is therefore stored multiplied by loss_scale: ``(s*g + s*wd*w) / s = g + wd*w``,
    exactly so for a power-of-two s. (With a dynamic loss scale the train-step cell unscales
    the gradients itself and the optimizer is built with loss_scale 1.)"""
    from mindspore import mint, nn

    class DecayedMomentum(nn.Momentum):
        def __init__(self, params, learning_rate, momentum, loss_scale, decay_by_name):
            super().__init__(params, learning_rate=learning_rate, momentum=momentum,
                             loss_scale=loss_scale)
            self.decay_values = tuple(float(decay_by_name[p.name]) * self.loss_scale
                                      for p in self._parameters)

        def decay_weight(self, gradients):
            decayed = ()
            for decay, weight, gradient in zip(self.decay_values, self._parameters, gradients):
                if decay:
                    gradient = mint.add(gradient, weight, alpha=decay)
                decayed += (gradient,)
            return decayed

    return DecayedMomentum


def _nesterov_momentum_class():
    """DecayedMomentum with the Nesterov update, PyTorch's SGD(nesterov=True) without
    dampening: ``accum = momentum * accum + g; w -= lr * (g + momentum * accum)``.

    Written out in MindSpore ops because MindSpore 2.10's CPU ApplyMomentum ignores its
    use_nesterov flag (measured: the same update with and without it), and the native
    FastMomentumUpdate kernel has no Nesterov form. Same state (``moments.*``) and the same
    loss-scale-aware weight decay as DecayedMomentum."""
    from mindspore import ops

    update = ops.MultitypeFuncGraph("nesterov_update")

    @update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
    def _update(momentum, lr, gradient, weight, accum):
        accum_new = ops.assign(accum, accum * momentum + gradient)
        return ops.assign(weight, weight - lr * (gradient + momentum * accum_new))

    class NesterovMomentum(_decayed_momentum_class()):
        def construct(self, gradients):
            gradients = self.scale_grad(self.decay_weight(gradients))
            lr = self.get_lr()
            self.assignadd(self.global_step, self.global_step_increase_tensor)
            if self.is_group_lr:
                return self.hyper_map(ops.partial(update, self.momentum), lr, gradients,
                                      self.params, self.moments)
            return self.hyper_map(ops.partial(update, self.momentum, lr), gradients,
                                  self.params, self.moments)

    return NesterovMomentum


def _fused_momentum_class():
    """The native optimizer (src/native/optimizer.py), imported when it is chosen."""
    from src.native.optimizer import FusedMomentum

    return FusedMomentum


def _fused_optimizer_usable(config, device_target):
    """Whether the config and this process allow the native optimizer kernel."""
    from src.native.optimizer import fused_momentum_usable

    return fused_momentum_usable(device_target, config.context_mode, config.native_kernels)


def build_optimizer(net, config, lr_per_step, loss_scale, device_target="CPU"):
    """Momentum SGD with per-group weight decay and learning rate (features may be scaled)."""
    import mindspore as ms

    groups, decay_by_name = [], {}
    groups_by_kind = split_parameter_groups(net, config.freeze_features)
    for (is_feature, decayed), params in groups_by_kind.items():
        scale = config.features_lr_scale if is_feature else 1.0
        groups.append({"params": params, "lr": ms.Tensor(lr_per_step * scale, ms.float32)})
        decay_by_name.update((p.name, config.weight_decay if decayed else 0.0) for p in params)
    if not groups:
        raise UserError("nothing to train: every parameter is frozen")
    groups.append({"order_params": net.trainable_params()})
    rates = ms.Tensor(lr_per_step, ms.float32)
    fused = _fused_optimizer_usable(config, device_target)
    if config.get("nesterov", False):
        if fused:
            logging.getLogger("vgg").info(
                "optimizer: Nesterov momentum in MindSpore ops instead of the native "
                "FastMomentumUpdate kernel, which has no Nesterov form")
        cls = _nesterov_momentum_class()
    else:
        cls = _fused_momentum_class() if fused else _decayed_momentum_class()
    return cls(groups, rates, config.momentum, loss_scale, decay_by_name)


def uses_dropout(net):
    """True when the network's classifier has active Dropout layers."""
    from mindspore import nn

    if not getattr(net, "include_top", False):
        return False
    return any(isinstance(cell, nn.Dropout) for cell in net.classifier.cells())


class DropoutMasks:
    """Host-made dropout masks, a pure function of (seed, rank, global step).

    MindSpore's Dropout kernels keep their random state inside the compiled graph, where a
    checkpoint cannot reach it; masks made here from the step number make a resumed run
    draw exactly the masks the uninterrupted run would have drawn. With gradient
    accumulation the step is the batch (micro-batch) count, so each batch of an
    accumulation window draws its own masks.
    """

    def __init__(self, seed, rank, p=0.5, width=4096):
        self.seed, self.rank, self.p, self.width = seed, rank, p, width

    def __call__(self, global_step, batch):
        import mindspore as ms

        rng = np.random.default_rng([self.seed, self.rank, global_step])
        keep = 1.0 - self.p
        masks = (rng.random((2, batch, self.width), dtype=np.float32) < keep) / keep
        return ms.Tensor(masks[0].astype(np.float32)), ms.Tensor(masks[1].astype(np.float32))


def create_loss_cell(net, label_smoothing, masked_dropout):
    """Cell computing the loss in float32 whatever the network's precision.

    With masked_dropout the classifier's two dropouts take the masks passed in (see
    DropoutMasks) instead of drawing their own.
    """
    import mindspore as ms
    from mindspore import nn, ops

    class NetWithLoss(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.network = net
            self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        def construct(self, image, label):
            logits = ops.cast(self.network(image), ms.float32)
            return self.loss(logits, label)

    class NetWithMaskedDropoutLoss(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.network = net
            self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
            self.relu = nn.ReLU()

        def construct(self, image, label, mask1, mask2):
            head = self.network.classifier
            x = self.network.forward_features(image)
            x = self.relu(head[0](x))
            x = x * ops.cast(mask1, x.dtype)
            x = self.relu(head[3](x))
            x = x * ops.cast(mask2, x.dtype)
            logits = ops.cast(head[6](x), ms.float32)
            return self.loss(logits, label)

    return NetWithMaskedDropoutLoss() if masked_dropout else NetWithLoss()


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
    (see _decayed_momentum_class).

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
    return step


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


@dataclass
class Position:
    """Where training stands: completed epochs, steps done in the current one, total steps."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class RunPaths:
    run_dir: str
    ckpt_dir: str
    prefix: str
    writes_checkpoints: bool

    @property
    def metrics_csv(self):
        return os.path.join(self.ckpt_dir, "metrics.csv")


def resume_position(entries, path, steps_per_epoch, accumulate_steps=1):
    meta = ckpt.checkpoint_meta(entries)
    if meta.get("accumulate_steps", 1) != accumulate_steps:
        raise UserError(f"checkpoint {path} was made with accumulate_steps="
                        f"{meta['accumulate_steps']}, this run has {accumulate_steps}; resume "
                        "with the same accumulate_steps")
    if "global_step" not in meta:
        raise UserError(f"checkpoint {path} has no training position (epoch/step); use it "
                        "with --pre_trained instead of --resume")
    if meta.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
        raise UserError(f"checkpoint {path} was made with {meta['steps_per_epoch']} steps per "
                        f"epoch, this run has {steps_per_epoch}; resume with the same data "
                        "and batch_size")
    return Position(int(meta["epoch"]), int(meta["step_in_epoch"]), int(meta["global_step"]))


def restore_train_state(train_step, entries, path):
    """Load network, momentum and step counter (the learning-rate position) from a checkpoint."""
    import mindspore as ms

    names = {p.name for p in train_step.get_parameters()}
    state = {k: v for k, v in entries.items()
             if k in names and "learning_rate" not in k}
    missing = sorted(names - set(state) - {n for n in names if "learning_rate" in n})
    if missing:
        raise UserError(f"checkpoint {path} cannot resume this run: {len(missing)} training "
                        f"state entries missing ({', '.join(missing[:3])})")
    with ckpt.quiet_mindspore():  # the schedule is rebuilt from the config, not loaded
        ms.load_param_into_net(train_step, state, strict_load=True)


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


def ema_from_config(config, net):
    """A WeightEMA of net when ema_decay is set, else None."""
    if not config.get("ema_decay", 0.0):
        return None
    from src.ema import WeightEMA

    return WeightEMA(net, config.ema_decay, config.get("ema_warmup", False))


def training_state(train_step, ema):
    """The cell a training checkpoint holds: the train step (network, optimizer, loss scale,
    accumulated gradients) and, with EMA, the averages (``ema.*``)."""
    if ema is None:
        return train_step
    from mindspore import nn

    state = nn.Cell(auto_prefix=False)
    state.train_step, state.ema = train_step, ema
    return state


class Trainer:
    """Runs the epochs of one training job."""

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
        self.config_yaml = config_yaml
        self.eval_dataset_fn = eval_dataset_fn
        self.lr = learning_rates(config, self.steps_per_epoch // self.accumulate)
        self.train_step = build_train_step(net, config, self.lr, runtime.device_target, log)
        self.dropout_masks = DropoutMasks(config.seed, runtime.rank) if uses_dropout(net) \
            else None
        self.mixer = mixer_from_config(config, runtime.rank)
        self.ema = ema_from_config(config, net)
        self.state = training_state(self.train_step, self.ema)
        self.window_losses = []
        self.position = Position()
        self.best_acc = -1.0
        self.last_checkpoint = None
        self.stop = StopRequest()

    # --- checkpoints -------------------------------------------------------------------
    def save(self, position, reason):
        if not self.paths.writes_checkpoints:
            return None
        epoch_1based = position.epoch + (1 if position.step_in_epoch else 0)
        step = position.step_in_epoch or self.steps_per_epoch
        path = os.path.join(self.paths.ckpt_dir,
                            ckpt.checkpoint_name(self.paths.prefix, epoch_1based, step))
        ckpt.save_checkpoint(self.state, path, {
            "epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
            "global_step": position.global_step, "steps_per_epoch": self.steps_per_epoch,
            "accumulate_steps": self.accumulate, "arch": self.paths.prefix,
            "config_yaml": self.config_yaml})
        if self.ema is not None:  # the averaged weights alone, for eval.py and export.py
            ckpt.save_checkpoint(self.ema.weights_only(), self._weights_path("ema"), {
                "epoch": position.epoch, "global_step": position.global_step,
                "arch": self.paths.prefix, "config_yaml": self.config_yaml})
        ckpt.prune_checkpoints(self.paths.ckpt_dir, self.config.keep_checkpoint_max)
        self.last_checkpoint = path
        self.log.info("saved checkpoint %s (%s)", path, reason)
        return path

    def resume_from(self, path):
        entries = ckpt.read_checkpoint(path)
        self.position = resume_position(entries, path, self.steps_per_epoch, self.accumulate)
        restore_train_state(self.state, entries, path)
        self.last_checkpoint = path
        self.log.info("resumed from %s at epoch %d, step %d (global step %d, lr %.6f)", path,
                      self.position.epoch + 1, self.position.step_in_epoch,
                      self.position.global_step, self._lr_at(self.position.global_step))

    def _lr_at(self, global_step):
        """The rate of the optimizer step that batch number global_step belongs to."""
        index = global_step // self.accumulate
        return float(self.lr[min(index, len(self.lr) - 1)])

    def _weights_path(self, kind):
        """<run folder>/<arch>-<kind>.ckpt: weights-only files (best, ema)."""
        return os.path.join(self.paths.ckpt_dir, f"{self.paths.prefix}-{kind}.ckpt")

    # --- the loop ----------------------------------------------------------------------
    def train(self):
        config, pos = self.config, self.position
        metrics = MetricsCSV(self.paths.metrics_csv, resume_step=pos.global_step) \
            if self.runtime.is_master else None
        total_steps = config.max_epoch * self.steps_per_epoch
        self.log.info("training %s: %d epochs x %d steps, batch %d x %d device(s)",
                      self.paths.prefix, config.max_epoch, self.steps_per_epoch,
                      config.batch_size, self.runtime.group_size)
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
                if config.eval_interval and pos.epoch % config.eval_interval == 0:
                    self._evaluate(pos, metrics)
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
                kept = self.last_checkpoint or "none was written yet"
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
        also the optimizer step and the EMA update. Returns the mean loss of the window's
        batches so far: the loss of the optimizer step once the window is complete."""
        output = self.train_step(*self._batch_inputs(image, label, global_step))
        loss, overflow = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
        self.window_losses.append(float(loss.asnumpy()))
        mean = float(np.mean(self.window_losses))
        if (global_step + 1) % self.accumulate == 0:
            if self.accumulate > 1:
                overflow = self.train_step.apply_update()
            skipped = overflow is not None and bool(overflow.asnumpy())  # dynamic loss scale
            if self.ema is not None and not skipped:
                self.ema()
            self.window_losses = []
        return mean

    def _batch_inputs(self, image, label, global_step):
        """(image, label[, mask1, mask2]) for the train step: mixed on the host with soft
        labels when mixup or CutMix is on, with this step's dropout masks."""
        if self.mixer is not None:
            import mindspore as ms

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

    def _eval_counts(self):
        local = evaluate(self.net, self.eval_dataset_fn(),
                         flip_tta=self.config.get("eval_flip_tta", False))
        return allreduce_counts(local, self.runtime.group_size)

    def _evaluate(self, pos, metrics):
        """Evaluate the weights, and the EMA weights when on; the best checkpoint is chosen
        on (and holds) the EMA weights when they are on."""
        counts = self._eval_counts()
        self.log.info("eval after epoch %d: top1 %.4f top5 %.4f (%d images, %.1f img/s)",
                      pos.epoch, counts.acc, counts.acc5, counts.total,
                      counts.images_per_second)
        row = {"eval_top1": f"{counts.acc:.6f}", "eval_top5": f"{counts.acc5:.6f}"}
        chosen = counts
        if self.ema is not None:
            with self.ema.applied():
                chosen = self._eval_counts()
            self.log.info("eval (EMA) after epoch %d: top1 %.4f top5 %.4f", pos.epoch,
                          chosen.acc, chosen.acc5)
            row.update(ema_top1=f"{chosen.acc:.6f}", ema_top5=f"{chosen.acc5:.6f}")
        if metrics is not None:
            metrics.add(epoch=pos.epoch, global_step=pos.global_step, **row)
        if chosen.acc > self.best_acc and self.paths.writes_checkpoints:
            self._save_best(pos, chosen.acc)
        return counts

    def _save_best(self, pos, acc):
        """<arch>-best.ckpt: the weights that scored best (the averages when EMA is on)."""
        self.best_acc = acc
        best = self._weights_path("best")
        weights = self.net if self.ema is None else self.ema.weights_only()
        ckpt.save_checkpoint(weights, best, {"epoch": pos.epoch, "global_step": pos.global_step,
                                             "arch": self.paths.prefix,
                                             "config_yaml": self.config_yaml})
        self.log.info("new best top1 %.4f%s: %s", acc, " (EMA weights)" if self.ema else "",
                      best)
