#!/bin/bash
# Evaluate a checkpoint, a folder of checkpoints or an exported .onnx model with eval.py, in
# one process or, with RANK_SIZE=N (or --device_num=N), as an msrun job of N processes whose
# counts are summed, so both give the same numbers. Logs: ./eval.log, and for a distributed
# run msrun's per-rank logs in --log_dir (default ./eval_log/worker_<rank>.log).
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
usage: bash scripts/run_eval.sh DATA_PATH CKPT_PATH [DATASET] [DEVICE_TARGET] [--key=value ...]
  DATA_PATH      dataset root (cifar10: holds cifar-10-verify-bin/; imagenet2012: holds
                 validation_preprocess/)
  CKPT_PATH      checkpoint, folder of checkpoints (each evaluated, the best named) or .onnx
  DATASET        cifar10 (default) or imagenet2012; picks DATASET_config.yaml unless
                 --config_path is given
  DEVICE_TARGET  Ascend, GPU or CPU (default: Ascend where /dev/davinci* exists, GPU where
                 nvidia-smi works, else CPU)
  --key=value    passed to eval.py (e.g. --arch=vgg11 --image_size=32,32 --batch_size=128)
distributed (one process per device):
  RANK_SIZE=N or --device_num=N      processes on this machine
  --master_port=PORT --log_dir=DIR   msrun options (defaults: a free port, ./eval_log)
environment: PYTHON (default python3), RANK_SIZE, MASTER_PORT
USAGE
}

positional=()
while [ $# -gt 0 ] && [[ "$1" != --* ]]; do
  positional+=("$1")
  shift
done
[ ${#positional[@]} -ge 2 ] || vgg_usage_error "expected DATA_PATH and CKPT_PATH, got ${#positional[@]} argument(s)"
[ ${#positional[@]} -le 4 ] || vgg_usage_error "expected at most 4 arguments before the --key=value options, got ${#positional[@]}"

data_path=$(vgg_abs_path "${positional[0]}")
ckpt_path=$(vgg_abs_path "${positional[1]}")
dataset=${positional[2]:-cifar10}
device_target=${positional[3]:-}
vgg_require_dir "$data_path" DATA_PATH
[ -e "$ckpt_path" ] || vgg_usage_error "CKPT_PATH $ckpt_path does not exist"
case "$dataset" in
  cifar10 | imagenet2012) ;;
  *) vgg_usage_error "DATASET '$dataset' must be cifar10 or imagenet2012" ;;
esac
if [ -z "$device_target" ]; then
  if compgen -G "/dev/davinci[0-9]*" > /dev/null; then
    device_target=Ascend
  elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    device_target=GPU
  else
    device_target=CPU
  fi
fi
case "$device_target" in
  Ascend | GPU | CPU) ;;
  *) vgg_usage_error "DEVICE_TARGET '$device_target' must be Ascend, GPU or CPU" ;;
esac
vgg_split_launch_args "$@"

rank_size=${LAUNCH_OPTS[device_num]:-${RANK_SIZE:-1}}
vgg_require_uint "$rank_size" "RANK_SIZE" 1

args=("--data_dir=$data_path" "--pre_trained=$ckpt_path" "--dataset=$dataset"
      "--device_target=$device_target")
vgg_has_pass_arg config_path || args+=("--config_path=$VGG_REPO/${dataset}_config.yaml")
export PYTHONPATH="$VGG_REPO${PYTHONPATH:+:$PYTHONPATH}"
results='^(result:|after allreduce eval:|best:|eval speed)'

echo "evaluating $ckpt_path on $dataset at $data_path ($device_target, $rank_size process(es))"
if [ "$rank_size" -eq 1 ]; then
  "$VGG_PYTHON" "$VGG_REPO/eval.py" "${args[@]}" "${PASS_ARGS[@]}" > eval.log 2>&1
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "$VGG_SCRIPT_NAME: eval.py failed (exit $status); see eval.log:" >&2
    grep -E "^error:" eval.log >&2 || tail -n 5 eval.log >&2
    exit "$status"
  fi
  grep -E "$results" eval.log
  exit 0
fi

LAUNCH_OPTS[device_num]=$rank_size
[ -n "${LAUNCH_OPTS[log_dir]:-}" ] || LAUNCH_OPTS[log_dir]=$PWD/eval_log
vgg_msrun_command "$VGG_REPO/eval.py" "${args[@]}" "--is_distributed=1" "${PASS_ARGS[@]}"
vgg_run_msrun > eval.log 2>&1
status=$?
log_dir=$(vgg_abs_path "${LAUNCH_OPTS[log_dir]}")
if [ "$status" -ne 0 ]; then
  echo "$VGG_SCRIPT_NAME: the distributed evaluation failed (exit $status); see eval.log and $log_dir:" >&2
  grep -E "^---- |^error:|Error" eval.log >&2 || tail -n 5 eval.log >&2
  exit "$status"
fi
grep -hE "$results" "$log_dir"/worker_*.log
