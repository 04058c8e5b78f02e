#!/bin/bash
# Training on one device: train.py in the foreground, its output also in ./train_standalone.log.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
usage: bash scripts/run_standalone_train.sh DATA_PATH [DEVICE_ID] [--key=value ...]
  DATA_PATH          dataset root
  DEVICE_ID          device index (default 0; ignored on CPU)
  --key=value        passed to train.py (e.g. --config_path=cifar10_config.yaml --device_target=GPU)
environment: PYTHON (default python3)
USAGE
}

vgg_require_args $# 1
data_path=$(vgg_abs_path "$1")
vgg_require_dir "$data_path" DATA_PATH
shift
device_id=0
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  vgg_require_uint "$1" DEVICE_ID
  device_id=$1
  shift
fi
vgg_split_launch_args "$@"
[ ${#LAUNCH_OPTS[@]} -eq 0 ] || vgg_usage_error "launcher options (${!LAUNCH_OPTS[*]}) are for the distributed scripts"

export PYTHONPATH="$VGG_REPO${PYTHONPATH:+:$PYTHONPATH}"
cmd=("$VGG_PYTHON" "$VGG_REPO/train.py" "--data_dir=$data_path" "--device_id=$device_id"
     "${PASS_ARGS[@]}")
echo "${cmd[*]}"
"${cmd[@]}" 2>&1 | tee train_standalone.log
exit "${PIPESTATUS[0]}"
