"""benchmarks/activation_speed.py without training: the spec each side runs and the report's
ratios."""
import os
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import activation_speed  # noqa: E402  (path set just above)


def worker_result(steps, rss):
    return {"step_s": steps, "max_rss_mb": rss, "precision": "bfloat16",
            "precision_detail": "avx512_core_amx", "fast_cells": 13, "conv_cells": 13}


def test_each_side_runs_the_cpu_recipe_with_its_activation():
    args = activation_speed.parse_args(["--batch", "64", "--steps", "4"])
    spec = activation_speed.spec_for(args, "gelu")
    assert spec["config_path"].endswith("cifar10_cpu_config.yaml")
    assert spec["overrides"] == ["--activation=gelu"]
    assert (spec["batch"], spec["steps"], spec["precision"]) == (64, 4, "auto")


def test_report_takes_the_median_step_over_all_rounds_and_the_ratios_gelu_over_relu():
    args = SimpleNamespace(batch=100, image=32, precision="auto", rounds=2, warmup=1, steps=3)
    runs = {"relu": [worker_result([1.0, 1.0, 9.0], 900.0),
                     worker_result([1.0, 2.0, 2.0], 950.0)],
            "gelu": [worker_result([1.25, 1.25, 1.25], 990.0),
                     worker_result([1.25, 8.0, 1.0], 960.0)]}
    report = activation_speed.summarise(args, runs)
    relu, gelu = report["sides"]["relu"], report["sides"]["gelu"]
    assert (relu["median_step_s"], gelu["median_step_s"]) == (1.5, 1.25)
    assert (relu["images_per_second"], gelu["images_per_second"]) == (66.7, 80.0)
    assert relu["round_medians_s"] == [1.0, 2.0]
    assert (relu["peak_memory_mb"], gelu["peak_memory_mb"]) == (950.0, 990.0)
    assert report["gelu_speed_vs_relu"] == pytest.approx(80.0 / 66.7, abs=1e-3)
    assert report["gelu_memory_vs_relu"] == pytest.approx(990.0 / 950.0, abs=1e-3)


def test_empty_measurements_are_refused(capsys):
    with pytest.raises(SystemExit):
        activation_speed.parse_args(["--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err
