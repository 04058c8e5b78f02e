"""The checkpoints of a training run: numbered ones that hold the whole training state and the
position for an exact resume, weights-only files beside them, and resuming from one."""
import os
from dataclasses import dataclass
from typing import Any

from src import checkpoint as ckpt
from src.errors import UserError
from src.training_ema import TrainingEMA


@dataclass
class Position:
    """Where training stands: completed epochs, steps done in the current one, total steps."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class RunPaths:
    """Where a run writes: its folder, this rank's checkpoint folder, the file-name prefix
    (the arch), and whether this rank writes checkpoints at all."""
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


# Keys that decide which parameters train or what the training state holds: a run resumes only
# with the values it was made with. key: the value of runs made before the key existed.
SAME_ON_RESUME = {"stem_whitening": 0, "lookahead_steps": 0, "freeze_bn_scale": False}


def config_values(config_yaml):
    """The values part (first document) of a resolved config's YAML text; {} without one."""
    import yaml

    if not config_yaml:
        return {}
    return next(yaml.safe_load_all(config_yaml), None) or {}


def check_same_on_resume(entries, path, config_yaml):
    """UserError when the checkpoint's run had another value of a SAME_ON_RESUME key than this
    run (config_yaml: this run's resolved config; empty on ranks that write none)."""
    saved_yaml = ckpt.checkpoint_meta(entries).get("config_yaml")
    if not saved_yaml or not config_yaml:
        return
    saved, now = config_values(saved_yaml), config_values(config_yaml)
    for key, default in SAME_ON_RESUME.items():
        before, after = saved.get(key, default), now.get(key, default)
        if before != after:
            raise UserError(f"checkpoint {path} was made with {key}={before}, this run has "
                            f"{after}; resume with --{key}={before}")


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


@dataclass(eq=False)
class TrainingCheckpoints:
    """Saves and resumes one run's training state."""
    state: Any  # the cell a training checkpoint holds (see training_ema.training_state)
    paths: RunPaths
    steps_per_epoch: int
    accumulate_steps: int
    keep_max: int  # numbered checkpoints kept (keep_checkpoint_max)
    config_yaml: str  # the resolved config, stored in every file
    ema: TrainingEMA
    last: str | None = None  # the newest checkpoint written or resumed from

    def save(self, position):
        """<arch>-<epoch>_<step>.ckpt at position, the EMA weights beside it, older ones
        pruned; its path, or None where this rank writes no checkpoints."""
        if not self.paths.writes_checkpoints:
            return None
        epoch_1based = position.epoch + (1 if position.step_in_epoch else 0)
        step = position.step_in_epoch or self.steps_per_epoch
        path = os.path.join(self.paths.ckpt_dir,
                            ckpt.checkpoint_name(self.paths.prefix, epoch_1based, step))
        ckpt.save_checkpoint(self.state, path, {
            "epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
            "global_step": position.global_step, "steps_per_epoch": self.steps_per_epoch,
            "accumulate_steps": self.accumulate_steps, "arch": self.paths.prefix,
            "config_yaml": self.config_yaml})
        self.ema.save(self, position)
        ckpt.prune_checkpoints(self.paths.ckpt_dir, self.keep_max)
        self.last = path
        return path

    def weights_path(self, kind):
        """<run folder>/<arch>-<kind>.ckpt."""
        return os.path.join(self.paths.ckpt_dir, f"{self.paths.prefix}-{kind}.ckpt")

    def save_weights(self, weights, kind, position, meta=None):
        """<run folder>/<arch>-<kind>.ckpt: weights alone (best, ema), the form eval.py and
        export.py load, with `meta` added to the metadata; returns its path."""
        path = self.weights_path(kind)
        ckpt.save_checkpoint(weights, path, {
            "epoch": position.epoch, "global_step": position.global_step,
            "arch": self.paths.prefix, "config_yaml": self.config_yaml, **(meta or {})})
        return path

    def resume(self, path):
        """Load the training state saved at path; returns its Position."""
        entries = ckpt.read_checkpoint(path)
        position = resume_position(entries, path, self.steps_per_epoch, self.accumulate_steps)
        check_same_on_resume(entries, path, self.config_yaml)
        restore_train_state(self.state, entries, path)
        self.last = path
        return position
