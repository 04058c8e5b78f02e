#!/bin/bash
# Builds ascend310_infer/out/main against MindSpore's C++ inference API.
# MINDSPORE_PATH (the folder holding include/api/model.h and lib/) wins; otherwise the
# location `pip show mindspore` (or mindspore-ascend) reports is tried. The plain PyPI wheel
# has no include/api headers, so on a machine without MindSpore's Ascend inference package
# this stops with one line saying where it looked and how to point it elsewhere.
# The program lands in ascend310_infer/out/main, or in $BUILD_DIR/main when that is set.
set -u
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

find_mindspore() {
  if [ -n "${MINDSPORE_PATH:-}" ]; then
    echo "$MINDSPORE_PATH"
    return
  fi
  local package location
  for package in mindspore mindspore-ascend; do
    location=$("$python" -m pip show "$package" 2>/dev/null | awk '/^Location:/ {print $2}')
    if [ -n "$location" ]; then
      echo "$location/mindspore"
      return
    fi
  done
}

ms_path=$(find_mindspore)
if [ -z "$ms_path" ]; then
  echo "build.sh: MindSpore not found (MINDSPORE_PATH unset, 'pip show mindspore' finds nothing); set MINDSPORE_PATH to the folder holding include/api/model.h and lib/" >&2
  exit 1
fi
if [ ! -f "$ms_path/include/api/model.h" ]; then
  echo "build.sh: MindSpore C++ inference API not found: no $ms_path/include/api/model.h (the PyPI wheel does not ship it); install MindSpore for Ascend and set MINDSPORE_PATH to the folder holding include/api and lib/" >&2
  exit 1
fi
if ! command -v cmake > /dev/null; then
  echo "build.sh: cmake not found; install CMake >= 3.14" >&2
  exit 1
fi

out=${BUILD_DIR:-$here/out}  # another folder keeps test builds out of the tree
rm -rf "$out"
mkdir -p "$out"
cd "$out" || exit 1
cmake "$here" -DMINDSPORE_PATH="$ms_path" ${CMAKE_ARGS:-} || exit 1
make -j"$(nproc 2>/dev/null || echo 2)" || exit 1
echo "built $out/main"
