"""Config keys do what their help says in a real (short, CPU) run: enable_profiling writes a
profile, `debug` from the YAML decides tracebacks, and a one-epoch run's schedule decays."""
import csv
import glob
import os

import numpy as np
import pytest
import yaml

from model_utils import entry
from src import cli
from src.errors import UserError
from tests.helpers import QUICK_CONFIG, run_python

# vgg11-BN at 32x32, 8 steps of 16 images, one epoch, every step logged.
SHORT_RUN = ["--config_path=" + QUICK_CONFIG, "--arch=vgg11", "--batch_size=16",
             "--max_epoch=1", "--lr=0.005", "--log_interval=1", "--eval_interval=0",
             "--device_target=CPU"]


def train(args, timeout=600):
    return run_python("train.py", *args, timeout=timeout)


def logged(run_dir, column):
    with open(os.path.join(run_dir, "metrics.csv"), newline="", encoding="utf-8") as handle:
        return np.array([float(row[column]) for row in csv.DictReader(handle) if row[column]])


@pytest.fixture(scope="module")
def data(learnable_cifar):
    return learnable_cifar(n_eval=0)  # a training file only


@pytest.fixture(scope="module")
def cosine_profiled_run(data, tmp_path_factory):
    """One epoch of the per-step cosine (2 warmup steps), profiled."""
    run_dir = str(tmp_path_factory.mktemp("cosine"))
    done = train(SHORT_RUN + [f"--data_dir={data}", f"--ckpt_path={run_dir}",
                              "--lr_scheduler=cosine", "--warmup_fraction=0.25",
                              "--enable_profiling=True"])
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir, done.stdout


@pytest.mark.e2e
def test_enable_profiling_writes_a_profile_of_a_bounded_window(cosine_profiled_run):
    run_dir, stdout = cosine_profiled_run
    profiles = glob.glob(os.path.join(run_dir, "profile", "rank0_*_ascend_ms"))
    assert len(profiles) == 1, os.listdir(run_dir)
    assert f"profile written to {profiles[0]}" in stdout
    assert "profiling steps 3-8 of this run" in stdout
    assert os.path.getsize(os.path.join(profiles[0], "ASCEND_PROFILER_OUTPUT",
                                        "trace_view.json")) > 0
    with open(os.path.join(profiles[0], "FRAMEWORK", "cpu_op_type_info_0.csv"),
              encoding="utf-8") as handle:
        ops = {row["op_type"]: int(row["type_occurrences"]) for row in csv.DictReader(handle)}
    assert ops.get("AssignAdd") == 6  # the optimizer's step counter: steps 3-8 recorded


@pytest.mark.e2e
def test_one_epoch_cosine_decays_every_step_and_learns(cosine_profiled_run):
    run_dir, _ = cosine_profiled_run
    rates, losses = logged(run_dir, "lr"), logged(run_dir, "loss")  # steps 2..8
    assert rates[0] == pytest.approx(0.005) and rates[1] == pytest.approx(0.005)
    assert np.all(np.diff(rates[1:]) < 0)
    assert rates[-1] < 0.1 * 0.005  # eta_min is 0: the last step is near it
    assert losses[-1] < losses[0]


@pytest.mark.e2e
def test_one_epoch_cosine_annealing_with_t_max_1_stays_flat(data, tmp_path):
    done = train(SHORT_RUN + [f"--data_dir={data}", f"--ckpt_path={tmp_path}",
                              "--lr_scheduler=cosine_annealing", "--T_max=1",
                              "--warmup_epochs=0"])
    assert done.returncode == 0, done.stdout + done.stderr
    rates = logged(str(tmp_path), "lr")
    assert len(rates) == 7 and np.all(rates == pytest.approx(0.005))


def yaml_with(tmp_path, **changes):
    with open(QUICK_CONFIG, encoding="utf-8") as handle:
        values, help_text, choices = yaml.safe_load_all(handle)
    path = tmp_path / "debug.yaml"
    path.write_text(yaml.safe_dump_all([dict(values, **changes), help_text, choices]))
    return str(path)


@pytest.mark.e2e
@pytest.mark.parametrize("debug", [True, False])
def test_debug_in_the_yaml_decides_the_traceback(debug, tmp_path):
    config = yaml_with(tmp_path, debug=debug)
    done = train([f"--config_path={config}", f"--data_dir={tmp_path}/nowhere",
                  f"--ckpt_path={tmp_path}/run"], timeout=300)
    assert done.returncode == 1
    assert ("Traceback" in done.stderr) == debug, done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: data_dir")
    if not debug:
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def failing_work(config):
    raise UserError("bad data")


@pytest.mark.parametrize("yaml_debug, args, env, shown", [
    (True, [], "", True),
    (False, [], "", False),
    (False, ["--debug=yes"], "", True),
    (False, ["--debug", "YES"], "", True),
    (False, ["--debug"], "", True),
    (True, ["--debug=no"], "", False),
    (False, [], "1", True),
])
def test_debug_spellings(yaml_debug, args, env, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGG_DEBUG", env)
    argv = [f"--config_path={yaml_with(tmp_path, debug=yaml_debug)}"] + args
    with pytest.raises(SystemExit):
        cli.run_entry(lambda: entry.run_with_config(failing_work, argv=argv), argv=argv)
    err = capsys.readouterr().err
    assert ("Traceback" in err) == shown and err.rstrip().endswith("error: bad data")


@pytest.mark.parametrize("args, shown", [(["--debug=1"], True), ([], False)])
def test_debug_on_the_command_line_when_the_config_cannot_be_read(args, shown, capsys,
                                                                   monkeypatch):
    monkeypatch.delenv("VGG_DEBUG", raising=False)
    argv = ["--config_path=nowhere.yaml"] + args
    with pytest.raises(SystemExit):
        cli.run_entry(lambda: entry.run_with_config(failing_work, argv=argv), argv=argv)
    err = capsys.readouterr().err
    assert ("Traceback" in err) == shown and "config file not found" in err
