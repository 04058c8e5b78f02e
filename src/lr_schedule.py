"""Per-step learning-rate arrays. Every schedule starts with a linear warmup."""
import math

import numpy as np


def linear_warmup(step, warmup_steps, start, end):
    """Rate at `step` (0-based) of a linear ramp that reaches `end` after warmup_steps steps."""
    return start + (end - start) * (step + 1) / warmup_steps


def warmup_quadratic_decay_lr(lr_init, lr_max, warmup_epochs, total_epochs, steps_per_epoch):
    """Config name `step`: warmup lr_init→lr_max, then lr_max·(1−progress)² down to 0."""
    total = total_epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    rates = np.empty(total, dtype=np.float32)
    for i in range(total):
        if i < warmup:
            rates[i] = lr_init + (lr_max - lr_init) * i / warmup
        else:
            remaining = 1.0 - (i - warmup) / (total - warmup)
            rates[i] = max(lr_max * remaining * remaining, 0.0)
    return rates


def warmup_multistep_lr(lr, lr_epochs, lr_gamma, warmup_epochs, total_epochs, steps_per_epoch):
    """Config name `exponential`: warmup 0→lr, then ×lr_gamma at each epoch of lr_epochs."""
    total = total_epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    milestones = [epoch * steps_per_epoch for epoch in lr_epochs]
    rates = np.empty(total, dtype=np.float32)
    for i in range(total):
        if i < warmup:
            rates[i] = linear_warmup(i, warmup, 0.0, lr)
        else:
            passed = sum(1 for m in milestones if i >= m)
            rates[i] = lr * lr_gamma ** passed
    return rates


def warmup_cosine_annealing_lr(lr, eta_min, t_max, warmup_epochs, total_epochs,
                               steps_per_epoch):
    """Config name `cosine_annealing`: warmup 0→lr, then per-epoch cosine lr→eta_min over
    t_max epochs (counted from the start of training, as upstream)."""
    total = total_epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    rates = np.empty(total, dtype=np.float32)
    for i in range(total):
        if i < warmup:
            rates[i] = linear_warmup(i, warmup, 0.0, lr)
        else:
            epoch = i // steps_per_epoch
            rates[i] = eta_min + (lr - eta_min) * (1.0 + math.cos(math.pi * epoch / t_max)) / 2
    return rates


def learning_rates(config, steps_per_epoch):
    """The schedule that config.lr_scheduler names, one value per training step."""
    name = config.lr_scheduler
    if name == "step":
        return warmup_quadratic_decay_lr(config.lr_init, config.lr_max, config.warmup_epochs,
                                         config.max_epoch, steps_per_epoch)
    if name == "exponential":
        return warmup_multistep_lr(config.lr, config.lr_epochs, config.lr_gamma,
                                   config.warmup_epochs, config.max_epoch, steps_per_epoch)
    if name == "cosine_annealing":
        return warmup_cosine_annealing_lr(config.lr, config.eta_min, config.T_max,
                                          config.warmup_epochs, config.max_epoch,
                                          steps_per_epoch)
    raise ValueError(f"unknown lr_scheduler {name!r}")
