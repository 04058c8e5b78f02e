"""Builds the oneDNN convolution operators used by ``src.fast_conv``.

Run once at install time (it is quick and idempotent)::

    python -m src.ops.build            # build if missing or out of date
    python -m src.ops.build --force    # rebuild

What it does:

1. Gets oneDNN 3.9 public headers: ``pip download --no-deps onednn-devel==2025.3.0`` into a
   temporary folder, checks the wheel's SHA-256 and copies only the headers (the wheel's
   own library is never installed: it would pull gigabytes of dependencies, and a second
   ``libdnnl.so.3`` cannot be loaded beside MindSpore's anyway).
2. Writes a ``dnnl_config.h`` that matches the oneDNN MindSpore ships: CPU runtime
   THREADPOOL, no GPU runtime.
3. Compiles ``onednn_conv.cc`` with optimisation into ``src/ops/_build/libfastconv.so``,
   linked against ``mindspore/lib/libdnnl.so.3`` (with that folder as its RUNPATH).

Every failure ends in one line on stderr and exit status 1; ``src.fast_conv`` then falls
back to the stock convolution and says why in one line.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(HERE, "_build")
INCLUDE_DIR = os.path.join(BUILD_DIR, "include")
SOURCE = os.path.join(HERE, "onednn_conv.cc")
LIB_NAME = "libfastconv.so"
LIB_PATH = os.path.join(BUILD_DIR, LIB_NAME)
STAMP = os.path.join(BUILD_DIR, "build.stamp")

WHEEL_REQ = "onednn-devel==2025.3.0"
WHEEL_SHA256 = "3897b4ae65f09e289c10eef98455de069b08b5ac670a34921d406018362f5c95"
# Headers taken from the wheel (oneapi/dnnl/...); dnnl_config.h is written here instead.
HEADERS = (
    "dnnl.h", "dnnl.hpp", "dnnl_common.h", "dnnl_common.hpp", "dnnl_common_types.h",
    "dnnl_types.h", "dnnl_debug.h", "dnnl_version.h", "dnnl_version_hash.h",
    "dnnl_threadpool.h", "dnnl_threadpool.hpp", "dnnl_threadpool_iface.hpp",
)

DNNL_CONFIG_H = """\
/* Written by src/ops/build.py: matches the oneDNN shipped with MindSpore
 * (CPU runtime THREADPOOL, no GPU). */
#ifndef ONEAPI_DNNL_DNNL_CONFIG_H
#define ONEAPI_DNNL_DNNL_CONFIG_H

#if defined(__GNUC__)
#define DNNL_HELPER_DLL_IMPORT __attribute__((visibility("default")))
#define DNNL_HELPER_DLL_EXPORT __attribute__((visibility("default")))
#define DNNL_DEPRECATED __attribute__((deprecated))
#else
#define DNNL_HELPER_DLL_IMPORT
#define DNNL_HELPER_DLL_EXPORT
#define DNNL_DEPRECATED
#endif
#define DNNL_API

#define DNNL_RUNTIME_NONE 0u
#define DNNL_RUNTIME_SEQ 1u
#define DNNL_RUNTIME_OMP 2u
#define DNNL_RUNTIME_TBB 4u
#define DNNL_RUNTIME_THREADPOOL 8u
#define DNNL_RUNTIME_OCL 256u
#define DNNL_RUNTIME_SYCL 512u
#define DNNL_RUNTIME_DPCPP DNNL_RUNTIME_SYCL

#define DNNL_VENDOR_NONE 0u
#define DNNL_VENDOR_INTEL 1u
#define DNNL_VENDOR_NVIDIA 2u
#define DNNL_VENDOR_AMD 4u
#define DNNL_VENDOR_GENERIC 8u

#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_THREADPOOL
#define DNNL_CPU_RUNTIME DNNL_RUNTIME_THREADPOOL
#define DNNL_GPU_RUNTIME DNNL_RUNTIME_NONE
#define DNNL_GPU_VENDOR DNNL_VENDOR_NONE

#endif /* ONEAPI_DNNL_DNNL_CONFIG_H */
"""


class BuildError(RuntimeError):
    """A build step failed; the message is one line."""


def mindspore_lib_dir():
    """Folder of the MindSpore package's shared libraries (holds libdnnl.so.3)."""
    import importlib.util
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.origin:
        raise BuildError("mindspore is not installed")
    lib_dir = os.path.join(os.path.dirname(spec.origin), "lib")
    if not os.path.isfile(os.path.join(lib_dir, "libdnnl.so.3")):
        raise BuildError(f"libdnnl.so.3 not found in {lib_dir}")
    return lib_dir


def find_compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise BuildError("no C++ compiler found (set CXX or install g++)")


def fetch_headers(force=False):
    """Puts the oneDNN headers under _build/include/oneapi/dnnl (once)."""
    dest = os.path.join(INCLUDE_DIR, "oneapi", "dnnl")
    if not force and all(os.path.isfile(os.path.join(dest, h)) for h in HEADERS + ("dnnl_config.h",)):
        return INCLUDE_DIR
    with tempfile.TemporaryDirectory(prefix="onednn_hdr_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-q", "-d", tmp, WHEEL_REQ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise BuildError(f"pip download {WHEEL_REQ} failed: {last}")
        wheel = os.path.join(tmp, wheels[0])
        with open(wheel, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != WHEEL_SHA256:
            raise BuildError(f"{wheels[0]} has SHA-256 {digest}, expected {WHEEL_SHA256}")
        os.makedirs(dest, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            names = {os.path.basename(n): n for n in zf.namelist()
                     if "/include/oneapi/dnnl/" in n}
            for header in HEADERS:
                if header not in names:
                    raise BuildError(f"{header} missing from {wheels[0]}")
                with zf.open(names[header]) as src, open(os.path.join(dest, header), "wb") as out:
                    shutil.copyfileobj(src, out)
    with open(os.path.join(dest, "dnnl_config.h"), "w") as f:
        f.write(DNNL_CONFIG_H)
    return INCLUDE_DIR


def _stamp_text(cxx, lib_dir):
    with open(SOURCE, "rb") as f:
        src_hash = hashlib.sha256(f.read()).hexdigest()
    return f"{src_hash} {cxx} {lib_dir}\n"


def up_to_date():
    try:
        with open(STAMP) as f:
            stamp = f.read()
        return os.path.isfile(LIB_PATH) and stamp == _stamp_text(find_compiler(), mindspore_lib_dir())
    except (OSError, BuildError):
        return False


def build(force=False, verbose=False):
    """Builds the library if needed; returns its absolute path or raises BuildError."""
    cxx = find_compiler()
    lib_dir = mindspore_lib_dir()
    if not force and up_to_date():
        return LIB_PATH
    include = fetch_headers(force=force)
    os.makedirs(BUILD_DIR, exist_ok=True)
    tmp_out = LIB_PATH + f".tmp{os.getpid()}"
    cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
           "-Wall", "-Wno-unused-parameter",
           "-I", include, SOURCE, "-o", tmp_out,
           "-L", lib_dir, "-l:libdnnl.so.3", f"-Wl,-rpath,{lib_dir}", "-pthread"]
    if verbose:
        print(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [l for l in proc.stderr.splitlines() if "error" in l] or proc.stderr.splitlines() or ["?"]
        raise BuildError(f"compiling {os.path.basename(SOURCE)} failed: {errors[0].strip()}")
    os.replace(tmp_out, LIB_PATH)
    with open(STAMP, "w") as f:
        f.write(_stamp_text(cxx, lib_dir))
    return LIB_PATH


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", action="store_true", help="print the compiler command")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except BuildError as exc:
        print(f"src.ops.build: {exc}", file=sys.stderr)
        return 1
    print(f"src.ops.build: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
