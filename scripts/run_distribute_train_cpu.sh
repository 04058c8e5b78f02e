#!/bin/bash
# Data-parallel training on CPU: msrun starts N processes on this machine (MindSpore's CPU
# collectives average the gradients). Logs: <log_dir>/worker_<rank>.log and scheduler.log.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
usage: bash scripts/run_distribute_train_cpu.sh DATA_PATH [--key=value ...]
  DATA_PATH          dataset root (cifar10: holds cifar-10-batches-bin/)
  --key=value        passed to train.py (e.g. --config_path=cpu_quickstart_config.yaml)
launcher options (also --key=value):
  --device_num=N     processes on this machine (default: $DEVICE_NUM, else 2)
  --worker_num=N     processes in the whole job (multi-node; default: device_num)
  --node_rank=R --master_addr=HOST --master_port=PORT   multi-node (same port on every node)
  --log_dir=DIR      msrun logs (default: ./msrun_log)
environment: PYTHON (default python3), DEVICE_NUM,
             VGG_NATIVE_THREADS (native kernel threads per process; default: cores / processes)
USAGE
}

vgg_require_args $# 1
data_path=$(vgg_abs_path "$1")
vgg_require_dir "$data_path" DATA_PATH
vgg_split_launch_args "${@:2}"

args=("--data_dir=$data_path" "--device_target=CPU" "--is_distributed=1")
vgg_has_pass_arg ckpt_path || args+=("--ckpt_path=$PWD/outputs")
VGG_DEFAULT_DEVICE_NUM=2
vgg_msrun_command "$VGG_REPO/train.py" "${args[@]}" "${PASS_ARGS[@]}"
export PYTHONPATH="$VGG_REPO${PYTHONPATH:+:$PYTHONPATH}"
# The processes share this machine's cores: give each one its share of native kernel threads
# (a value set by the user wins, under the old name FAST_CONV_THREADS too).
local_num=$(vgg_local_device_num "$VGG_DEFAULT_DEVICE_NUM") || exit 1
cores=$(nproc 2>/dev/null || echo 1)
export VGG_NATIVE_THREADS=${VGG_NATIVE_THREADS:-${FAST_CONV_THREADS:-$(( cores / local_num > 0 ? cores / local_num : 1 ))}}
vgg_run_msrun
