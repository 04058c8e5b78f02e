"""benchmarks/tta_eval.py without a network: the settings it compares and what it reads from
eval.py's log."""
import json
import os
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import tta_eval  # noqa: E402  (path set just above)


def test_settings_start_without_tta_then_flip_then_each_shift():
    assert tta_eval.settings([1, 2]) == [(False, 0), (True, 0), (True, 1), (True, 2)]


def test_reads_top1_and_speed_of_an_eval_log():
    log = ("eval speed: 5000 images in 20.52 s, 243.7 images/s\n"
           "result: {'acc': 0.8772} ckpt=/x/vgg16_bn-10_351.ckpt\n")
    assert tta_eval.parse_eval_log(log) == (0.8772, 5000, 20.52, 243.7)
    with pytest.raises(SystemExit, match="no result/speed line"):
        tta_eval.parse_eval_log("result: {'acc': 0.5}\n")


def test_eval_logs_go_to_the_logs_folder_not_beside_the_json(tmp_path, monkeypatch):
    logs, seen = tmp_path / "logs", []

    def fake_run(command, log_path):
        seen.append((command, log_path))
        return ("eval speed: 10 images in 1.00 s, 10.0 images/s\n"
                f"result: {{'acc': {0.5 + len(seen) / 100}}}\n"), 1.0

    monkeypatch.setattr(tta_eval, "run", fake_run)
    out = tmp_path / "results" / "tta.json"
    out.parent.mkdir()
    tta_eval.main(["--data_dir", "D", "--checkpoint", "c.ckpt", "--shifts", "2",
                   "--logs", str(logs), "--out", str(out)])
    assert [os.path.basename(log) for _, log in seen] == [
        "tta_flip0_shift0.log", "tta_flip1_shift0.log", "tta_flip1_shift2.log"]
    assert all(os.path.dirname(log) == str(logs) for _, log in seen)
    assert os.listdir(out.parent) == ["tta.json"]
    assert "--eval_tta_shift=2" in seen[2][0] and "--eval_flip_tta=False" in seen[0][0]
    record = json.loads(out.read_text())
    assert [row["top1"] for row in record["settings"]] == [0.51, 0.52, 0.53]
