"""benchmarks/cpu_recipe.py without training: its --set/--tag options and the training command
they give."""
import os
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import cpu_recipe  # noqa: E402  (path set just above)


def test_plain_recipe_command_is_the_readme_one():
    args = cpu_recipe.parse_args(["--cifar_dir", "D", "--epochs", "2"])
    command = cpu_recipe.train_command(args, "SPLIT", "RUN")
    assert command[1:] == ["train.py", "--config_path=cifar10_cpu_config.yaml",
                           "--data_dir=SPLIT", "--max_epoch=2", "--ckpt_path=RUN"]
    assert args.suffix == ""


def test_set_adds_options_and_tag_names_the_run():
    args = cpu_recipe.parse_args(["--cifar_dir", "D", "--epochs", "24", "--set=--crop_padding=4",
                                  "--set=--lr=0.1", "--tag", "pad4", "--resume"])
    command = cpu_recipe.train_command(args, "SPLIT", "RUN")
    assert command[-3:] == ["--crop_padding=4", "--lr=0.1", "--resume=auto"]
    assert args.suffix == "_pad4"


@pytest.mark.parametrize("argv, message", [
    (["--set=--crop_padding=4"], "give --tag"),
    (["--set=crop_padding=4", "--tag", "x"], "expected --key=value"),
    (["--set=--crop_padding", "--tag", "x"], "expected --key=value"),
])
def test_bad_set_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cpu_recipe.parse_args(["--cifar_dir", "D", "--epochs", "2", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
