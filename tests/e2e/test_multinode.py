"""Multi-node training for real: test_distributed's 2-process CPU job run as two nodes would run
it, one msrun launcher per node (scripts/run_distribute_train_cpu.sh with --worker_num=2,
--device_num=1, --node_rank 0 and 1, one master address and port), each launcher in its own
working folder with its own data copy, checkpoints and logs."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import (
    JOB_BATCH,
    JOB_RECORDS,
    JOB_TIMEOUT,
    JOB_TRAIN_ARGS,
    REPO,
    checkpoint_arrays,
    free_port,
    interpreter_env,
    job_output,
    needs_msrun,
)
from tests.unit.test_distributed import per_rank_run  # noqa: F401  (the one-launcher run)

# msrun starts a scheduler wherever the master address is one of the host's own (listed by
# `ip -j addr`, else the source address of a socket towards it). 127.0.0.1 is that for both
# launchers on one machine: both start one and the second fails on "Address already in use".
# 127.0.0.2 reaches this machine's loopback (Linux routes all of 127/8 there) but is not one
# of its listed addresses, so to node 1 it is another machine's; node 0 gets a stand-in `ip`
# that lists it, as the master's own host would.
MASTER_ADDR = "127.0.0.2"
NODE0_ADDRESSES = [{"ifname": "lo", "addr_info": [{"family": "inet", "local": MASTER_ADDR}]}]
GRACE = 20  # seconds a launcher gets to stop its ranks after a Ctrl-C


def loopback_alias_works():
    try:
        with socket.socket() as sock:
            sock.bind((MASTER_ADDR, 0))
        return True
    except OSError:
        return False


needs_loopback_alias = pytest.mark.skipif(
    not loopback_alias_works(), reason=f"{MASTER_ADDR} does not reach this machine's loopback")


def native_threads():
    """Native kernel threads per process of the one-launcher run (the script's share: the
    cores over its 2 processes): the same here, so that both runs compute alike."""
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    return (os.environ.get("VGG_NATIVE_THREADS") or os.environ.get("FAST_CONV_THREADS")
            or str(max(1, cores // 2)))


def node_env(node_dir, node_rank):
    env = interpreter_env(VGG_NATIVE_THREADS=native_threads())
    if node_rank == 0:
        bin_dir = node_dir / "bin"
        bin_dir.mkdir()
        # msrun's one use of ip: `ip -j addr`, the host's addresses
        (bin_dir / "ip").write_text(f"#!/bin/sh\necho '{json.dumps(NODE0_ADDRESSES)}'\n")
        (bin_dir / "ip").chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def start_node(data, node_dir, node_rank, port):
    """Node `node_rank`'s launcher in node_dir, its own process group: checkpoints in
    node_dir/run, msrun's logs in node_dir/msrun_log, its console in node_dir/launcher.log."""
    node_dir.mkdir()
    shutil.copytree(data, node_dir / "data")
    command = ["bash", os.path.join(REPO, "scripts", "run_distribute_train_cpu.sh"),
               str(node_dir / "data"), "--device_num=1", "--worker_num=2",
               f"--node_rank={node_rank}", f"--master_addr={MASTER_ADDR}",
               f"--master_port={port}", f"--log_dir={node_dir / 'msrun_log'}",
               f"--cluster_time_out={JOB_TIMEOUT // 2}", *JOB_TRAIN_ARGS,
               f"--ckpt_path={node_dir / 'run'}", "--is_save_on_master=False"]
    with open(node_dir / "launcher.log", "w") as console:
        return subprocess.Popen(command, cwd=node_dir, stdout=console, stderr=subprocess.STDOUT,
                                env=node_env(node_dir, node_rank), start_new_session=True)


def stop(launcher):
    """Ctrl-C to a launcher (msrun then kills its ranks, which run in sessions of their own),
    then SIGKILL to what is left of its process group."""
    for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGKILL, 5)):
        try:
            os.killpg(launcher.pid, sig)
            launcher.wait(wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def wait_for(launchers, timeout):
    """The launchers' exit statuses, None for one stopped at the deadline."""
    deadline = time.monotonic() + timeout
    statuses = []
    for launcher in launchers:
        try:
            statuses.append(launcher.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            stop(launcher)
            statuses.append(None)
    return statuses


def report(node_dirs, statuses):
    """Each node's exit status, launcher console and msrun log tails, for a failure message."""
    text = ""
    for rank, (node_dir, status) in enumerate(zip(node_dirs, statuses)):
        shown = f"stopped after {JOB_TIMEOUT} s" if status is None else f"exit {status}"
        console = (node_dir / "launcher.log").read_text(errors="replace")
        result = subprocess.CompletedProcess([], status, stdout=console, stderr="")
        text += f"\n======== node {rank} ({shown}): {node_dir}\n" + job_output(result, node_dir)
    return text


@pytest.fixture
def two_node_run(id_coded_cifar, tmp_path):
    """The per_rank_run job as two nodes of one process each, started together."""
    node_dirs = [tmp_path / "node0", tmp_path / "node1"]
    port = free_port()
    launchers = [start_node(id_coded_cifar, node_dir, rank, port)
                 for rank, node_dir in enumerate(node_dirs)]
    statuses = wait_for(launchers, JOB_TIMEOUT)
    assert statuses == [0, 0], report(node_dirs, statuses)
    return node_dirs


@needs_msrun
@needs_loopback_alias
def test_two_launchers_train_as_one(per_rank_run, two_node_run):  # noqa: F811
    reference_dir, _ = per_rank_run
    steps = JOB_RECORDS // (2 * JOB_BATCH)
    for rank, node_dir in enumerate(two_node_run):
        # rank r ran under launcher r: its msrun log, training log and checkpoints are in
        # node r's folders alone, and only node 0 ran the scheduler
        logs = sorted(p.name for p in (node_dir / "msrun_log").iterdir())
        assert logs == (["scheduler.log", "worker_0.log"] if rank == 0 else ["worker_1.log"])
        assert f"rank {rank} of 2" in (node_dir / "run" / f"train_rank{rank}.log").read_text()
        assert [p.name for p in (node_dir / "run").glob("rank_*")] == [f"rank_{rank}"]
        name = f"rank_{rank}/vgg11-1_{steps}.ckpt"
        two_nodes = checkpoint_arrays(node_dir / "run" / name)
        one_launcher = checkpoint_arrays(reference_dir / name)
        assert two_nodes.keys() == one_launcher.keys()
        # bit-identical: the same data shards, seeds, kernels and thread counts, and a 2-way
        # allreduce is a single addition, the same in either order
        different = {key: float(np.abs(two_nodes[key] - one_launcher[key]).max())
                     for key in two_nodes if not np.array_equal(two_nodes[key], one_launcher[key])}
        assert not different, f"rank {rank} differs from the one-launcher run: {different}"
