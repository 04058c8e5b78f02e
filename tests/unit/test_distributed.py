"""Distributed training and evaluation on this machine: 2-process CPU jobs launched with msrun
(through scripts/run_distribute_train_cpu.sh) on small generated data (marked e2e), plus the
data sharding and the launch scripts' argument handling and command assembly, checked with
stand-ins for msrun, mpirun and the Python interpreter."""
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import (
    JOB_BATCH,
    JOB_NET_ARGS,
    JOB_RECORDS,
    JOB_TIMEOUT,
    JOB_TRAIN_ARGS,
    MSRUN,
    REPO,
    checkpoint_arrays,
    free_port,
    interpreter_env,
    job_output,
    launch_cpu_training,
    needs_msrun,
    run_bash,
    run_python,
)

# MindSpore's own convolution compiles faster than the project's oneDNN cells: used by the
# runs that check the launch machinery rather than the training result
QUICK = ["--native_kernels=off"]


@pytest.fixture(scope="module")
def per_rank_run(id_coded_cifar, tmp_path_factory):
    """A 2-process run in which every rank saves its own checkpoint (is_save_on_master=False)."""
    workdir = tmp_path_factory.mktemp("per_rank")
    run_dir = workdir / "run"
    result = launch_cpu_training(id_coded_cifar, workdir, f"--ckpt_path={run_dir}",
                                 "--is_save_on_master=False")
    assert result.returncode == 0, job_output(result, workdir)
    return run_dir, workdir


@pytest.mark.e2e
@needs_msrun
def test_ranks_end_with_identical_parameters(per_rank_run):
    run_dir, workdir = per_rank_run
    steps = JOB_RECORDS // (2 * JOB_BATCH)
    rank0 = checkpoint_arrays(run_dir / "rank_0" / f"vgg11-1_{steps}.ckpt")
    rank1 = checkpoint_arrays(run_dir / "rank_1" / f"vgg11-1_{steps}.ckpt")
    assert rank0.keys() == rank1.keys()
    assert any(name.startswith("moments.") and np.abs(value).max() > 0
               for name, value in rank0.items()), "no gradient reached the optimizer"
    different = [name for name in rank0 if not np.array_equal(rank0[name], rank1[name])]
    assert not different, f"ranks diverged in {different[:5]}"
    # each rank took half of the epoch's steps, and each wrote its own log
    log0 = (run_dir / "train_rank0.log").read_text()
    assert f"1 epochs x {steps} steps, batch {JOB_BATCH} x 2 device(s)" in log0
    assert re.search(rf"epoch: 1 step: {steps}, loss is \d", log0)
    assert "rank 1 of 2" in (run_dir / "train_rank1.log").read_text()
    # only rank 0 writes to the console: msrun's worker_1.log holds no progress lines
    assert "loss is" not in (workdir / "msrun_log" / "worker_1.log").read_text()


def center_values(dataset):
    """Per batch row, the centre pixel of channel 0 (a function of the record id only)."""
    values = []
    for image, _ in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
        values.extend(np.round(image[:, 0, 16, 16], 4).tolist())
    return values


def test_each_rank_reads_a_disjoint_half_of_every_epoch(id_coded_cifar):
    from model_utils.config import get_config
    from src.factory import build_dataset
    from src.runtime import Runtime

    config = get_config(JOB_TRAIN_ARGS + [f"--data_dir={id_coded_cifar}", "--num_workers=1"])
    for epoch in (0, 1):
        shards = [center_values(build_dataset(config, training=True, epoch=epoch,
                                              runtime=Runtime("CPU", 0, rank, 2)))
                  for rank in (0, 1)]
        half = JOB_RECORDS // 2
        assert [len(s) for s in shards] == [half, half]
        assert [len(set(s)) for s in shards] == [half, half], "a record repeats within a shard"
        assert not set(shards[0]) & set(shards[1]), f"epoch {epoch}: shards overlap"
        assert len(set(shards[0]) | set(shards[1])) == JOB_RECORDS


@pytest.mark.e2e
@needs_msrun
def test_save_on_master_writes_one_checkpoint_folder(id_coded_cifar, tmp_path):
    small = tmp_path / "small"  # 2 x 16 records: one step per rank is enough here
    records = (id_coded_cifar / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    (small / "cifar-10-batches-bin").mkdir(parents=True)
    (small / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(records[:32 * 3073])
    run_dir = tmp_path / "run"
    result = launch_cpu_training(small, tmp_path, f"--ckpt_path={run_dir}",
                                 "--is_save_on_master=True", *QUICK)
    assert result.returncode == 0, job_output(result, tmp_path)
    folders = {os.path.relpath(root, run_dir) for root, _, files in os.walk(run_dir)
               if any(f.endswith(".ckpt") for f in files)}
    assert folders == {"."}
    assert not list(run_dir.glob("rank_*"))
    assert {p.name for p in run_dir.glob("train_rank*.log")} == {"train_rank0.log",
                                                                  "train_rank1.log"}


@pytest.mark.e2e
@needs_msrun
def test_crashing_rank_fails_the_job_with_its_error_shown(id_coded_cifar, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "rank_1").write_text("a file where rank 1's checkpoint folder should be")
    # MS_NODE_TIMEOUT: the scheduler gives up on the killed rank after 5 s instead of 30
    result = launch_cpu_training(id_coded_cifar, tmp_path, f"--ckpt_path={run_dir}",
                                 "--is_save_on_master=False", *QUICK, timeout=180,
                                 env={"MS_NODE_TIMEOUT": "5"})
    assert result.returncode != 0
    shown = result.stdout + result.stderr
    assert "the distributed job failed" in shown
    assert re.search(r"worker_1\.log:\nerror: output folder .*rank_1 is not writable", shown), shown


def write_image_folder(root, count):
    """An ImageNet-style folder of small PNGs in 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for index in range(count):
        folder = root / f"class_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:03d}.png")


def eval_counts(text):
    return re.findall(r"after allreduce eval: top[15]_correct=\d+, tot=\d+, acc=[\d.]+%", text)


@pytest.mark.e2e
@needs_msrun
def test_distributed_eval_counts_equal_single_process(per_rank_run, tmp_path):
    run_dir, _ = per_rank_run
    checkpoint = sorted((run_dir / "rank_0").glob("*.ckpt"))[-1]
    images = tmp_path / "images"
    write_image_folder(images, 31)  # 16 + 15: shards of unequal size
    args = JOB_NET_ARGS + QUICK + ["--dataset=imagenet2012", f"--data_dir={images}",
                                   "--batch_size=8", f"--pre_trained={checkpoint}"]
    env = interpreter_env(PYTHONPATH=REPO)
    single = run_python("eval.py", *args, cwd=tmp_path, env=env, timeout=JOB_TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    log_dir = tmp_path / "msrun_log"
    distributed = subprocess.run(
        [MSRUN, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
         f"--log_dir={log_dir}", "--join=True", os.path.join(REPO, "eval.py"), *args,
         "--is_distributed=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=JOB_TIMEOUT, check=False)
    assert distributed.returncode == 0, job_output(distributed, tmp_path)
    expected = eval_counts(single.stdout)
    assert len(expected) == 2 and "tot=31," in expected[0], single.stdout
    assert eval_counts((log_dir / "worker_0.log").read_text()) == expected
    speeds = re.findall(r"eval speed on rank \d of 2: (\d+) images",
                        (log_dir / "worker_0.log").read_text() +
                        (log_dir / "worker_1.log").read_text())
    assert sorted(map(int, speeds)) == [15, 16]


# ---------------------------------------------------------------- launch scripts, no job

def run_script(name, *args, cwd, env=None, timeout=60):
    return run_bash(os.path.join("scripts", name), *args, cwd=cwd, env=env, timeout=timeout)


def write_executable(path, text):
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def recording_stand_in(tmp_path, program):
    """A stand-in for `program` first on PATH that writes its arguments, one a line, to
    tmp_path/args; a data folder beside it. Returns the environment for the scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / program, 'printf "%s\\n" "$@" > "$ARGS_FILE"\n')
    (tmp_path / "data").mkdir()
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_FILE": str(tmp_path / "args")}


@pytest.mark.parametrize("name, args, message", [
    ("run_distribute_train_cpu.sh", [], "expected at least 1 argument"),
    ("run_distribute_train_cpu.sh", ["missing_data"], "DATA_PATH .*missing_data is not a folder"),
    ("run_distribute_train_cpu.sh", [".", "--batch_size", "8"],
     "'--batch_size' is not of the form"),
    ("run_distribute_train_cpu.sh", [".", "--device_num=0"],
     "device count '0' must be an integer >= 1"),
    ("run_distribute_train_gpu.sh", [], "expected at least 1 argument"),
    ("run_distribute_train_gpu.sh", [".", "x2"], "DEVICE_NUM 'x2' must be an integer >= 1"),
    ("run_distribute_train.sh", ["rank_table.json"], "expected at least 2 argument"),
    ("run_distribute_train.sh", ["missing.json", "."],
     "RANK_TABLE_JSON .*missing.json is not a file"),
    ("run_standalone_train.sh", [], "expected at least 1 argument"),
    ("run_standalone_train.sh", [".", "--worker_num=2"], "launcher options .* distributed scripts"),
])
def test_scripts_check_arguments_and_print_usage(tmp_path, name, args, message):
    result = run_script(name, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr
    assert "usage: bash scripts/" + name in result.stderr


def test_gpu_script_assembles_msrun_with_count_and_multinode_options(tmp_path):
    env = dict(recording_stand_in(tmp_path, "msrun"), DEVICE_NUM="4")
    result = run_script("run_distribute_train_gpu.sh", "data", "--worker_num=8", "--node_rank=1",
                        "--master_addr=10.0.0.2", "--master_port=8118", "--ckpt_path=out",
                        "--dataset=cifar10", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:6] == ["--worker_num=8", "--local_worker_num=4", "--master_addr=10.0.0.2",
                        "--master_port=8118", "--node_rank=1", f"--log_dir={tmp_path}/msrun_log"]
    train = args[args.index(os.path.join(REPO, "train.py")) + 1:]
    assert train == [f"--data_dir={tmp_path}/data", "--device_target=GPU", "--is_distributed=1",
                     f"--ckpt_path={tmp_path}/out", "--dataset=cifar10"]
    # the device count as an argument; a multi-node job without a port is refused
    result = run_script("run_distribute_train_gpu.sh", "data", "2", cwd=tmp_path, env=env)
    assert "--local_worker_num=2" in (tmp_path / "args").read_text()
    result = run_script("run_distribute_train_gpu.sh", "data", "--worker_num=8", cwd=tmp_path,
                        env=env)
    assert result.returncode != 0 and "needs --master_port" in result.stderr


def test_scripts_find_msrun_beside_python_when_path_lacks_it(tmp_path):
    """PATH without the Python install's folder (no pyenv shims, an unactivated venv): the
    scripts take msrun from beside $PYTHON and put that folder first on PATH for the ranks."""
    env_bin = tmp_path / "env" / "bin"
    env_bin.mkdir(parents=True)
    (env_bin / "python").symlink_to(sys.executable)
    write_executable(env_bin / "msrun", 'echo "python=$(command -v python)" > "$MSRUN_SEEN"\n'
                                        'printf "%s\\n" "$@" >> "$MSRUN_SEEN"\n')
    (tmp_path / "data").mkdir()
    bare_path = os.pathsep.join(d for d in ("/usr/bin", "/bin")
                                if not os.path.exists(os.path.join(d, "msrun")))
    env = {"PATH": bare_path, "PYTHON": str(env_bin / "python"),
           "MSRUN_SEEN": str(tmp_path / "seen")}
    result = run_script("run_distribute_train_cpu.sh", "data", "--master_port=8118",
                        cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "seen").read_text().splitlines()
    assert seen[0] == f"python={env_bin / 'python'}"
    assert "--worker_num=2" in seen and os.path.join(REPO, "train.py") in seen
    assert result.stdout.startswith(f"{env_bin / 'msrun'} --worker_num=2")
    # an interpreter without msrun beside it: one line that says where it looked
    other = write_executable(tmp_path / "python3", f'echo "{tmp_path}"\n')
    result = run_script("run_distribute_train_cpu.sh", "data", "--master_port=8118",
                        cwd=tmp_path, env=dict(env, PYTHON=str(other)))
    assert result.returncode != 0
    assert f"msrun not found on PATH or beside {other}'s interpreter ({tmp_path})" in \
        result.stderr, result.stderr


def test_gpu_script_with_mpirun(tmp_path):
    env = dict(recording_stand_in(tmp_path, "mpirun"), USE_MPIRUN="1",
               MPIRUN_OPTIONS="--hostfile hosts")
    result = run_script("run_distribute_train_gpu.sh", "data", "3", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["-n", "3"] and "--hostfile" in args and "--device_target=GPU" in args


RANK_TABLE = """{"version": "1.0", "server_count": "2", "status": "completed", "server_list": [
 {"server_id": "10.0.0.1", "device": [{"device_id": "0", "device_ip": "1.0.0.1", "rank_id": "0"},
                                      {"device_id": "1", "device_ip": "1.0.0.2", "rank_id": "1"}]},
 {"server_id": "10.0.0.2", "device": [{"device_id": "0", "device_ip": "1.0.0.3", "rank_id": "2"},
                                      {"device_id": "1", "device_ip": "1.0.0.4", "rank_id": "3"}]}]}
"""

FAKE_PYTHON = """\
echo "cwd=$PWD rank=$RANK_ID device=$DEVICE_ID size=$RANK_SIZE table=$RANK_TABLE_FILE"
echo "args=$*"
if [ "$RANK_ID" == "$FAIL_RANK" ]; then echo "error: rank $RANK_ID cannot go on" >&2; exit 3; fi
sleep "${SLEEP:-0}"
"""


def test_ascend_script_runs_one_process_per_device_of_this_server(tmp_path):
    (tmp_path / "rank_table.json").write_text(RANK_TABLE)
    (tmp_path / "data").mkdir()
    fake = write_executable(tmp_path / "python", FAKE_PYTHON)
    env = {"PYTHON": str(fake), "SERVER_ID": "10.0.0.2", "FAIL_RANK": "none"}
    result = run_script("run_distribute_train.sh", "rank_table.json", "data", "--dataset=cifar10",
                        cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for rank, device in ((2, 0), (3, 1)):
        log = (tmp_path / f"train_parallel{rank}" / "log").read_text()
        assert (f"cwd={tmp_path}/train_parallel{rank} rank={rank} device={device} size=4 "
                f"table={tmp_path}/rank_table.json") in log
        assert (f"args={REPO}/train.py --data_dir={tmp_path}/data --device_target=Ascend "
                f"--is_distributed=1 --ckpt_path={tmp_path}/outputs --dataset=cifar10") in log
    assert not (tmp_path / "train_parallel0").exists()
    assert not list((tmp_path / "train_parallel2").glob("*.py")), "sources copied per rank"


def test_ascend_script_stops_all_ranks_when_one_fails(tmp_path):
    (tmp_path / "rank_table.json").write_text(RANK_TABLE)
    (tmp_path / "data").mkdir()
    fake = write_executable(tmp_path / "python", FAKE_PYTHON)
    env = {"PYTHON": str(fake), "SERVER_ID": "10.0.0.1", "FAIL_RANK": "1", "SLEEP": "300"}
    result = run_script("run_distribute_train.sh", "rank_table.json", "data", cwd=tmp_path,
                        env=env, timeout=30)
    assert result.returncode == 3
    assert "rank 1 failed (exit 3)" in result.stderr
    assert "error: rank 1 cannot go on" in result.stderr
    # without SERVER_ID and with no matching address, the script cannot pick a server
    env.pop("SERVER_ID")
    result = run_script("run_distribute_train.sh", "rank_table.json", "data", cwd=tmp_path,
                        env=dict(env, SERVER_ID=""), timeout=30)
    assert result.returncode != 0 and "set SERVER_ID" in result.stderr


def test_standalone_script_passes_arguments_and_exit_status(tmp_path):
    (tmp_path / "data").mkdir()
    fake = write_executable(tmp_path / "python", 'echo "args=$*"; exit "${EXIT_CODE:-0}"\n')
    env = {"PYTHON": str(fake), "EXIT_CODE": "4"}
    result = run_script("run_standalone_train.sh", "data", "1", "--config_path=cifar10_config.yaml",
                        cwd=tmp_path, env=env)
    assert result.returncode == 4
    log = (tmp_path / "train_standalone.log").read_text()
    assert (f"args={REPO}/train.py --data_dir={tmp_path}/data --device_id=1 "
            f"--config_path={REPO}/cifar10_config.yaml") in log
