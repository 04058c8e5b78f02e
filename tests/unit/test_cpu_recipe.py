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


def rank_log_line(second, message):
    return f"2026-12-03 18:{second // 60:02d}:{second % 60:02d},000 {message}"


def test_a_resumed_run_is_summarised_from_all_its_attempts(tmp_path):
    """train.py appends every start to train_rank0.log: the JSON of a --resume run counts the
    attempts since the last fresh start (an older run in the same folder is not one), sums their
    times and keeps each epoch's last evaluation."""
    def start(second, resumed_at=None, kernels="native kernels"):
        lines = [rank_log_line(second, "device CPU, rank 0 of 1, run folder /r u n"),
                 rank_log_line(second, f"precision: float32 on CPU ({kernels})")]
        if resumed_at:
            lines.append(rank_log_line(second + 1, f"resumed from /r u n/vgg16_bn-1_9.ckpt at "
                                                   f"{resumed_at} (global step 9, lr 0.1)"))
        return lines

    log = [*start(0), rank_log_line(50, "epoch time: 50.0 s, per step time: 5.0 ms"),
           rank_log_line(51, "eval after epoch 1: top1 0.1000 top5 0.5000"),  # an older run
           *start(100), rank_log_line(110, "epoch 1/2 step 5/9 loss 2.0 lr 0.1 | 40.0 img/s"),
           rank_log_line(150, "epoch time: 50.0 s, per step time: 5.0 ms"),
           rank_log_line(151, "eval after epoch 1: top1 0.3000 top5 0.7000"),
           rank_log_line(170, "epoch 2/2 step 5/9 loss 1.5 lr 0.05 | 20.0 img/s"),  # killed
           *start(200, "epoch 2, step 5", kernels="MindSpore's own kernels"),
           rank_log_line(230, "epoch time: 29.0 s, per step time: 7.2 ms"),
           rank_log_line(231, "eval after epoch 2: top1 0.6000 top5 0.9000")]
    (tmp_path / "train_rank0.log").write_text("\n".join(log) + "\n")
    text, seconds = cpu_recipe.resumed_training(str(tmp_path), last_seconds=33.0)
    assert seconds == 70.0 + 33.0  # the fresh attempt's log spans 100-170 s, then the last
    figures = real_cifar10_figures(text)
    assert figures["top1_after_each_epoch"] == [0.3, 0.6]
    assert figures["epoch_seconds"] == [50.0, 29.0]
    assert figures["speeds"] == [40.0, 20.0]
    # the figures describe the path of the last start, which its precision line names
    assert figures["precision"] == "precision: float32 on CPU (MindSpore's own kernels)"
    record = cpu_recipe.resume_record(text)
    assert (record["attempts"], record["resumed_at"]) == (2, ["epoch 2, step 5"])
    assert cpu_recipe.resume_record("\n".join(log[:6])) == {}


def real_cifar10_figures(train_log):
    import real_cifar10
    return real_cifar10.log_figures(train_log, "result: {'acc': 0.5}")


def test_resume_without_the_run_folder_log_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cpu_recipe.resumed_training(str(tmp_path), 1.0)
    assert "train_rank0.log is missing" in str(stop.value)


def test_the_result_records_the_seed_the_run_trained_with(tmp_path):
    from model_utils.config import get_config, save_config

    save_config(get_config([f"--config_path={cpu_recipe.CONFIG}", "--seed=7"]), str(tmp_path))
    assert cpu_recipe.run_seed(str(tmp_path)) == 7
    assert cpu_recipe.run_seed(str(tmp_path / "no run here")) is None
