"""benchmarks/seed_spread.py: the spread of one recipe's held-out accuracy over seeds, and its
refusal of runs that are not of one recipe."""
import json
import os
import statistics
import sys

import pytest

from tests.helpers import REPO, run_python

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import seed_spread  # noqa: E402  (path set just above)


def result(folder, name, overrides, shifts, flips, epochs=10):
    path = folder / f"{name}.json"
    path.write_text(json.dumps({
        "epochs": epochs, "train_images": 45000, "holdout_images": 5000,
        "holdout_top1": shifts, "holdout_top1_after_each_epoch": flips, "overrides": overrides}))
    return str(path)


def test_spread_of_three_seeds_counts_the_default_seed_and_the_config_own_value(tmp_path):
    paths = [result(tmp_path, "s3", ["--seed=3"], 0.8994, [0.5, 0.8958]),
             result(tmp_path, "s1", ["--activation=gelu"], 0.9034, [0.6, 0.8994]),
             result(tmp_path, "s2", ["--activation=gelu", "--seed=2"], 0.8990, [0.7, 0.8978])]
    summary = seed_spread.summarise(paths, same=("--activation=gelu",), target=0.90)
    assert [r["seed"] for r in summary["runs"]] == [1, 2, 3]
    shifts, flip = summary["eval_py_with_shifts"], summary["flip_tta"]
    assert shifts["values"] == [0.9034, 0.8990, 0.8994]
    assert flip["values"] == [0.8994, 0.8978, 0.8958]  # the last epoch's, not the first
    assert shifts["mean"] == pytest.approx((0.9034 + 0.8990 + 0.8994) / 3, abs=1e-5)
    sd = statistics.stdev([0.8994, 0.8978, 0.8958])
    assert flip["stdev"] == pytest.approx(sd, abs=1e-5)
    assert flip["standard_error"] == pytest.approx(sd / 3 ** 0.5, abs=1e-5)
    assert (shifts["at_or_above_target"], flip["at_or_above_target"]) == (1, 0)
    assert (shifts["min"], shifts["max"]) == (0.8990, 0.9034)


@pytest.mark.parametrize("second, message", [
    (("b", ["--seed=2", "--lr=0.1"], 0.9, [0.9]), "another recipe"),
    (("b", ["--seed=1"], 0.9, [0.9]), "seed 1 is there twice"),
    (("b", ["--seed=2"], 0.9, [0.9], 12), "another run length"),
])
def test_runs_of_other_recipes_or_repeated_seeds_are_refused(tmp_path, second, message):
    first = result(tmp_path, "a", [], 0.9, [0.9])
    other = result(tmp_path, *second)
    with pytest.raises(seed_spread.SpreadError, match=message):
        seed_spread.summarise([first, other])


def test_command_line_writes_the_file_or_fails_in_one_line(tmp_path):
    first = result(tmp_path, "a", [], 0.9, [0.89])
    out = tmp_path / "spread.json"
    run = run_python("benchmarks/seed_spread.py", "--out", out, first, str(tmp_path / "gone.json"))
    assert run.returncode == 2 and not out.exists()
    assert run.stderr.count("\n") == 1 and "gone.json" in run.stderr
    second = result(tmp_path, "b", ["--seed=2"], 0.88, [0.87])
    run = run_python("benchmarks/seed_spread.py", "--out", out, first, second)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["eval_py_with_shifts"]["mean"] == pytest.approx(0.89)
    assert "2 seeds, mean 89.00%" in run.stdout


def test_a_run_without_a_seed_gets_the_config_own_seed(tmp_path, monkeypatch):
    import yaml

    with open(os.path.join(REPO, "cifar10_cpu_config.yaml"), encoding="utf-8") as handle:
        assert seed_spread.config_seed() == next(yaml.safe_load_all(handle))["seed"]
    monkeypatch.setattr(seed_spread, "config_seed", lambda: 7)
    paths = [result(tmp_path, "plain", [], 0.9, [0.9]),
             result(tmp_path, "two", ["--seed=2"], 0.9, [0.9])]
    assert [r["seed"] for r in seed_spread.summarise(paths)["runs"]] == [2, 7]
    clash = result(tmp_path, "seven", ["--seed=7"], 0.9, [0.9])
    with pytest.raises(seed_spread.SpreadError, match="seed 7 is there twice"):
        seed_spread.summarise(paths + [clash])


def with_seed(path, seed):
    """The result at `path` as cpu_recipe.py writes it now: with the seed it trained with."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({**data, "seed": seed}, handle)
    return path


def test_a_recorded_seed_wins_over_the_config_seed_and_must_match_the_override(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(seed_spread, "config_seed", lambda: 1)
    recorded = with_seed(result(tmp_path, "rec", [], 0.9, [0.9]), 5)
    assert [r["seed"] for r in seed_spread.summarise([recorded])["runs"]] == [5]
    clash = with_seed(result(tmp_path, "clash", ["--seed=3"], 0.9, [0.9]), 4)
    with pytest.raises(seed_spread.SpreadError, match="clash.json: recorded seed 4 is not the "
                                                       "--seed=3 of its overrides"):
        seed_spread.summarise([clash])
