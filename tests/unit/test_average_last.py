"""benchmarks/average_last.py without a network: which checkpoints it evaluates and averages,
the commands it runs, the average minus last summary, and its refusals."""
import json
import os
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import average_last  # noqa: E402  (path set just above)


def run_folder(tmp_path, name, epochs):
    folder = tmp_path / name
    folder.mkdir()
    for epoch in epochs:
        (folder / f"vgg16_bn-{epoch}_351.ckpt").write_bytes(b"x")
    (folder / "vgg16_bn-best.ckpt").write_bytes(b"x")  # not numbered: never averaged
    return str(folder)


def fake_run(scores):
    """A stand-in for real_cifar10.run: eval.py's log with the top-1 of scores[file name]."""
    seen = []

    def run(command, log_path):
        seen.append(command[1:])
        if command[1] == "avg_checkpoints.py":
            return "averaged\n", 5.0
        name = os.path.basename(command[-1].split("=", 1)[1])
        return (f"result: {{'acc': {scores[name]}}} ckpt=x\n"
                "eval speed: 5000 images in 25.00 s, 200.0 images/s\n"), 30.0
    return run, seen


def test_last_and_averages_per_run_and_the_differences(tmp_path, monkeypatch):
    a = run_folder(tmp_path, "a", [10, 8, 9])  # listed out of order on purpose
    b = run_folder(tmp_path, "b", [8, 9, 10])
    logs = tmp_path / "logs"
    scores = {"vgg16_bn-10_351.ckpt": 0.9, "a_avg2.ckpt": 0.8950, "a_avg3.ckpt": 0.9010,
              "b_avg2.ckpt": 0.9, "b_avg3.ckpt": 0.8980}
    run, seen = fake_run(scores)
    monkeypatch.setattr(average_last, "run", run)
    out = tmp_path / "out.json"
    average_last.main([a, b, "--data_dir", "D", "--logs", str(logs), "--out", str(out)])
    evaluated = [os.path.basename(c[-1].split("=", 1)[1]) for c in seen if c[0] == "eval.py"]
    assert evaluated == ["vgg16_bn-10_351.ckpt", "a_avg2.ckpt", "a_avg3.ckpt",
                         "vgg16_bn-10_351.ckpt", "b_avg2.ckpt", "b_avg3.ckpt"]
    averaged = [c for c in seen if c[0] == "avg_checkpoints.py"]
    assert averaged[0] == ["avg_checkpoints.py", a, "--n=2", f"--output={logs / 'a_avg2.ckpt'}"]
    assert [c[2] for c in averaged] == ["--n=2", "--n=3", "--n=2", "--n=3"]
    record = json.loads(out.read_text())
    assert record["runs"][0]["checkpoints"] == [f"vgg16_bn-{e}_351.ckpt" for e in (8, 9, 10)]
    assert record["summary"]["average_2"]["average_minus_last"] == [-0.005, 0.0]
    assert record["summary"]["average_3"]["average_minus_last"] == [0.001, -0.002]
    assert record["summary"]["average_3"]["mean"] == pytest.approx(-0.0005)
    assert (record["summary"]["average_2"]["higher"], record["summary"]["average_2"]["same"],
            record["summary"]["average_2"]["lower"]) == (0, 1, 1)


def test_refuses_a_run_with_too_few_checkpoints_and_an_average_of_one(tmp_path, monkeypatch):
    run, seen = fake_run({})
    monkeypatch.setattr(average_last, "run", run)
    short = run_folder(tmp_path, "short", [9, 10])
    with pytest.raises(SystemExit, match=r"short: 2 numbered checkpoint\(s\), --n asks for 3"):
        average_last.main([short, "--data_dir", "D", "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="--n: 1 averages nothing"):
        average_last.main([short, "--n", "1", "--data_dir", "D", "--out", str(tmp_path / "o.json")])
    assert seen == [] and not (tmp_path / "o.json").exists()
