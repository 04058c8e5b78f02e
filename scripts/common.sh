#!/bin/bash
# Shared helpers of the launch scripts (source it; it runs nothing by itself): argument
# checks, absolute paths, splitting launcher options from program options, and assembling
# and running an msrun command.
#
#   source "$(dirname "$0")/common.sh"
#   usage() { echo "usage: ..."; }          # the caller's own usage text
#   vgg_require_args $# 1                   # at least 1 positional argument
#   data=$(vgg_abs_path "$1"); vgg_require_dir "$data" DATA_PATH
#   vgg_split_launch_args "${@:2}"          # -> LAUNCH_OPTS[...] and PASS_ARGS[@]
#   vgg_msrun_command "$VGG_REPO/train.py" "${PASS_ARGS[@]}"   # -> MSRUN_CMD[@] (finds msrun)
#   vgg_run_msrun                           # runs it; on failure shows the failing ranks

VGG_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VGG_PYTHON=${PYTHON:-python3}
VGG_SCRIPT_NAME=$(basename "$0")

# Options that belong to the launcher (msrun), not to the program it starts. device_num is
# the scripts' own name for the number of devices (workers) on this machine.
VGG_LAUNCH_KEYS=(worker_num local_worker_num master_addr master_port node_rank log_dir join
                 cluster_time_out bind_core tail_worker_log device_num)

# Program options whose values are paths: made absolute, because ranks may run elsewhere.
VGG_PATH_KEYS=(config_path data_dir eval_data_dir data_list ckpt_path pre_trained resume
               ckpt_file result_path label_path output_path)

declare -gA LAUNCH_OPTS=()
declare -ga PASS_ARGS=()
declare -ga MSRUN_CMD=()

vgg_fail() {
  echo "$VGG_SCRIPT_NAME: $1" >&2
  exit 1
}

# An argument error: the message, then the caller's usage() (when defined), exit 1.
vgg_usage_error() {
  echo "$VGG_SCRIPT_NAME: $1" >&2
  if declare -F usage > /dev/null; then
    usage >&2
  fi
  exit 1
}

# vgg_require_args COUNT MIN [MAX]
vgg_require_args() {
  local count=$1 min=$2 max=${3:-}
  if [ "$count" -lt "$min" ]; then
    vgg_usage_error "expected at least $min argument(s), got $count"
  fi
  if [ -n "$max" ] && [ "$count" -gt "$max" ]; then
    vgg_usage_error "expected at most $max argument(s), got $count"
  fi
}

vgg_abs_path() {
  realpath -m -- "$1"
}

# vgg_require_file PATH WHAT / vgg_require_dir PATH WHAT
vgg_require_file() {
  [ -f "$1" ] || vgg_usage_error "$2 $1 is not a file"
}

vgg_require_dir() {
  [ -d "$1" ] || vgg_usage_error "$2 $1 is not a folder"
}

# vgg_require_uint VALUE NAME [MIN]
vgg_require_uint() {
  local value=$1 name=$2 min=${3:-0}
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt "$min" ]; then
    vgg_usage_error "$name '$value' must be an integer >= $min"
  fi
}

_vgg_is_launch_key() {
  local key
  for key in "${VGG_LAUNCH_KEYS[@]}"; do
    [ "$key" == "$1" ] && return 0
  done
  return 1
}

_vgg_is_path_key() {
  local key
  for key in "${VGG_PATH_KEYS[@]}"; do
    [ "$key" == "$1" ] && return 0
  done
  return 1
}

# Sort `--key=value` arguments into LAUNCH_OPTS (launcher keys) and PASS_ARGS (everything
# else, for the program; path values made absolute). Anything not of that form is an error.
vgg_split_launch_args() {
  LAUNCH_OPTS=()
  PASS_ARGS=()
  local arg key value
  for arg in "$@"; do
    if ! [[ "$arg" =~ ^--([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      vgg_usage_error "argument '$arg' is not of the form --key=value"
    fi
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    if _vgg_is_launch_key "$key"; then
      LAUNCH_OPTS[$key]=$value
    elif [ "$key" == "config_path" ] && [ ! -e "$value" ] && [ -e "$VGG_REPO/$value" ]; then
      PASS_ARGS+=("--$key=$VGG_REPO/$value")  # as train.py does: repository-relative
    elif _vgg_is_path_key "$key" && [ -n "$value" ]; then
      PASS_ARGS+=("--$key=$(vgg_abs_path "$value")")
    else
      PASS_ARGS+=("$arg")
    fi
  done
}

# True when PASS_ARGS already sets --KEY.
vgg_has_pass_arg() {
  local arg
  for arg in "${PASS_ARGS[@]}"; do
    [[ "$arg" == "--$1="* ]] && return 0
  done
  return 1
}

# A TCP port nobody listens on now (msrun's scheduler port).
vgg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# Devices (workers) on this machine: --device_num=N, else $DEVICE_NUM, else DEFAULT.
vgg_local_device_num() {
  local count=${LAUNCH_OPTS[device_num]:-${LAUNCH_OPTS[local_worker_num]:-${DEVICE_NUM:-$1}}}
  [ -n "$count" ] || vgg_usage_error "set the number of devices with DEVICE_NUM=N or --device_num=N"
  vgg_require_uint "$count" "device count" 1
  echo "$count"
}

# Sets VGG_MSRUN to msrun's path, or fails in one line: msrun on PATH, else the one beside
# $PYTHON's interpreter (pip installs it there: a venv or pyenv folder need not be on PATH).
# In the second case that folder is put first on PATH, because msrun starts every rank as
# `python` from PATH.
vgg_require_msrun() {
  local dir
  VGG_MSRUN=$(command -v msrun) && return 0
  dir=$("$VGG_PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))' 2> /dev/null)
  if [ -n "$dir" ] && [ -x "$dir/msrun" ]; then
    VGG_MSRUN=$dir/msrun
    export PATH="$dir:$PATH"
    return 0
  fi
  vgg_fail "msrun not found on PATH or beside $VGG_PYTHON's interpreter${dir:+ ($dir)}; it comes with the mindspore package: set PYTHON to the python that has it"
}

# vgg_msrun_command SCRIPT [ARGS...] -> MSRUN_CMD, from LAUNCH_OPTS. Single node by default:
# worker_num = local_worker_num = device count, master 127.0.0.1, a free port, node_rank 0;
# the console shows local worker 0 only (the others' errors are shown when the job fails).
vgg_msrun_command() {
  local local_num total addr port node log_dir
  vgg_require_msrun
  local_num=$(vgg_local_device_num "${VGG_DEFAULT_DEVICE_NUM:-}") || exit 1
  total=${LAUNCH_OPTS[worker_num]:-$local_num}
  addr=${LAUNCH_OPTS[master_addr]:-127.0.0.1}
  port=${LAUNCH_OPTS[master_port]:-${MASTER_PORT:-}}
  node=${LAUNCH_OPTS[node_rank]:-0}
  log_dir=$(vgg_abs_path "${LAUNCH_OPTS[log_dir]:-$PWD/msrun_log}")
  vgg_require_uint "$total" "--worker_num" "$local_num"
  vgg_require_uint "$node" "--node_rank"
  if [ -z "$port" ]; then
    [ "$total" -eq "$local_num" ] || vgg_usage_error "a multi-node job needs --master_port=PORT (the same on every node)"
    port=$(vgg_free_port) || vgg_fail "could not find a free port; pass --master_port=PORT"
  fi
  vgg_require_uint "$port" "--master_port" 1024
  MSRUN_CMD=("$VGG_MSRUN" "--worker_num=$total" "--local_worker_num=$local_num" "--master_addr=$addr"
             "--master_port=$port" "--node_rank=$node" "--log_dir=$log_dir"
             "--join=${LAUNCH_OPTS[join]:-True}" "--tail_worker_log=${LAUNCH_OPTS[tail_worker_log]:-0}"
             "--cluster_time_out=${LAUNCH_OPTS[cluster_time_out]:-${CLUSTER_TIME_OUT:-300}}")
  if [ -n "${LAUNCH_OPTS[bind_core]:-}" ]; then
    MSRUN_CMD+=("--bind_core=${LAUNCH_OPTS[bind_core]}")
  fi
  MSRUN_CMD+=("$@")
}

# Print, for each log file given, its error lines (or its last lines when it has none).
vgg_show_errors() {
  local log lines
  for log in "$@"; do
    [ -f "$log" ] || continue
    lines=$(grep -E "^error:|Error|Traceback" "$log" | grep -v "^\[WARNING\]" | tail -n 5)
    if [ -n "$lines" ]; then
      echo "---- $log:" >&2
      echo "$lines" >&2
    fi
  done
}

# Run MSRUN_CMD in the foreground; on failure name the msrun logs and show their errors.
vgg_run_msrun() {
  local log_dir status
  log_dir=$(printf '%s\n' "${MSRUN_CMD[@]}" | sed -n 's/^--log_dir=//p')
  echo "${MSRUN_CMD[*]}"
  "${MSRUN_CMD[@]}"
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "$VGG_SCRIPT_NAME: the distributed job failed (exit $status); logs in $log_dir" >&2
    vgg_show_errors "$log_dir"/worker_*.log
  fi
  return "$status"
}
