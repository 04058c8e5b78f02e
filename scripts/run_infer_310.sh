#!/bin/bash
# Offline inference of an exported model: preprocess.py -> ascend310_infer/out/main (or the
# Python runner src/infer_runner.py) -> postprocess.py. Work folders preprocess_Result/ and
# result_Files/ and the logs (build.log, preprocess.log, infer.log, postprocess.log, acc.log)
# are left in the current folder.
set -u

usage() {
  cat >&2 <<'USAGE'
usage: bash scripts/run_infer_310.sh MINDIR_PATH DATASET_NAME DATASET_PATH NEED_PREPROCESS [DEVICE_ID]
  MINDIR_PATH      exported model (.mindir; an .onnx file works with INFER_BACKEND=python)
  DATASET_NAME     cifar10 | imagenet2012
  DATASET_PATH     dataset root (cifar10: holds cifar-10-verify-bin/; imagenet2012:
                   holds validation_preprocess/, or is the folder of class folders itself)
  NEED_PREPROCESS  y: run preprocess.py into ./preprocess_Result; n: reuse ./preprocess_Result
  DEVICE_ID        device to run on (default 0)
environment:
  INFER_BACKEND    cpp (ascend310_infer, needs an Ascend device and MindSpore's C++ API) or
                   python (src/infer_runner.py, any machine); default: cpp where an Ascend
                   device is present (/dev/davinci* or npu-smi), else python
  CONFIG_PATH      YAML preprocess.py reads (default: DATASET_NAME_config.yaml)
  IMAGE_SIZE       H,W the model was exported with, when it differs from CONFIG_PATH's image_size
  DEVICE_TARGET    MindSpore device of the python backend (default CPU)
  PYTHON           Python interpreter (default python3)
USAGE
}

bad_argument() {
  echo "run_infer_310.sh: $1" >&2
  usage
  exit 1
}

fail() {
  echo "run_infer_310.sh: $1" >&2
  exit 1
}

absolute() {
  realpath -m -- "$1"
}

last_line() {
  tail -n 1 "$1" 2> /dev/null
}

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  bad_argument "expected 4 or 5 arguments, got $#"
fi
model=$(absolute "$1")
dataset_name=$2
dataset_path=$(absolute "$3")
need_preprocess=$4
device_id=${5:-0}

[ -f "$model" ] || bad_argument "MINDIR_PATH $model is not a file"
case "$dataset_name" in
  cifar10 | imagenet2012) ;;
  *) bad_argument "DATASET_NAME '$dataset_name' must be cifar10 or imagenet2012" ;;
esac
[ -d "$dataset_path" ] || bad_argument "DATASET_PATH $dataset_path is not a folder"
case "$need_preprocess" in
  y | n) ;;
  *) bad_argument "NEED_PREPROCESS '$need_preprocess' must be y or n" ;;
esac
[[ "$device_id" =~ ^[0-9]+$ ]] || bad_argument "DEVICE_ID '$device_id' must be a non-negative integer"

backend=${INFER_BACKEND:-}
if [ -z "$backend" ]; then
  if compgen -G "/dev/davinci[0-9]*" > /dev/null || command -v npu-smi > /dev/null; then
    backend=cpp
  else
    backend=python
  fi
fi
case "$backend" in
  cpp) [[ "$model" == *.mindir ]] || bad_argument "the cpp backend runs .mindir files, not $model" ;;
  python) ;;
  *) bad_argument "INFER_BACKEND '$backend' must be cpp or python" ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
config=${CONFIG_PATH:-$repo/${dataset_name}_config.yaml}
preprocess_dir=$PWD/preprocess_Result
result_dir=$PWD/result_Files

if [ "$dataset_name" == "cifar10" ]; then
  input_dir=$preprocess_dir/00_data
  label_file=$preprocess_dir/cifar10_label_ids.npy
elif [ -d "$dataset_path/validation_preprocess" ]; then
  input_dir=$dataset_path/validation_preprocess
  label_file=$preprocess_dir/imagenet_label.json
else
  input_dir=$dataset_path
  label_file=$preprocess_dir/imagenet_label.json
fi

echo "model: $model"
echo "dataset: $dataset_name at $dataset_path, preprocess: $need_preprocess, device: $device_id, backend: $backend"

if [ "$need_preprocess" == "y" ]; then
  rm -rf "$preprocess_dir"
  "$python" "$repo/preprocess.py" --config_path="$config" --dataset="$dataset_name" \
    --data_dir="$dataset_path" --result_path="$preprocess_dir" ${IMAGE_SIZE:+--image_size="$IMAGE_SIZE"} \
    > preprocess.log 2>&1 || fail "preprocess failed (see preprocess.log): $(last_line preprocess.log)"
elif [ ! -f "$label_file" ]; then
  fail "NEED_PREPROCESS=n but $label_file is missing; run with NEED_PREPROCESS=y first"
fi

rm -rf "$result_dir"
if [ "$backend" == "cpp" ]; then
  bash "$repo/ascend310_infer/build.sh" > build.log 2>&1 || fail "building ascend310_infer failed (see build.log): $(last_line build.log)"
  app=${BUILD_DIR:-$repo/ascend310_infer/out}/main
  "$app" --mindir_path="$model" --dataset_name="$dataset_name" --input0_path="$input_dir" \
    --device_id="$device_id" --output_path="$result_dir" > infer.log 2>&1 \
    || fail "inference failed (see infer.log): $(last_line infer.log)"
else
  "$python" -m src.infer_runner --model="$model" --dataset_name="$dataset_name" --input_dir="$input_dir" \
    --output_dir="$result_dir" --device_target="${DEVICE_TARGET:-CPU}" --device_id="$device_id" \
    > infer.log 2>&1 || fail "inference failed (see infer.log): $(last_line infer.log)"
fi
grep "avg time" infer.log

"$python" "$repo/postprocess.py" --dataset="$dataset_name" --result_path="$result_dir" \
  --label_path="$label_file" --acc_log=acc.log > postprocess.log 2>&1 \
  || fail "postprocess failed (see postprocess.log): $(last_line postprocess.log)"
cat acc.log
