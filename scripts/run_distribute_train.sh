#!/bin/bash
# Data-parallel training on Ascend with an HCCL rank table: one train.py per device of this
# server, each with RANK_TABLE_FILE, RANK_SIZE, RANK_ID and DEVICE_ID, run from its own
# folder ./train_parallel<rank>/ (log in ./train_parallel<rank>/log; the sources are not
# copied). Several servers: run it on each with the same rank table (this server is found
# by its IP address, or named by SERVER_ID). Waits for all ranks; exits non-zero if any fails.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
usage: bash scripts/run_distribute_train.sh RANK_TABLE_JSON DATA_PATH [--key=value ...]
  RANK_TABLE_JSON    HCCL rank table (hccl_tools.py output: server_list[].device[])
  DATA_PATH          dataset root
  --key=value        passed to train.py (e.g. --config_path=imagenet2012_config.yaml --dataset=imagenet2012)
environment: SERVER_ID (this server's server_id in the rank table when it has several),
             BIND_CORE=0 (no taskset core binding), PYTHON (default python3)
USAGE
}

# Prints "RANK_SIZE" then "DEVICE_ID RANK_ID" per device of this server; on a bad table,
# prints the reason (one line, for vgg_fail) and returns 1.
read_rank_table() {
  python3 - "$1" "${SERVER_ID:-}" "$(hostname -I 2> /dev/null)" <<'PY'
import json, sys

path, wanted, my_ips = sys.argv[1], sys.argv[2], set(sys.argv[3].split())


def fail(reason):
    print(reason)
    sys.exit(1)


try:
    with open(path, encoding="utf-8") as handle:
        servers = json.load(handle)["server_list"]
    size = sum(len(s["device"]) for s in servers)
except (OSError, ValueError, KeyError, TypeError) as err:
    fail(f"RANK_TABLE_JSON {path}: not an HCCL rank table with server_list[].device[] ({err})")
if len(servers) == 1:
    mine = servers[0]
else:
    found = [s for s in servers if (s.get("server_id") == wanted if wanted else s.get("server_id") in my_ips)]
    if len(found) != 1:
        ids = ", ".join(str(s.get("server_id")) for s in servers)
        fail(f"RANK_TABLE_JSON {path}: cannot tell which server this is (server_id: {ids}); set SERVER_ID")
    mine = found[0]
print(size)
for device in mine["device"]:
    print(int(device["device_id"]), int(device["rank_id"]))
PY
}

vgg_require_args $# 2
rank_table=$(vgg_abs_path "$1")
data_path=$(vgg_abs_path "$2")
vgg_require_file "$rank_table" RANK_TABLE_JSON
vgg_require_dir "$data_path" DATA_PATH
vgg_split_launch_args "${@:3}"
[ ${#LAUNCH_OPTS[@]} -eq 0 ] || vgg_usage_error "launcher options (${!LAUNCH_OPTS[*]}) are for the msrun scripts; the rank table sets the devices"

table=$(read_rank_table "$rank_table") || vgg_fail "${table:-reading the rank table $rank_table failed}"
rank_size=$(head -n 1 <<< "$table")
mapfile -t devices < <(tail -n +2 <<< "$table")
local_num=${#devices[@]}
[ "$local_num" -gt 0 ] || vgg_fail "RANK_TABLE_JSON $rank_table lists no device for this server"

args=("--data_dir=$data_path" "--device_target=Ascend" "--is_distributed=1")
vgg_has_pass_arg ckpt_path || args+=("--ckpt_path=$PWD/outputs")

cores=$(nproc)
per_device=$((cores / local_num))
bind=0
if [ "${BIND_CORE:-1}" != "0" ] && command -v taskset > /dev/null && [ "$per_device" -gt 0 ]; then
  bind=1
fi

export RANK_TABLE_FILE=$rank_table RANK_SIZE=$rank_size
export PYTHONPATH="$VGG_REPO${PYTHONPATH:+:$PYTHONPATH}"
echo "rank table $rank_table: $rank_size devices in the job, $local_num on this server"

# Each rank in its own process group (job control), so that stopping a rank stops its
# data workers too.
set -m
declare -A rank_of=()
stop_ranks() {
  local pid
  for pid in "${!rank_of[@]}"; do
    kill -TERM -- "-$pid" 2> /dev/null
  done
}
trap 'stop_ranks; exit 130' INT TERM

for entry in "${devices[@]}"; do
  read -r device_id rank_id <<< "$entry"
  folder=$PWD/train_parallel$rank_id
  mkdir -p "$folder"
  prefix=()
  if [ "$bind" == "1" ]; then
    index=${#rank_of[@]}
    prefix=(taskset -c "$((index * per_device))-$((index * per_device + per_device - 1))")
  fi
  (
    cd "$folder" || exit 1
    export DEVICE_ID=$device_id RANK_ID=$rank_id
    exec "${prefix[@]}" "$VGG_PYTHON" "$VGG_REPO/train.py" "${args[@]}" "${PASS_ARGS[@]}" > log 2>&1
  ) &
  rank_of[$!]=$rank_id
  echo "rank $rank_id on device $device_id: pid $!, log $folder/log"
done

set +m  # (own groups are kept; no job-control notices)

# Wait for every rank; when one fails, stop the others (they would wait for it forever).
status=0
failed_rank=""
while [ ${#rank_of[@]} -gt 0 ]; do
  wait -n -p done_pid "${!rank_of[@]}"
  code=$?
  rank_id=${rank_of[$done_pid]}
  unset "rank_of[$done_pid]"
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    failed_rank=$rank_id
    echo "$VGG_SCRIPT_NAME: rank $rank_id failed (exit $code); stopping the other ranks" >&2
    stop_ranks
  fi
done
if [ "$status" -ne 0 ]; then
  vgg_show_errors "$PWD/train_parallel$failed_rank/log"
fi
exit "$status"
