#!/bin/bash
# Data-parallel training on GPUs (NCCL): msrun, or mpirun with USE_MPIRUN=1. Several nodes:
# run it on every node with the same --worker_num and --master_addr/--master_port and that
# node's --node_rank. Logs: <log_dir>/worker_<rank>.log (msrun) or <log_dir>/ (mpirun).
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
usage: bash scripts/run_distribute_train_gpu.sh DATA_PATH [DEVICE_NUM] [--key=value ...]
  DATA_PATH          dataset root
  DEVICE_NUM         GPUs on this machine (default: $DEVICE_NUM, else --device_num=N, else
                     the GPUs nvidia-smi lists)
  --key=value        passed to train.py (e.g. --config_path=cifar10_config.yaml --dataset=cifar10)
launcher options (also --key=value):
  --worker_num=N     processes in the whole job (several nodes; default: DEVICE_NUM)
  --node_rank=R --master_addr=HOST --master_port=PORT   several nodes (same port on every node)
  --log_dir=DIR      logs (default: ./msrun_log)
environment: USE_MPIRUN=1 (launch with mpirun -n DEVICE_NUM; MPIRUN_OPTIONS adds options such
             as "--hostfile hosts"), CUDA_VISIBLE_DEVICES, DEVICE_NUM
USAGE
}

gpu_count() {
  command -v nvidia-smi > /dev/null && nvidia-smi --list-gpus 2> /dev/null | grep -c "^GPU"
}

vgg_require_args $# 1
data_path=$(vgg_abs_path "$1")
vgg_require_dir "$data_path" DATA_PATH
shift
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  vgg_require_uint "$1" DEVICE_NUM 1
  DEVICE_NUM=$1
  shift
fi
vgg_split_launch_args "$@"
VGG_DEFAULT_DEVICE_NUM=$(gpu_count)
[ "${VGG_DEFAULT_DEVICE_NUM:-0}" -gt 0 ] 2> /dev/null || VGG_DEFAULT_DEVICE_NUM=""

args=("--data_dir=$data_path" "--device_target=GPU" "--is_distributed=1")
vgg_has_pass_arg ckpt_path || args+=("--ckpt_path=$PWD/outputs")
export PYTHONPATH="$VGG_REPO${PYTHONPATH:+:$PYTHONPATH}"

if [ "${USE_MPIRUN:-0}" == "1" ]; then
  command -v mpirun > /dev/null || vgg_fail "USE_MPIRUN=1 but mpirun is not on PATH"
  device_num=$(vgg_local_device_num "$VGG_DEFAULT_DEVICE_NUM") || exit 1
  log_dir=$(vgg_abs_path "${LAUNCH_OPTS[log_dir]:-$PWD/mpirun_log}")
  mkdir -p "$log_dir"
  # shellcheck disable=SC2086  # MPIRUN_OPTIONS is a list of options
  cmd=(mpirun -n "$device_num" --output-filename "$log_dir" --merge-stderr-to-stdout
       ${MPIRUN_OPTIONS:-} "$VGG_PYTHON" "$VGG_REPO/train.py" "${args[@]}" "${PASS_ARGS[@]}")
  echo "${cmd[*]}"
  "${cmd[@]}"
  status=$?
  [ "$status" -eq 0 ] || echo "$VGG_SCRIPT_NAME: the distributed job failed (exit $status); logs in $log_dir" >&2
  exit "$status"
fi

vgg_msrun_command "$VGG_REPO/train.py" "${args[@]}" "${PASS_ARGS[@]}"
vgg_run_msrun
