"""benchmarks/cpu_recipe.py without training: its --set/--tag options and the training command
they give."""
import os
import sys

import numpy as np
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


def test_holdout_split_keeps_the_last_records_and_the_class_names(tmp_path):
    import real_cifar10

    from src.dataset import write_cifar10_bin

    source = tmp_path / "cifar" / "cifar-10-batches-bin"
    images = np.arange(7 * 3072, dtype=np.uint64).reshape(7, 3072) % 251
    write_cifar10_bin(str(source / "data_batch_1.bin"), images[:4], [0, 1, 2, 3])
    write_cifar10_bin(str(source / "data_batch_2.bin"), images[4:], [4, 5, 6])
    (source / "batches.meta.txt").write_text("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n")
    data, n_train = real_cifar10.split_holdout(str(tmp_path / "cifar"), str(tmp_path / "out"), 2)
    assert n_train == 5
    train = np.fromfile(os.path.join(data, "cifar-10-batches-bin", "data_batch_1.bin"), np.uint8)
    held = np.fromfile(os.path.join(data, "cifar-10-verify-bin", "test_batch.bin"), np.uint8)
    assert list(train.reshape(5, 3073)[:, 0]) == [0, 1, 2, 3, 4]
    assert list(held.reshape(2, 3073)[:, 0]) == [5, 6]
    np.testing.assert_array_equal(held.reshape(2, 3073)[:, 1:], images[5:])
    meta = os.path.join(data, "cifar-10-batches-bin", "batches.meta.txt")
    assert open(meta, encoding="utf-8").read() == (source / "batches.meta.txt").read_text()
