"""benchmarks/tta_eval.py without a network: the settings it compares and what it reads from
eval.py's log."""
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
