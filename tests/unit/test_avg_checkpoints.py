"""avg_checkpoints.py: the average of the network weights (BatchNorm statistics included) of
the newest checkpoints of a run folder or of given files, never the optimizer state; EMA
weights on request; one-line refusals for mixed variants."""
import re

import numpy as np
import pytest

from src import checkpoint as ckpt
from tests.helpers import checkpoint_arrays, run_python

SHAPES = {"features.0.weight": (4, 3, 3, 3), "features.1.gamma": (4,),
          "features.1.moving_mean": (4,), "features.1.moving_variance": (4,),
          "classifier.0.weight": (3, 8)}


def write_checkpoint(path, seed, arch="vgg11_bn", shapes=None, ema=True):
    """Training-checkpoint-like entries: weights, momenta, ema.* and metadata."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in (shapes or SHAPES).items()}
    entries = dict(weights)
    entries.update({"moments." + k: v * 7 for k, v in weights.items()})
    if ema:
        entries.update({"ema." + k: v + 100 for k, v in weights.items()})
    entries["global_step"] = np.array([seed], np.int32)
    ckpt.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in entries.items()],
                         str(path), {"arch": arch, "epoch": seed, "config_yaml": "arch: vgg11"})
    return weights


@pytest.fixture()
def run_folder(tmp_path):
    """Four numbered checkpoints and a best file, as a training run leaves them."""
    written = [write_checkpoint(tmp_path / f"vgg11_bn-{e}_8.ckpt", e) for e in (1, 2, 3, 4)]
    write_checkpoint(tmp_path / "vgg11_bn-best.ckpt", 99)
    return tmp_path, written


def test_folder_average_is_the_mean_of_the_newest_n(run_folder):
    import avg_checkpoints

    folder, written = run_folder
    output = avg_checkpoints.main([str(folder), "--n=3"])
    assert output == str(folder / "vgg11_bn-avg.ckpt")
    averaged = checkpoint_arrays(output)
    assert set(averaged) == set(SHAPES), "only the network's weights"
    for name in SHAPES:  # epochs 2, 3, 4: not epoch 1, not best
        want = np.mean([written[e][name].astype(np.float64) for e in (1, 2, 3)], axis=0)
        np.testing.assert_allclose(averaged[name], want, rtol=1e-6, err_msg=name)
    assert ckpt.checkpoint_meta(ckpt.read_checkpoint(output))["arch"] == "vgg11_bn"
    assert ckpt.list_checkpoints(str(folder))[-1].endswith("vgg11_bn-4_8.ckpt")


def test_ema_weights_and_given_files(run_folder, tmp_path):
    import avg_checkpoints

    folder, written = run_folder
    files = [str(folder / "vgg11_bn-1_8.ckpt"), str(folder / "vgg11_bn-4_8.ckpt")]
    output = avg_checkpoints.main(files + ["--use_ema", f"--output={tmp_path / 'x.ckpt'}"])
    averaged = checkpoint_arrays(output)
    for name in SHAPES:
        want = (written[0][name] + written[3][name]) / 2 + 100
        np.testing.assert_allclose(averaged[name], want, rtol=1e-6, err_msg=name)


@pytest.mark.e2e
@pytest.mark.parametrize("other, message", [
    ({"arch": "vgg13_bn"}, "holds vgg13_bn, .*vgg11_bn-1_8.ckpt holds vgg11_bn; average "
                           "checkpoints of one variant"),
    ({"shapes": dict(SHAPES, **{"classifier.0.weight": (5, 8)})},
     "does not match .* \\(parameter classifier.0.weight\\)"),
    ({"ema": False, "use_ema": True}, "has no EMA weights \\(ema.features.0.weight\\)"),
])
def test_refusals_are_one_line(run_folder, tmp_path, other, message):
    folder, _ = run_folder
    other = dict(other)
    use_ema = other.pop("use_ema", False)
    odd = tmp_path / "odd.ckpt"
    write_checkpoint(odd, 5, **other)
    args = [str(odd)] if use_ema else [str(folder / "vgg11_bn-1_8.ckpt"), str(odd)]
    args += ["--use_ema"] if use_ema else []
    result = run_python("avg_checkpoints.py", *args, f"--output={tmp_path / 'out.ckpt'}",
                        timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.ckpt").exists()
