"""The README's quick start, run as written on a fresh copy of the repository (no build
outputs: the native kernels are compiled there), reaching the accuracy the README promises;
the build from the vendored oneDNN headers alone; and the quick start on a machine where the
native kernels cannot be built (no C++ compiler).

The commands are parsed and run by benchmarks/readme_commands.py, which
benchmarks/quickstart_run.py uses too for the figures the README quotes.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import readme_commands  # noqa: E402  (path set just above)
from readme_commands import (  # noqa: E402
    final_accuracy,
    fresh_copy,
    quick_start_commands,
    run_commands,
)

QUICK_START_ACCURACY = 0.9  # the README's quick start: about 95 % on the 359 held-out digits
VENDORED = os.path.join("src", "native", "csrc", "third_party", "onednn")
NO_COMPILER = re.compile(r"src\.native\.build: cannot build the native kernels \((.+)\); "
                         r"training will use MindSpore's own kernels")


def require_compiler():
    from src.native import build as native_build
    try:
        return native_build.find_compiler()
    except native_build.BuildError as exc:
        pytest.skip(f"{exc} (the quick start without one is tested below)")


def failed(steps):
    last = steps[-1]
    return (f"`{last.command}` exited {last.returncode}:\n{last.stdout[-3000:]}\n"
            f"{last.stderr[-3000:]}")


def test_quick_start_has_setup_main_job_and_tests():
    main_job, tests = quick_start_commands()
    assert main_job[0].startswith("pip install -r requirements.txt")
    assert any(c.startswith("python train.py") for c in main_job)
    assert any(c.startswith("python eval.py") for c in main_job)
    assert tests[0].startswith("pip install -r requirements-test.txt")
    assert tests[-1].startswith("python -m pytest")
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as handle:
        ci = handle.read()
    for command in tests[1:]:
        assert command in ci, f".ci/run does not run the README's `{command}`"
    # CI fails when the native kernels do not build; the README's command goes on without
    assert "python -m src.native.build --strict" in ci


def test_fresh_copy_has_no_build_outputs(tmp_path):
    copy = fresh_copy(str(tmp_path / "repo"))
    assert os.path.isfile(os.path.join(copy, VENDORED, "include", "oneapi", "dnnl", "dnnl.hpp"))
    generated = [os.path.relpath(os.path.join(root, name), copy)
                 for root, dirs, files in os.walk(copy) for name in dirs + files
                 if name in ("_build", "outputs", "demo_data", "__pycache__", ".git")
                 or name.endswith((".so", ".ckpt", ".pyc"))]
    assert not generated


def test_quick_start_main_job_runs_in_a_fresh_copy(tmp_path):
    """The whole main job, unshortened: ~3 minutes on 2 cores."""
    require_compiler()
    copy = fresh_copy(str(tmp_path / "repo"))
    main_job, _ = quick_start_commands()
    steps = run_commands(main_job, cwd=copy, timeout=1800)
    assert len(steps) == len(main_job) and steps[-1].returncode == 0, failed(steps)
    # the native kernels were compiled in the copy, not taken from this checkout
    built = os.path.join(copy, "src", "native", "_build", "libvgg_native.so")
    build_step = next(s for s in steps if "src.native.build" in s.command)
    assert f"src.native.build: {built}" in build_step.stdout, build_step.stderr
    accuracy = final_accuracy(steps[-1].stdout)
    assert accuracy is not None, steps[-1].stdout[-2000:]
    assert accuracy >= QUICK_START_ACCURACY, steps[-1].stdout[-2000:]
    assert os.path.isfile(os.path.join(copy, "outputs", "quickstart", "metrics.png"))


BUILD_UNDER_AUDIT = textwrap.dedent("""
    import json, runpy, sys
    calls, network = [], []
    def audit(event, args):
        if event == "subprocess.Popen":
            calls.append([str(a) for a in (args[1] or [args[0]])])
        elif event in ("os.system", "os.exec", "os.posix_spawn", "os.spawn"):
            calls.append([event, str(args[0])])
        elif event.startswith(("socket.", "urllib.", "http.")):
            network.append(event)
    sys.addaudithook(audit)
    sys.argv = ["src.native.build", "--strict", "--verbose"]
    try:
        runpy.run_module("src.native.build", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    print("AUDIT " + json.dumps({"code": code, "calls": calls, "network": network}))
""")


def test_build_needs_only_a_compiler_and_the_vendored_headers(tmp_path):
    cxx = require_compiler()
    with open(os.path.join(REPO, "src", "native", "build.py"), encoding="utf-8") as handle:
        source = handle.read()
    # no download path left: no pip, no URL, no archive handling
    assert not re.search(r"[\"']pip[\"']|[\"']download[\"']|urllib|requests|https?:|socket|zipfile",
                         source)
    copy = fresh_copy(str(tmp_path / "repo"))
    result = subprocess.run([sys.executable, "-c", BUILD_UNDER_AUDIT], cwd=copy,
                            capture_output=True, text=True, timeout=600)
    audit = json.loads(result.stdout.split("AUDIT ", 1)[1])
    assert audit["code"] == 0, result.stderr
    assert audit["network"] == []
    # one process started: the compiler, on the copy's source and vendored headers
    assert len(audit["calls"]) == 1 and audit["calls"][0][0] == cxx, audit["calls"]
    compile_args = audit["calls"][0]
    include = compile_args[compile_args.index("-I") + 1]
    assert include == os.path.join(copy, VENDORED, "include")
    # one translation unit that includes every source of the copy's csrc/
    unity = os.path.join(copy, "src", "native", "_build", "all_sources.cc")
    assert unity in compile_args
    with open(unity, encoding="utf-8") as handle:
        included = re.findall(r'^#include "(.+)"$', handle.read(), flags=re.M)
    csrc = os.path.join(copy, "src", "native", "csrc")
    assert included == sorted(os.path.join(csrc, f) for f in os.listdir(csrc) if f.endswith(".cc"))
    # the library loads on MindSpore's oneDNN and exports every kernel
    check = subprocess.run([sys.executable, "-c",
                            "import src.native as o; lib, why = o.load_library(); "
                            "print(why or 'oneDNN ' + o.onednn_version())"],
                           cwd=copy, capture_output=True, text=True, timeout=120)
    assert check.stdout.startswith("oneDNN 3."), check.stdout + check.stderr
    # up to date: a second run compiles nothing
    again = subprocess.run([sys.executable, "-c", BUILD_UNDER_AUDIT], cwd=copy,
                           capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout.split("AUDIT ", 1)[1])["calls"] == []


def test_vendored_headers_are_exactly_those_the_kernels_include():
    cxx = require_compiler()
    root = os.path.join(REPO, VENDORED)
    include = os.path.join(root, "include")
    csrc = os.path.join(REPO, "src", "native", "csrc")
    sources = sorted(os.path.join(csrc, f) for f in os.listdir(csrc) if f.endswith(".cc"))
    result = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-H", "-I", include, *sources],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    used = {os.path.relpath(line.lstrip(". "), include) for line in result.stderr.splitlines()
            if re.match(r"^\.+ ", line) and line.lstrip(". ").startswith(include)}
    vendored = {os.path.relpath(os.path.join(d, f), include)
                for d, _, files in os.walk(include) for f in files}
    assert used == vendored
    with open(os.path.join(root, "LICENSE"), encoding="utf-8") as handle:
        assert "Apache License" in handle.read()
    with open(os.path.join(root, "README.md"), encoding="utf-8") as handle:
        notes = handle.read()
    assert "onednn-devel==2025.3.0" in notes and "dnnl_config.h" in notes


def test_quick_start_without_a_compiler_reaches_training(tmp_path):
    """No C++ compiler: the build explains in one line and exits 0, so the README's chain
    goes on and trains on MindSpore's own kernels (shortened to one epoch here)."""
    copy = fresh_copy(str(tmp_path / "repo"))
    main_job, _ = quick_start_commands()
    env = readme_commands.run_env(CXX=str(tmp_path / "no-such-compiler"))
    steps = run_commands(main_job, cwd=copy, env=env, extra={"train.py": ["--max_epoch=1"]},
                         timeout=1800)
    assert len(steps) == len(main_job) and steps[-1].returncode == 0, failed(steps)
    build_step = next(s for s in steps if "src.native.build" in s.command)
    assert build_step.stdout == ""
    lines = build_step.stderr.splitlines()
    assert len(lines) == 1 and NO_COMPILER.fullmatch(lines[0]), build_step.stderr
    assert "no-such-compiler is not an executable program" in lines[0]
    assert not os.path.exists(os.path.join(copy, "src", "native", "_build", "libvgg_native.so"))
    train = next(s for s in steps if s.command.startswith("python train.py"))
    assert re.search(r"epoch: 1 step: \d+, loss is \d", train.stdout), train.stdout[-2000:]
    assert final_accuracy(steps[-1].stdout) is not None, steps[-1].stdout[-2000:]


@pytest.mark.parametrize("page", ["docs/configuration.md", "docs/configuration_CN.md"])
def test_every_config_key_is_documented(page):
    from model_utils.config import load_yaml

    path = os.path.join(REPO, page)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    values, _, _ = load_yaml(os.path.join(REPO, "cifar10_config.yaml"))
    missing = [key for key in values if f"`{key}`" not in text]
    assert not missing, f"{page} does not describe {missing}"


@pytest.mark.parametrize("readme", ["README.md", "README_CN.md"])
def test_readme_links_resolve(readme):
    with open(os.path.join(REPO, readme), encoding="utf-8") as handle:
        text = handle.read()
    targets = re.findall(r"\]\(((?:docs|benchmarks|src|scripts|ascend310_infer)/[^)#\s]+)", text)
    assert targets, f"{readme} links no repository page"
    broken = [t for t in targets if not os.path.exists(os.path.join(REPO, t))]
    assert not broken, f"{readme} links missing files: {broken}"


@pytest.mark.parametrize("page", sorted(name for name in os.listdir(os.path.join(REPO, "docs"))
                                        if name.endswith(".md")))
def test_docs_links_resolve(page):
    """The docs pages' relative links (to each other and to ../benchmarks, ../src, ...)."""
    with open(os.path.join(REPO, "docs", page), encoding="utf-8") as handle:
        text = handle.read()
    targets = re.findall(r"\]\(((?:\.\./)?[\w./-]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not t.startswith(("http", "mailto"))]
    broken = [t for t in local if not os.path.exists(os.path.join(REPO, "docs", t))]
    assert not broken, f"docs/{page} links missing files: {broken}"
