"""Builds the native oneDNN kernels used by ``src.fast_conv`` (``_build/libfastconv.so``).

Run once after installing the requirements (a few seconds; idempotent)::

    python -m src.ops.build            # build if missing or out of date
    python -m src.ops.build --force    # rebuild
    python -m src.ops.build --strict   # a failed build is an error (exit status 1): for CI

It needs only a C++ compiler (``$CXX`` when set, else ``g++``, ``c++`` or ``clang++`` on
``PATH``) and the installed MindSpore package; nothing is downloaded:

- headers: the oneDNN public headers vendored in ``third_party/onednn/include`` (Apache-2.0;
  provenance and license beside them), with a ``dnnl_config.h`` that matches the oneDNN
  MindSpore ships (CPU runtime THREADPOOL, no GPU);
- library: ``mindspore/lib/libdnnl.so.3``, MindSpore's own oneDNN, linked with that folder
  as the RUNPATH (a second ``libdnnl.so.3`` cannot be loaded beside MindSpore's).

Where it cannot build (no compiler, no MindSpore, a compile error) it prints one line on
stderr, ``src.ops.build: cannot build the native kernels (<reason>); training will use
MindSpore's own kernels``, and exits 0 so that the next command runs; ``src.fast_conv``
then falls back to MindSpore's own kernels (same results, slower). ``--strict`` prints the
same line and exits 1.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(HERE, "_build")
INCLUDE_DIR = os.path.join(HERE, "third_party", "onednn", "include")
SOURCE = os.path.join(HERE, "onednn_conv.cc")
LIB_NAME = "libfastconv.so"
LIB_PATH = os.path.join(BUILD_DIR, LIB_NAME)
STAMP = os.path.join(BUILD_DIR, "build.stamp")
COMPILERS = ("g++", "c++", "clang++")


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
    """Absolute path of the C++ compiler: $CXX when set (and only it), else the first of
    g++, c++, clang++ on PATH."""
    chosen = os.environ.get("CXX", "").strip()
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise BuildError(f"CXX={chosen} is not an executable program")
        return path
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("no C++ compiler found: install g++ or set CXX")


def vendored_headers():
    """Every file under the vendored include folder, sorted (relative paths)."""
    found = []
    for root, _, files in os.walk(INCLUDE_DIR):
        found += [os.path.relpath(os.path.join(root, name), INCLUDE_DIR) for name in files]
    if not found:
        raise BuildError(f"the vendored oneDNN headers are missing from {INCLUDE_DIR}")
    return sorted(found)


def _stamp_text(cxx, lib_dir):
    digest = hashlib.sha256()
    for path in [SOURCE] + [os.path.join(INCLUDE_DIR, h) for h in vendored_headers()]:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return f"{digest.hexdigest()} {cxx} {lib_dir}\n"


def up_to_date(cxx, lib_dir):
    try:
        with open(STAMP) as handle:
            return os.path.isfile(LIB_PATH) and handle.read() == _stamp_text(cxx, lib_dir)
    except OSError:
        return False


def build(force=False, verbose=False):
    """Builds the library if needed; returns its absolute path or raises BuildError."""
    cxx = find_compiler()
    lib_dir = mindspore_lib_dir()
    if not force and up_to_date(cxx, lib_dir):
        return LIB_PATH
    os.makedirs(BUILD_DIR, exist_ok=True)
    tmp_out = LIB_PATH + f".tmp{os.getpid()}"
    cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
           "-Wall", "-Wno-unused-parameter",
           "-I", INCLUDE_DIR, SOURCE, "-o", tmp_out,
           "-L", lib_dir, "-l:libdnnl.so.3", f"-Wl,-rpath,{lib_dir}", "-pthread"]
    if verbose:
        print(" ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"cannot run {cxx}: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        if os.path.exists(tmp_out):
            os.remove(tmp_out)
        errors = [l for l in proc.stderr.splitlines() if "error" in l] or proc.stderr.splitlines() or ["?"]
        raise BuildError(f"compiling {os.path.basename(SOURCE)} failed: {errors[0].strip()}")
    os.replace(tmp_out, LIB_PATH)
    with open(STAMP, "w") as handle:
        handle.write(_stamp_text(cxx, lib_dir))
    return LIB_PATH


def failure_line(reason):
    """The one line printed when the library cannot be built."""
    if os.path.isfile(LIB_PATH):
        outcome = f"the library built earlier stays in use: {LIB_PATH}"
    else:
        outcome = "training will use MindSpore's own kernels"
    return f"src.ops.build: cannot build the native kernels ({reason}); {outcome}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", action="store_true", help="print the compiler command")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when the library cannot be built (CI); by "
                             "default the reason is printed and the exit status is 0")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except BuildError as exc:
        print(failure_line(exc), file=sys.stderr)
        return 1 if args.strict else 0
    print(f"src.ops.build: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
