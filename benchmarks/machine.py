"""What the benchmarks record of the machine they ran on: CPU model and instruction-set flags,
cores, package versions, load average, the fp32 and bf16 matrix-multiply peaks and the GPUs
nvidia-smi lists. Every script under benchmarks/ takes these from here."""
import os
import platform
import subprocess
import timeit

# The flags the result files name one by one: AVX2 and AVX-512 decide oneDNN's kernels, the
# bfloat16 ones whether bfloat16 can be fast here.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either makes oneDNN (PyTorch's and ours) run bf16
VERSIONED_PACKAGES = ("mindspore", "torch", "onnxruntime", "numpy", "onnx")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpuinfo(key):
    """The value of the first /proc/cpuinfo line named `key`, or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model():
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flag_set():
    return set((_cpuinfo("flags") or "").split())


def cpu_flags():
    """The vector and matrix flags (avx*, amx*, fma*), sorted."""
    return sorted(f for f in cpu_flag_set() if f.startswith(("avx", "amx", "fma")))


def isa_flags(names=ISA_FLAGS):
    """{flag: whether the CPU has it} for each of `names`."""
    present = cpu_flag_set()
    return {name: name in present for name in names}


def bf16_unavailable(cpu_flags):
    """Why bfloat16 cannot be measured on a CPU with these flags (one line), or None: without
    AVX512-BF16 or AMX-BF16 neither oneDNN path (PyTorch's, this repository's) runs it."""
    if set(cpu_flags) & set(BF16_FLAGS):
        return None
    return f"the CPU has no bfloat16 instructions (neither {' nor '.join(BF16_FLAGS)})"


def usable_cpus():
    """The cores this process may run on (its affinity), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def cpu_summary(flags=ISA_FLAGS):
    """{"model", "cores", "flags"}: the CPU as the result files of the scripts record it."""
    return {"model": cpu_model(), "cores": usable_cpus(), "flags": isa_flags(flags)}


def package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_average(digits=None):
    """The 1, 5 and 15 minute load averages (rounded to `digits`), or None where the system
    has none."""
    try:
        loads = os.getloadavg()
    except OSError:
        return None
    return [round(x, digits) for x in loads] if digits is not None else list(loads)


def source_revision(root=REPO_ROOT):
    """{"commit", "modified"}: the git commit of the checkout that measures, and whether its
    tracked files differed from it; None outside a git checkout or without git. Call it
    before the measurement writes its result files (they are tracked)."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": modified}


def machine_description():
    """The machine part of a benchmark report, as far as this process can tell."""
    return {
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
        "cpu_flags": cpu_flags(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in VERSIONED_PACKAGES},
        "onednn_max_cpu_isa_user": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "load_average_start": load_average(),
        "source": source_revision(),
    }


def sgemm_gflops(n, reps):
    """fp32 matrix multiply rate, n x n by n x n, with numpy and with torch (GFLOP/s, best of
    `reps` after one untimed call); torch's None without torch."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    result = {"n": n, "numpy_gflops": matmul_gflops(lambda: a @ b, n, reps)}
    try:
        import torch
    except ImportError:
        result["torch_gflops"] = None
    else:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        result["torch_gflops"] = matmul_gflops(lambda: ta @ tb, n, reps)
    return result


def bf16_matmul_gflops(n, reps):
    """PyTorch's bfloat16 matrix multiply rate, n x n by n x n (GFLOP/s, best of `reps` after
    one untimed call)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(torch.bfloat16) for _ in range(2))
    return matmul_gflops(lambda: a @ b, n, reps)


def matmul_gflops(multiply, n, reps):
    """Rate of an n x n by n x n multiply(): the fastest of `reps` calls after an untimed
    one."""
    multiply()
    return 2.0 * n ** 3 / min(timeit.repeat(multiply, repeat=reps, number=1)) / 1e9


def nvidia_smi_query():
    """Name, driver and memory of each GPU as nvidia-smi reports them; None without it."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode:
        return None
    return [dict(zip(("name", "driver", "memory"), (part.strip() for part in line.split(","))))
            for line in proc.stdout.splitlines() if line.strip()]
