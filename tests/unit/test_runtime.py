"""Runtime set-up: the CPU convolution of an entry point (run by src.cli.run_entry, which
caps oneDNN's instruction set first) must not fall onto oneDNN's reference kernel."""
import os
import subprocess
import sys

from tests.helpers import REPO

PROBE = """
from src.cli import run_entry
from src.runtime import setup_runtime
import numpy as np, mindspore as ms
from mindspore import nn

def main():
    rt = setup_runtime("CPU", mode="graph")
    assert (rt.rank, rt.group_size) == (0, 1)
    conv = nn.Conv2d(16, 16, 3, pad_mode="same")
    conv(ms.Tensor(np.ones((2, 16, 16, 16), np.float32))).asnumpy()
    print("isa", __import__("os").environ.get("ONEDNN_MAX_CPU_ISA"))

run_entry(main, [])
"""


def _run_probe(extra_env):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env.update(extra_env, ONEDNN_VERBOSE="1", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    convs = [line for line in result.stdout.splitlines()
             if line.startswith("onednn_verbose") and ",convolution," in line
             and ",exec," in line]
    return result.stdout, convs


def test_convolution_avoids_reference_kernel():
    out, convs = _run_probe({})
    assert convs, "oneDNN reported no convolution; the probe did not run one"
    assert not [c for c in convs if "ref" in c.split(",")[5]], convs


def test_user_isa_choice_is_respected():
    out, _ = _run_probe({"ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert "isa SSE41" in out


def test_heap_is_trimmed_once_after_the_first_compilation(monkeypatch):
    """trim_heap_after_first_compile: the freed C heap goes back to the system once, right
    after the first compilation (before its graph runs), never again; the compile itself
    still happens every time the runtime asks for it."""
    import ctypes.util
    import platform

    from src import runtime, trainer

    calls = []

    class Cell:
        def compile(self, *args, **kwargs):
            calls.append(("compile", args))

    monkeypatch.setattr(runtime, "release_freed_heap", lambda: calls.append(("trim",)))
    cell = trainer.trim_heap_after_first_compile(Cell())
    cell.compile(1)
    cell.compile(2)
    assert calls == [("compile", (1,)), ("trim",), ("compile", (2,))]
    monkeypatch.undo()
    if platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c"):
        assert runtime.release_freed_heap() is True  # glibc's malloc_trim was found and ran
