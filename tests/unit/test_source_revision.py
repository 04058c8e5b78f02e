"""benchmarks/machine.py's source_revision: which commit a result file was measured at, and
whether the checkout differed from it."""
import os
import subprocess
import sys

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import machine  # noqa: E402  (path set just above)


def git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_commit_and_changes_of_tracked_files_only(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    commit = git(tmp_path, "rev-parse", "HEAD")
    assert machine.source_revision(str(tmp_path)) == {"commit": commit, "modified": False}
    (tmp_path / "new_result.json").write_text("{}")  # untracked: not a change of the source
    assert machine.source_revision(str(tmp_path))["modified"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert machine.source_revision(str(tmp_path)) == {"commit": commit, "modified": True}


def test_outside_a_checkout_there_is_no_revision(tmp_path):
    assert machine.source_revision(str(tmp_path)) is None
