"""Learning-rate schedules: the per-step cosine and linear decay within a run of any length,
the descriptive names compute what the upstream names do, and the warmup keys' precedence."""
import os

import numpy as np
import pytest

from model_utils.config import get_config
from src.errors import UserError
from src.lr_schedule import learning_rates, warmup_decay_lr
from tests.helpers import REPO

CIFAR = os.path.join(REPO, "cifar10_config.yaml")
STEPS = 781  # one CIFAR-10 epoch at batch 64


def rates_of(*args, steps_per_epoch=STEPS):
    return learning_rates(get_config([f"--config_path={CIFAR}", *args]), steps_per_epoch)


def test_one_epoch_cosine_warms_up_then_decays_every_step_to_eta_min():
    rates = rates_of("--lr_scheduler=cosine", "--max_epoch=1", "--warmup_fraction=0.05",
                     "--lr=0.05", "--eta_min=0.001")
    warmup = round(0.05 * STEPS)
    assert len(rates) == STEPS
    assert np.all(np.diff(rates[:warmup]) > 0) and rates[warmup - 1] == pytest.approx(0.05)
    assert rates[warmup] == pytest.approx(0.05)
    assert np.all(np.diff(rates[warmup:]) < 0)
    assert rates[-1] == pytest.approx(0.001, abs=1e-5)


def test_linear_is_a_straight_line_from_lr_down_to_eta_min():
    rates = warmup_decay_lr(0.1, 0.0, 2, 12, shape="linear")
    np.testing.assert_allclose(rates, [0.05, 0.1] + [0.1 * (1 - k / 10) for k in range(10)],
                               rtol=1e-6)


def test_one_epoch_cosine_annealing_with_t_max_1_stays_flat():
    """Upstream's meaning kept: the cosine moves per epoch, so one epoch is one rate."""
    rates = rates_of("--lr_scheduler=cosine_annealing", "--max_epoch=1", "--T_max=1",
                     "--warmup_epochs=0")
    assert np.all(rates == rates[0]) and rates[0] == pytest.approx(0.01)


@pytest.mark.parametrize("upstream, descriptive", [("step", "quadratic"),
                                                   ("exponential", "multistep")])
def test_descriptive_names_compute_the_upstream_schedules(upstream, descriptive):
    args = ["--max_epoch=12", "--warmup_epochs=2", "--lr_epochs=4,8"]
    np.testing.assert_array_equal(rates_of(f"--lr_scheduler={upstream}", *args, steps_per_epoch=5),
                                  rates_of(f"--lr_scheduler={descriptive}", *args,
                                           steps_per_epoch=5))


@pytest.mark.parametrize("args, warmup", [
    ([], 10),                                          # warmup_epochs=2 at 5 steps an epoch
    (["--warmup_fraction=0.25"], 15),                  # a quarter of 60 steps
    (["--warmup_steps=7"], 7),
])
def test_per_step_warmup_precedence(args, warmup):
    rates = rates_of("--lr_scheduler=cosine", "--max_epoch=12", "--warmup_epochs=2", *args,
                     steps_per_epoch=5)
    assert int(np.argmax(rates)) == warmup - 1 and rates[warmup] == pytest.approx(rates.max())


def test_warmup_steps_longer_than_the_run_is_refused():
    with pytest.raises(UserError, match=r"'warmup_steps' \(100\) is longer than the run "
                                        r"\(60 steps\)"):
        rates_of("--lr_scheduler=linear", "--max_epoch=12", "--warmup_steps=100",
                 steps_per_epoch=5)


def test_schedule_is_a_function_of_config_and_steps_only():
    config = get_config([f"--config_path={CIFAR}", "--lr_scheduler=cosine", "--max_epoch=3",
                         "--warmup_fraction=0.1"])
    first = learning_rates(config, 40)
    np.testing.assert_array_equal(first, learning_rates(config, 40))
    doubled = learning_rates(config, 80)
    assert len(doubled) == 2 * len(first) and doubled[-1] < first[-1]
