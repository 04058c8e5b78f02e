"""Per-step learning-rate arrays, each a pure function of the config and the number of steps
per epoch. Every schedule starts with a linear warmup. The upstream schedules (`step`,
`exponential`, `cosine_annealing`) change per epoch; `cosine` and `linear` decay step by step
over the whole run, however short."""
import math

import numpy as np

from src.errors import UserError

# Names that say what the upstream schedules compute; the upstream names keep working.
QUADRATIC = ("step", "quadratic")
MULTISTEP = ("exponential", "multistep")
PER_STEP = ("cosine", "linear")


def linear_warmup(step, warmup_steps, start, end):
    """Rate at `step` (0-based) of a linear ramp that reaches `end` after warmup_steps steps."""
    return start + (end - start) * (step + 1) / warmup_steps


def warmup_quadratic_decay_lr(lr_init, lr_max, warmup_epochs, total_epochs, steps_per_epoch):
    """Config name `quadratic` (upstream `step`): warmup lr_init→lr_max, then
    lr_max·(1−progress)² down to 0."""
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
    """Config name `multistep` (upstream `exponential`): warmup 0→lr, then ×lr_gamma at each
    epoch of lr_epochs."""
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


def warmup_decay_lr(lr, eta_min, warmup_steps, total_steps, shape="cosine"):
    """Config names `cosine` and `linear`: warmup 0→lr over warmup_steps, then a per-step
    cosine (or straight line) from lr down towards eta_min, which the step after the last
    one would reach: every step of the run, even in a one-epoch run, decays the rate."""
    steps = np.arange(total_steps, dtype=np.float64)
    progress = (steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    if shape == "cosine":
        falling = (1.0 + np.cos(np.pi * progress)) / 2
    else:
        falling = 1.0 - progress
    rates = eta_min + (lr - eta_min) * falling
    ramp = steps < warmup_steps
    rates[ramp] = lr * (steps[ramp] + 1) / warmup_steps
    return rates.astype(np.float32)


def per_step_warmup(config, total_steps, steps_per_epoch):
    """Warmup length in steps of the per-step schedules: warmup_steps when set, else
    warmup_fraction of the run when set, else warmup_epochs."""
    if config.get("warmup_steps", 0):
        if config.warmup_steps > total_steps:
            raise UserError(f"config key 'warmup_steps' ({config.warmup_steps}) is longer than "
                            f"the run ({total_steps} steps)")
        return config.warmup_steps
    if config.get("warmup_fraction", 0.0):
        return int(round(config.warmup_fraction * total_steps))
    return config.warmup_epochs * steps_per_epoch


def learning_rates(config, steps_per_epoch):
    """The schedule that config.lr_scheduler names, one value per training step."""
    name = config.lr_scheduler
    if name in QUADRATIC:
        return warmup_quadratic_decay_lr(config.lr_init, config.lr_max, config.warmup_epochs,
                                         config.max_epoch, steps_per_epoch)
    if name in MULTISTEP:
        return warmup_multistep_lr(config.lr, config.lr_epochs, config.lr_gamma,
                                   config.warmup_epochs, config.max_epoch, steps_per_epoch)
    if name == "cosine_annealing":
        return warmup_cosine_annealing_lr(config.lr, config.eta_min, config.T_max,
                                          config.warmup_epochs, config.max_epoch,
                                          steps_per_epoch)
    if name in PER_STEP:
        total = config.max_epoch * steps_per_epoch
        warmup = per_step_warmup(config, total, steps_per_epoch)
        return warmup_decay_lr(config.lr, config.eta_min, warmup, total, shape=name)
    raise ValueError(f"unknown lr_scheduler {name!r}")
