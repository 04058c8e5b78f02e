"""benchmarks/eval_precision.py without a network: the commands it runs per checkpoint, the
precision check of each log and the float32 minus bfloat16 summary."""
import json
import os
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import eval_precision  # noqa: E402  (path set just above)

LINE = {"bfloat16": "precision: bfloat16 on CPU (cpu_precision=bfloat16, oneDNN x): convolutions",
        "float32": "precision: float32 on CPU (cpu_precision=float32)"}


def fake_eval(scores, said=None):
    """A stand-in for real_cifar10.run: eval.py's log with the top-1 of scores[(ckpt, P)]."""
    seen = []

    def run(command, log_path):
        precision = command[-1].split("=", 1)[1]
        ckpt = os.path.basename(os.path.dirname(command[-2].split("=", 1)[1]))
        seen.append((ckpt, precision, log_path))
        line = (said or LINE)[precision]
        return (f"{line}\nresult: {{'acc': {scores[ckpt, precision]}}} ckpt=x\n"
                "eval speed: 5000 images in 25.00 s, 200.0 images/s\n"), 30.0
    return run, seen


def checkpoints(tmp_path, *runs):
    paths = []
    for name in runs:
        (tmp_path / name).mkdir()
        path = tmp_path / name / "vgg16_bn-10_351.ckpt"
        path.write_bytes(b"x")
        paths.append(str(path))
    return paths


def test_each_checkpoint_in_both_precisions_and_the_differences(tmp_path, monkeypatch):
    scores = {("a", "bfloat16"): 0.8964, ("a", "float32"): 0.8966,
              ("b", "bfloat16"): 0.8998, ("b", "float32"): 0.8998,
              ("c", "bfloat16"): 0.9002, ("c", "float32"): 0.8990}
    run, seen = fake_eval(scores)
    monkeypatch.setattr(eval_precision, "run", run)
    monkeypatch.setattr(eval_precision, "bf16_refusal", lambda: None)
    out, logs = tmp_path / "out.json", tmp_path / "logs"
    eval_precision.main(checkpoints(tmp_path, "a", "b", "c")
                        + ["--data_dir", "D", "--logs", str(logs), "--out", str(out)])
    assert [(c, p) for c, p, _ in seen] == [("a", "bfloat16"), ("a", "float32"), ("b", "bfloat16"),
                                            ("b", "float32"), ("c", "bfloat16"), ("c", "float32")]
    assert all(os.path.dirname(log) == str(logs) for _, _, log in seen)
    record = json.loads(out.read_text())
    assert [r["checkpoint"] for r in record["checkpoints"]] == [
        "a/vgg16_bn-10_351.ckpt", "b/vgg16_bn-10_351.ckpt", "c/vgg16_bn-10_351.ckpt"]
    summary = record["summary"]
    assert summary["float32_minus_bfloat16"] == [0.0002, 0.0, -0.0012]
    assert summary["mean"] == pytest.approx(-0.001 / 3, abs=1e-6)
    assert (summary["float32_higher"], summary["same"], summary["float32_lower"]) == (1, 1, 1)
    assert "--cpu_precision=float32" in record["checkpoints"][0]["float32"]["command"]


def test_refuses_without_bfloat16_or_when_a_log_names_another_precision(tmp_path, monkeypatch):
    paths = checkpoints(tmp_path, "a")
    args = paths + ["--data_dir", "D", "--logs", str(tmp_path / "logs"),
                    "--out", str(tmp_path / "out.json")]
    monkeypatch.setattr(eval_precision, "bf16_refusal", lambda: "the CPU has no AVX512-BF16")
    with pytest.raises(SystemExit, match="bfloat16 cannot run here: the CPU has no AVX512-BF16"):
        eval_precision.main(args)
    monkeypatch.setattr(eval_precision, "bf16_refusal", lambda: None)
    fell_back = dict(LINE, bfloat16="precision: float32 on CPU (cpu_precision=bfloat16, but ...)")
    run, _ = fake_eval({("a", "bfloat16"): 0.9, ("a", "float32"): 0.9}, said=fell_back)
    monkeypatch.setattr(eval_precision, "run", run)
    with pytest.raises(SystemExit, match="ckpt1_bfloat16.log does not say"):
        eval_precision.main(args)
    with pytest.raises(SystemExit, match="checkpoint not found: .*missing.ckpt"):
        eval_precision.main([str(tmp_path / "missing.ckpt")] + args[1:])
    assert not (tmp_path / "out.json").exists()
