"""The README's quick-start commands run as written, in a fresh copy of the repository."""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training is shortened to one epoch; everything else runs exactly as the README says.
SHORTEN = {"train.py": ["--max_epoch=1", "--T_max=1", "--warmup_epochs=0"]}


def quick_start_commands():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "the quick start needs the main-job and the test commands"
    return [[part.strip() for part in block.strip().split("&&")] for block in blocks[:2]]


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


def test_quick_start_main_job_runs_in_a_fresh_copy(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".git", "outputs", "demo_data", "__pycache__", "*.ckpt", ".pytest_cache"))
    main_job, _ = quick_start_commands()
    outputs = []
    for command in main_job:
        words = command.split()
        if words[:2] == ["pip", "install"]:
            words = [sys.executable, "-m", "pip", "install", "-q"] + words[2:]
        elif words[0] == "python":
            words = [sys.executable] + words[1:] + SHORTEN.get(words[1], [])
        result = subprocess.run(words, cwd=copy, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    assert re.search(r"result: \{'acc': [0-9.]+\}", outputs[-1])
    assert (copy / "outputs" / "quickstart" / "metrics.png").is_file()


@pytest.mark.parametrize("readme", ["README.md", "README_CN.md"])
def test_every_config_key_is_documented(readme):
    from model_utils.config import load_yaml

    path = os.path.join(REPO, readme)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    values, _, _ = load_yaml(os.path.join(REPO, "cifar10_config.yaml"))
    missing = [key for key in values if f"`{key}`" not in text]
    assert not missing, f"{readme} does not describe {missing}"
