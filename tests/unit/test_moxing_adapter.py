"""ModelArts adapter: inputs copied in (once per node, with the unzip), the entry point run on
local paths, outputs copied out also after a failure, all against a local stand-in for
moxing's file API; and nothing of it when enable_modelarts is off."""
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from model_utils.config import get_config
from model_utils.moxing_adapter import SYNC_MARKER, load_file_api, run_on_modelarts
from src.errors import UserError
from tests.helpers import REPO, run_python


class LocalFileAPI:
    """moxing.file's copy calls on local folders, recording what was copied."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls = []
        self.delay = delay
        self.fail_on = fail_on

    def copy_parallel(self, src, dst):
        self.calls.append(("copy_parallel", src, dst))
        if self.fail_on and src.startswith(self.fail_on):
            raise OSError(f"cannot read {src}")
        time.sleep(self.delay)
        shutil.copytree(src, dst, dirs_exist_ok=True)

    def copy(self, src, dst):
        self.calls.append(("copy", src, dst))
        shutil.copyfile(src, dst)

    def exists(self, path):
        return os.path.exists(path)

    def sources(self):
        return [src for _, src, _ in self.calls]


def make_obs(tmp_path, zipped=False):
    """A fake OBS bucket: a dataset (optionally as cifar10.zip) and a checkpoint file."""
    obs = tmp_path / "obs"
    data = obs / "data"
    (data / "cifar-10-batches-bin").mkdir(parents=True)
    (data / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"\x01" * 3073)
    if zipped:
        with zipfile.ZipFile(data / "cifar10.zip", "w") as archive:
            archive.writestr("cifar10/cifar-10-batches-bin/data_batch_1.bin", b"\x02" * 3073)
    (obs / "ckpt").mkdir()
    (obs / "ckpt" / "vgg16-1_10.ckpt").write_bytes(b"weights")
    return obs


def modelarts_config(tmp_path, obs, **extra):
    cache = tmp_path / "cache"
    argv = ["--config_path=cifar10_config.yaml", "--enable_modelarts=True",
            f"--data_url={obs / 'data'}", f"--train_url={obs / 'out'}",
            f"--checkpoint_url={obs / 'ckpt' / 'vgg16-1_10.ckpt'}",
            f"--data_path={cache / 'data'}", f"--output_path={cache / 'train'}",
            f"--load_path={cache / 'checkpoint'}", "--ckpt_path=outputs"]
    argv += [f"--{key}={value}" for key, value in extra.items()]
    return get_config(argv)


def write_result(config):
    """An entry point stand-in: checks its inputs are local and writes an output."""
    with open(os.path.join(config.pre_trained), "rb") as handle:
        assert handle.read() == b"weights"
    os.makedirs(config.ckpt_path, exist_ok=True)
    with open(os.path.join(config.ckpt_path, "result.txt"), "w", encoding="utf-8") as handle:
        handle.write(config.data_dir)
    return "done"


def test_inputs_copied_in_fn_on_local_paths_outputs_copied_out(tmp_path):
    obs = make_obs(tmp_path)
    config = modelarts_config(tmp_path, obs)
    files = LocalFileAPI()
    seen = []

    def fn(local):
        seen.append(local)
        return write_result(local)

    assert run_on_modelarts(config, fn, file_api=files, local_rank=0) == "done"
    local = seen[0]
    cache = tmp_path / "cache"
    assert local.data_dir == str(cache / "data")
    assert (cache / "data" / "cifar-10-batches-bin" / "data_batch_1.bin").is_file()
    assert local.pre_trained == str(cache / "checkpoint" / "vgg16-1_10.ckpt")
    assert local.ckpt_path == str(cache / "train" / "outputs")
    assert (obs / "out" / "outputs" / "result.txt").read_text() == str(cache / "data")
    assert config.data_dir == ""  # the caller's config is untouched


def test_unzip_once_and_data_dir_is_the_unzipped_folder(tmp_path):
    obs = make_obs(tmp_path, zipped=True)
    config = modelarts_config(tmp_path, obs, need_modelarts_dataset_unzip=True,
                              modelarts_dataset_unzip_name="cifar10")
    seen = []
    run_on_modelarts(config, seen.append, file_api=LocalFileAPI(), local_rank=0)
    unzipped = tmp_path / "cache" / "data" / "cifar10"
    assert seen[0].data_dir == str(unzipped)
    assert (unzipped / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes() == b"\x02" * 3073


def test_missing_archive_is_one_line(tmp_path):
    obs = make_obs(tmp_path)
    config = modelarts_config(tmp_path, obs, need_modelarts_dataset_unzip=True,
                              modelarts_dataset_unzip_name="imagenet")
    with pytest.raises(UserError, match=r"imagenet\.zip does not exist") as err:
        run_on_modelarts(config, lambda c: None, file_api=LocalFileAPI(), local_rank=0)
    assert "\n" not in str(err.value)


def test_other_local_rank_waits_for_rank0_and_copies_nothing(tmp_path):
    obs = make_obs(tmp_path, zipped=True)
    config = modelarts_config(tmp_path, obs, need_modelarts_dataset_unzip=True,
                              modelarts_dataset_unzip_name="cifar10")
    rank0_files, rank1_files = LocalFileAPI(delay=1.0), LocalFileAPI()
    outcome = {}

    def rank1():
        def fn(local):
            # rank 0 finished copying and unzipping before this rank started its work
            outcome["data_ready"] = os.path.isfile(
                os.path.join(local.data_dir, "cifar-10-batches-bin", "data_batch_1.bin"))
        run_on_modelarts(config, fn, file_api=rank1_files, local_rank=1, wait_seconds=30)
        outcome["finished"] = True

    waiter = threading.Thread(target=rank1)
    waiter.start()
    run_on_modelarts(config, lambda c: None, file_api=rank0_files, local_rank=0)
    waiter.join(timeout=30)
    assert outcome == {"data_ready": True, "finished": True}
    assert rank1_files.calls == []  # neither the inputs nor (on success) the outputs
    assert str(obs / "data") in rank0_files.sources()
    assert (tmp_path / "cache" / "data" / SYNC_MARKER).read_text().strip() == "ok"


def test_wait_times_out_with_one_line(tmp_path):
    config = modelarts_config(tmp_path, make_obs(tmp_path))
    start = time.monotonic()
    with pytest.raises(UserError, match="local rank 3 waited 1 s for .*local rank 0") as err:
        run_on_modelarts(config, lambda c: None, file_api=LocalFileAPI(), local_rank=3,
                         wait_seconds=1)
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)


def test_waiting_rank_learns_that_rank0_failed(tmp_path):
    obs = make_obs(tmp_path)
    config = modelarts_config(tmp_path, obs)
    with pytest.raises(OSError, match="cannot read"):
        run_on_modelarts(config, lambda c: None, local_rank=0,
                         file_api=LocalFileAPI(fail_on=str(obs / "data")))
    with pytest.raises(UserError, match="local rank 0 could not prepare the inputs .*cannot read"):
        run_on_modelarts(config, lambda c: None, file_api=LocalFileAPI(), local_rank=1,
                         wait_seconds=30)


@pytest.mark.parametrize("local_rank", [0, 2])
def test_outputs_copied_out_when_fn_fails_then_error_raised(tmp_path, local_rank):
    obs = make_obs(tmp_path)
    config = modelarts_config(tmp_path, obs)
    if local_rank:
        marker = tmp_path / "cache" / "data" / SYNC_MARKER
        marker.parent.mkdir(parents=True)
        marker.write_text("ok\n")

    def failing(local):
        os.makedirs(local.ckpt_path, exist_ok=True)
        with open(os.path.join(local.ckpt_path, "train_rank0.log"), "w", encoding="utf-8") as log:
            log.write("step 3: loss is nan\n")
        raise RuntimeError("training diverged")

    files = LocalFileAPI()
    with pytest.raises(RuntimeError, match="training diverged"):
        run_on_modelarts(config, failing, file_api=files, local_rank=local_rank)
    assert (obs / "out" / "outputs" / "train_rank0.log").read_text() == "step 3: loss is nan\n"


def test_checkpoint_folder_and_relative_names(tmp_path):
    obs = make_obs(tmp_path)
    config = modelarts_config(tmp_path, obs, checkpoint_url=obs / "ckpt",
                              pre_trained="vgg16-1_10.ckpt", file_name="exported/vgg16")
    seen = []
    run_on_modelarts(config, seen.append, file_api=LocalFileAPI(), local_rank=0)
    cache = tmp_path / "cache"
    assert seen[0].pre_trained == str(cache / "checkpoint" / "vgg16-1_10.ckpt")
    assert (cache / "checkpoint" / "vgg16-1_10.ckpt").read_bytes() == b"weights"
    assert seen[0].file_name == str(cache / "train" / "exported" / "vgg16")


def test_missing_moxing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "moxing", None)  # import moxing -> ImportError
    with pytest.raises(UserError, match="moxing, which is only available on ModelArts") as err:
        load_file_api()
    assert "\n" not in str(err.value)


@pytest.mark.e2e
def test_train_without_moxing_says_so_in_one_line(tmp_path):
    result = run_python("train.py", "--config_path=cifar10_config.yaml",
                        "--enable_modelarts=True", f"--data_url={tmp_path}", cwd=tmp_path,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: enable_modelarts=True needs moxing"), result.stderr
    assert "Traceback" not in result.stderr


PROBE_MODELARTS_OFF = """
import sys
import train
called = []
train.train = called.append
sys.argv = ["train.py", "--config_path=cifar10_config.yaml", "--data_dir=nowhere"]
train.main()
assert len(called) == 1 and called[0].data_dir == "nowhere", called
loaded = [m for m in ("moxing", "model_utils.moxing_adapter") if m in sys.modules]
assert not loaded, loaded
print("untouched")
"""


def test_nothing_of_it_runs_when_modelarts_is_off(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", PROBE_MODELARTS_OFF], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "untouched" in result.stdout, result.stderr
