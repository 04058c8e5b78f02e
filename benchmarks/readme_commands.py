"""The README's quick-start commands, parsed and run the one way that tests/test_readme.py and
benchmarks/quickstart_run.py both use: the first two ```bash blocks of `## Quick start`
(main job, then tests), each split at `&&`, run one by one in a fresh copy of the repository
(its own files only: no build outputs, run outputs, data or caches), stopping at the first
command that fails, as the shell's `&&` does.
"""
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Left out of a fresh copy when git cannot list the repository's own files: version control,
# build outputs, run outputs, data and caches (what the .gitignore files name).
GENERATED = (".git", "_build", "build", "outputs", "demo_data", "__pycache__", ".pytest_cache",
             "*.pyc", "*.so", "*.ckpt", "kernel_meta", "rank_*", "msrun_log")
RESULT = re.compile(r"result: \{'acc': ([0-9.]+)\}")
README = os.path.join(REPO, "README.md")


def quick_start_commands(readme=README):
    """(main job, test commands): each a list of the commands of one ```bash block of the
    README's `## Quick start` section, in order."""
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    if len(blocks) < 2:
        raise ValueError(f"{readme}: the quick start needs the main-job and the test commands")
    return tuple([part.strip() for part in block.strip().split("&&")] for block in blocks[:2])


def source_files(repo=REPO):
    """The repository's own files (tracked, or new and not ignored), relative paths; None
    when git cannot list them."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=repo, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    names = [name for name in listed.decode().split("\0") if name]
    return [name for name in names if os.path.isfile(os.path.join(repo, name))]


def fresh_copy(dest, repo=REPO):
    """Copies the repository to dest as a fresh clone has it (no src/native/_build, outputs,
    demo data or caches). Returns dest."""
    files = source_files(repo)
    if files is None:
        shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(*GENERATED))
        return dest
    for name in files:
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(repo, name), target)
    return dest


def script_of(command):
    """`python train.py --x` -> "train.py", `python -m src.native.build` -> "src.native.build"."""
    words = shlex.split(command)
    if words[0] != "python" or len(words) < 2:
        return words[0]
    return words[2] if words[1] == "-m" and len(words) > 2 else words[1]


def to_argv(command, extra=()):
    """A README command as run by this interpreter: `python ...` -> sys.executable ...,
    `pip ...` -> sys.executable -m pip ...; extra arguments appended."""
    words = shlex.split(command)
    if words[0] == "python":
        words = [sys.executable] + words[1:]
    elif words[0] == "pip":
        words = [sys.executable, "-m", "pip"] + words[1:]
    return words + list(extra)


def run_env(**overrides):
    """The environment for the commands: this one, with this interpreter's folder first on
    PATH (so a `python` that a command starts in turn is this interpreter), plus overrides."""
    env = dict(os.environ, **overrides)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@dataclasses.dataclass
class Step:
    command: str            # as written in the README
    argv: list
    returncode: int
    seconds: float          # wall time
    cpu_seconds: float      # user + system time of the command's processes
    peak_rss_mb: float      # largest resident set of the command's processes
    stdout: str
    stderr: str


def run_step(command, cwd, env, extra=(), timeout=1800):
    """Runs one command; a run longer than timeout seconds is killed (negative returncode)."""
    argv = to_argv(command, extra)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            # wait4, not wait: it also gives the peak RSS (of the child and the descendants
            # it waited for)
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Step(command, argv, proc.returncode, seconds, usage.ru_utime + usage.ru_stime,
                    usage.ru_maxrss / 1024.0,
                    out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def run_commands(commands, cwd, env=None, extra=None, timeout=1800):
    """Runs the commands in order as `a && b && c` would: stops after the first that fails.
    extra maps a script (see script_of) to arguments appended to its command.
    Returns the Steps run."""
    env = run_env() if env is None else env
    steps = []
    for command in commands:
        steps.append(run_step(command, cwd, env, (extra or {}).get(script_of(command), ()),
                              timeout))
        if steps[-1].returncode != 0:
            break
    return steps


def final_accuracy(text):
    """The accuracy of the last `result: {'acc': ...}` line in text, or None."""
    found = RESULT.findall(text)
    return float(found[-1]) if found else None
