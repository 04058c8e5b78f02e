"""benchmarks/recipe_trials.py without training: its --trial syntax, what it reads from a run
folder's metrics.csv and training log, and its refusal of a run made with other values."""
import os
import sys

import pytest
import yaml

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import recipe_trials  # noqa: E402  (path set just above)

METRICS = """epoch,global_step,loss,lr,images_per_sec,eval_top1,eval_top5,ema_top1,ema_top5
1,50,1.9,0.03,140.0,,,,
1,100,1.7,0.05,150.0,,,,
1,100,,,,0.61,0.95,0.66,0.97
2,150,1.4,0.02,160.0,,,,
2,200,1.3,0.0,170.0,,,,
2,200,,,,0.75,0.98,0.74,0.98
"""


def run_folder(tmp_path, metrics=METRICS, **config):
    run = tmp_path / "t1"
    run.mkdir()
    (run / "metrics.csv").write_text(metrics)
    values = {"lr": 0.05, "crop_padding": 2, "ema_warmup": True, **config}
    with open(run / "config.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump_all([values, {"lr": "help"}], handle)
    (run / "train_rank0.log").write_text("epoch time: 300.5 s\n...\nepoch time: 290.0 s\n")
    return str(run)


def test_trial_syntax():
    assert recipe_trials.parse_trial("a1=--lr=0.05 --crop_padding=2") == (
        "a1", ["--lr=0.05", "--crop_padding=2"])
    for bad in ("--lr=0.05", "a=lr=0.05", "a=--lr", "x/y=--lr=1", "=--lr=1"):
        with pytest.raises(SystemExit, match="error: --trial"):
            recipe_trials.parse_trial(bad)


def test_scores_speeds_and_epoch_times_of_a_run_folder(tmp_path):
    run = run_folder(tmp_path)
    assert recipe_trials.complete(run, 2) and not recipe_trials.complete(run, 3)
    got = recipe_trials.summarise("t1", ["--lr=0.05"], "python train.py", run, 2, [])
    assert got["top1_after_each_epoch"] == [0.61, 0.75]
    assert got["ema_top1_after_each_epoch"] == [0.66, 0.74]
    assert got["final_top1"] == 0.75
    assert got["train_images_per_second_median"] == 155.0  # progress rows only
    assert got["epoch_seconds"] == [300.5, 290.0]


def test_no_ema_column_values_give_none(tmp_path):
    lines = [line.rsplit(",", 2)[0] + ",," for line in METRICS.splitlines()]
    run = run_folder(tmp_path, "\n".join(lines) + "\n")
    got = recipe_trials.summarise("t1", [], "python train.py", run, 2, [])
    assert got["ema_top1_after_each_epoch"] is None and got["final_top1"] == 0.75


def test_a_run_made_with_other_values_is_refused(tmp_path):
    run = run_folder(tmp_path)
    assert recipe_trials.check_config(run, ["--lr=0.05", "--crop_padding=2",
                                            "--ema_warmup=True"]) == []
    with pytest.raises(SystemExit, match="has lr=0.05, the trial asks for 0.1"):
        recipe_trials.check_config(run, ["--lr=0.1"])
    assert recipe_trials.check_config(run, ["--lr=0.05", "--new_key=3"]) == ["new_key"]


def test_append_keeps_other_trials_and_each_trials_machine():
    old_machine = {"flags": {"avx512_bf16": True}}
    old = {"what": "split A", "epochs": 2, "machine": old_machine, "load_average_at_end": [2.0],
           "note": "old runs.", "trials": [{"trial": "t1", "final_top1": 0.7},
                                           {"trial": "t2", "final_top1": 0.6}]}
    new_machine = {"flags": {"avx512_bf16": False}}
    new = {"what": "split A", "epochs": 2, "note": "new runs.",
           "trials": [{"trial": "t2", "final_top1": 0.8, "machine": new_machine},
                      {"trial": "t3", "final_top1": 0.9, "machine": new_machine}]}
    merged = recipe_trials.merge_reports(old, new)
    assert [(t["trial"], t["final_top1"]) for t in merged["trials"]] == [
        ("t1", 0.7), ("t2", 0.8), ("t3", 0.9)]
    assert merged["trials"][0]["machine"] == old_machine
    assert merged["trials"][0]["load_average_at_end"] == [2.0]
    assert merged["trials"][2]["machine"] == new_machine
    assert "machine" not in merged and merged["note"] == "old runs. new runs."
    assert "machine" not in old["trials"][0]  # the old report is not modified
    for key, value in (("epochs", 10), ("what", "split B")):
        with pytest.raises(SystemExit, match=f"--append: the file holds {key}="):
            recipe_trials.merge_reports(old, dict(new, **{key: value}))
