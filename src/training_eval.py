"""Evaluation during training: every eval_interval epochs, the network on the evaluation data
(test-time augmentation with eval_flip_tta, and eval_tta_shift unless eval_shift_in_training is
off), then its EMA weights when EMA is on; the best result so far kept as <arch>-best.ckpt."""
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from src import checkpoint as ckpt
from src.errors import UserError
from src.evaluation import allreduce_counts, evaluate, tta_options
from src.training_checkpoints import TrainingCheckpoints
from src.training_ema import TrainingEMA


@dataclass(eq=False)
class TrainingEvaluator:
    """Evaluates after the epochs eval_interval asks for and keeps the best checkpoint,
    chosen on (and holding) the EMA weights when they are on."""
    config: Any
    net: Any
    make_dataset: Callable[[], Any]  # the evaluation data, this rank's shard
    group_size: int
    ema: TrainingEMA
    checkpoints: TrainingCheckpoints
    log: logging.Logger
    best_acc: float = -1.0
    best_epoch: int = 0  # epochs completed when best_acc was reached (0: no evaluation yet)

    def after_epoch(self, pos, metrics):
        """Evaluate when pos.epoch (epochs completed) is a multiple of eval_interval."""
        interval = self.config.eval_interval
        if interval and pos.epoch % interval == 0:
            self.evaluate(pos, metrics)

    def evaluate(self, pos, metrics):
        """Log and record (metrics: a MetricsCSV or None) the accuracy of the weights, and of
        the EMA weights when on; save the best checkpoint when the chosen one improved."""
        counts = self._counts()
        self.log.info("eval after epoch %d: top1 %.4f top5 %.4f (%d images, %.1f img/s)",
                      pos.epoch, counts.acc, counts.acc5, counts.total,
                      counts.images_per_second)
        row = {"eval_top1": f"{counts.acc:.6f}", "eval_top5": f"{counts.acc5:.6f}"}
        chosen = counts
        if self.ema.on:
            chosen = self.ema.evaluate(self._counts)
            self.log.info("eval (EMA) after epoch %d: top1 %.4f top5 %.4f", pos.epoch,
                          chosen.acc, chosen.acc5)
            row.update(ema_top1=f"{chosen.acc:.6f}", ema_top5=f"{chosen.acc5:.6f}")
        if metrics is not None:
            metrics.add(epoch=pos.epoch, global_step=pos.global_step, **row)
        if chosen.acc > self.best_acc:
            self.best_acc, self.best_epoch = chosen.acc, pos.epoch
            if self.checkpoints.paths.writes_checkpoints:
                self._save_best(pos, chosen.acc)
        return counts

    def restore_best(self, epochs_done):
        """On resume after `epochs_done` epochs: the best so far is the one <arch>-best.ckpt in
        the run folder holds, so a worse evaluation after the resume does not replace it.
        Returns a line for the log, or None (no such file, or one without its top-1). A file
        that cannot be read, or that comes from after the resume point (a resume from an
        earlier checkpoint), is replaced by the next evaluation, as in a fresh run."""
        path = self.checkpoints.weights_path("best")
        if not os.path.isfile(path):
            return None
        try:
            meta = ckpt.checkpoint_meta(ckpt.read_checkpoint(path))
        except UserError as err:
            return f"{err}; the best checkpoint is chosen anew"
        if "top1" not in meta:
            return None
        if int(meta["epoch"]) > epochs_done:
            return (f"{path} is from epoch {meta['epoch']}, after the resume point; the best "
                    "checkpoint is chosen anew")
        self.best_acc, self.best_epoch = float(meta["top1"]), int(meta["epoch"])
        return f"best so far: top1 {self.best_acc:.4f} after epoch {self.best_epoch} ({path})"

    def _counts(self):
        local = evaluate(self.net, self.make_dataset(),
                         **tta_options(self.config, during_training=True))
        return allreduce_counts(local, self.group_size)

    def _save_best(self, pos, acc):
        """<arch>-best.ckpt: the weights that scored best (the averages when EMA is on), with
        their top-1 (exact, as text) for a resumed run to compare against."""
        path = self.checkpoints.save_weights(self.ema.chosen_weights(self.net), "best", pos,
                                             {"top1": repr(acc)})
        self.log.info("new best top1 %.4f%s: %s", acc, " (EMA weights)" if self.ema.on else "",
                      path)
