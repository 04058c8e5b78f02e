"""The training toolbox in whole runs of train.py: gradient accumulation, clipping, Nesterov,
EMA, Lookahead, mixup/CutMix, RandAugment, random erasing, flip TTA, the patch-whitening
stem, ghost batch normalisation (on the native chain), frozen BatchNorm scales, a raised
rate of the BatchNorm shifts and a last epoch without augmentation (no_aug_epochs) together. A
run interrupted in the middle of an accumulation window and resumed ends bit for bit where the
uninterrupted run ends (weights, momenta, EMA averages, Lookahead's slow weights, accumulated
gradients); the EMA and averaged weights evaluate with eval.py."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from src import checkpoint as ckpt
from src.progress import read_metrics
from tests.helpers import REPO, SMALL_RUN_ARGS, checkpoint_arrays, interrupt_at

# 64 images, batch 8: 8 batches an epoch, 6 of them in two windows of 3 (2 left out)
TOOLBOX = ["--batch_size=8", "--log_interval=1", "--eval_interval=1", "--accumulate_steps=3",
           "--clip_grad_norm=1.0", "--nesterov=True", "--ema_decay=0.9", "--ema_warmup=True",
           "--mixup_alpha=0.4", "--cutmix_alpha=1.0", "--label_smooth=True",
           "--auto_augment=randaugment", "--random_erasing=0.25", "--eval_flip_tta=True",
           "--eval_tta_shift=2", "--stem_whitening=32", "--ghost_batch_size=4",
           # 2 optimizer steps an epoch: Lookahead syncs at the epoch's end only, so at the
           # interruption below the slow weights differ from the trained ones
           "--lookahead_steps=3", "--lookahead_alpha=0.5",
           "--freeze_bn_scale=True", "--bn_bias_lr_scale=4", "--crop_padding_mode=reflect",
           "--no_aug_epochs=1"]  # epoch 2 plain: the resume below crosses into it
FINAL = "vgg11_bn-2_6.ckpt"


def command(data, run_dir, *extra):
    return [sys.executable, "train.py", *SMALL_RUN_ARGS, *TOOLBOX, f"--data_dir={data}",
            f"--ckpt_path={run_dir}", *extra]


def run(args, timeout=600):
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[1]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def data(learnable_cifar):
    return learnable_cifar(n_train=64, n_eval=32)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("reference"))
    return run_dir, run(command(data, run_dir))


def test_run_reports_and_saves_what_the_toolbox_adds(reference):
    run_dir, stdout = reference
    assert "gradient accumulation: 3 batches per optimizer step, 24 images per optimizer " \
           "step, 2 optimizer steps per epoch" in stdout
    assert "ghost batch normalisation: BatchNorm statistics over each run of 4 of the 8 " \
           "images of a batch" in stdout
    # the schedule counts optimizer steps: one warmup epoch is 2 of them, so the 2nd
    # window of epoch 1 already runs at the peak rate (counted in batches it would not)
    assert re.search(r"epoch 1/2 step 3/6 loss [\d.]+ lr 0\.002500", stdout), stdout
    assert re.search(r"epoch 1/2 step 6/6 loss [\d.]+ lr 0\.005000", stdout), stdout
    assert re.search(r"^epoch: 2 step: 6, loss is \d+\.\d+$", stdout, re.M)
    assert "no_aug_epochs: the last 1 epoch(s), from epoch 2, train on the images as they are" \
        in stdout
    assert re.search(r"eval \(EMA\) after epoch 2: top1 [\d.]+ top5", stdout)
    assert "(EMA weights): " in stdout
    final = checkpoint_arrays(os.path.join(run_dir, FINAL))
    assert int(final["global_step"][0]) == 4  # optimizer steps
    assert float(final["ema.updates"]) == 4
    assert not any(v.any() for k, v in final.items() if k.startswith("accum_grads."))
    meta = ckpt.checkpoint_meta(ckpt.read_checkpoint(os.path.join(run_dir, FINAL)))
    assert (meta["accumulate_steps"], meta["steps_per_epoch"], meta["global_step"]) == (3, 6, 12)
    ema_file = checkpoint_arrays(os.path.join(run_dir, "vgg11_bn-ema.ckpt"))
    assert set(ema_file) == {k[len("ema."):] for k in final if k.startswith("ema.")} - {"updates"}
    for name, value in ema_file.items():
        np.testing.assert_array_equal(value, final["ema." + name], err_msg=name)
    rows = [r for r in read_metrics(os.path.join(run_dir, "metrics.csv")) if r["ema_top1"]]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    slow = {k[len("lookahead."):]: v for k, v in final.items() if k.startswith("lookahead.")}
    assert "features.4.weight" in slow and "features.0.weight" not in slow  # frozen: none
    for name, value in slow.items():  # synchronised at the epoch's end
        np.testing.assert_array_equal(value, final[name], err_msg=name)


def test_the_whitened_stem_is_set_from_the_first_images_and_stays_frozen(reference, data):
    from src.dataset import first_training_images
    from src.whitening import whitening_filters

    run_dir, stdout = reference
    assert "stem whitening: 54 filters of the first convolution set from the patches of 32 " \
           "training images, the convolution frozen" in stdout
    first = checkpoint_arrays(os.path.join(run_dir, "vgg11_bn-1_6.ckpt"))
    final = checkpoint_arrays(os.path.join(run_dir, FINAL))
    np.testing.assert_array_equal(final["features.0.weight"][:54],
                                  whitening_filters(first_training_images("cifar10", data, 32)))
    np.testing.assert_array_equal(final["features.0.weight"], first["features.0.weight"])
    np.testing.assert_array_equal(final["ema.features.0.weight"], final["features.0.weight"])
    assert "moments.features.0.weight" not in final  # not in the optimizer at all
    assert "moments.features.4.weight" in final
    assert not np.array_equal(final["features.4.weight"], first["features.4.weight"])


def test_batchnorm_scales_stay_at_one_and_the_shifts_train(reference):
    run_dir, stdout = reference
    assert "BatchNorm scales frozen: 8 gamma parameters kept at their start value" in stdout
    final = checkpoint_arrays(os.path.join(run_dir, FINAL))
    scales = [k for k in final if k.startswith("features.") and k.endswith(".gamma")]
    assert len(scales) == 8
    for name in scales:
        np.testing.assert_array_equal(final[name], 1.0, err_msg=name)
        assert "moments." + name not in final and "lookahead." + name not in final
        shift = name[:-len("gamma")] + "beta"
        assert final[shift].any() and "moments." + shift in final


def test_interrupted_mid_window_resumes_exactly(reference, data, tmp_path):
    """Ctrl-C after the 4th batch of epoch 1 (one batch into the 2nd window): the saved
    accumulated gradients are not zero, and the resumed run ends with every entry of the
    uninterrupted run's checkpoint equal."""
    run_dir, _ = reference
    out = str(tmp_path / "interrupted")
    assert interrupt_at(command(data, out), "epoch 1/2 step 4/6") == 130
    saved = ckpt.list_checkpoints(out)
    assert len(saved) == 1
    partial = checkpoint_arrays(saved[0])
    assert ckpt.checkpoint_meta(ckpt.read_checkpoint(saved[0]))["step_in_epoch"] in (4, 5)
    assert any(v.any() for k, v in partial.items() if k.startswith("accum_grads."))
    stdout = run(command(data, out, "--resume=auto"))
    assert "resumed from" in stdout
    expected = checkpoint_arrays(os.path.join(run_dir, FINAL))
    got = checkpoint_arrays(os.path.join(out, FINAL))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def refused_resume(reference, data, out, *extra):
    """(the copied checkpoint, stderr lines) of resuming the reference's epoch-1 checkpoint,
    copied into `out`, with `extra` overrides; the run must exit with 1."""
    run_dir, _ = reference
    out.mkdir()
    shutil.copy(os.path.join(run_dir, "vgg11_bn-1_6.ckpt"), out)
    result = subprocess.run(command(data, str(out), "--resume=auto", *extra),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    return out / "vgg11_bn-1_6.ckpt", result.stderr.strip().splitlines()


def test_resume_with_other_accumulate_steps_is_refused(reference, data, tmp_path):
    saved, lines = refused_resume(reference, data, tmp_path / "other", "--accumulate_steps=2")
    assert lines == [f"error: checkpoint {saved} was made with accumulate_steps=3, "
                     "this run has 2; resume with the same accumulate_steps"]


def test_resume_without_the_whitened_stem_is_refused(reference, data, tmp_path):
    saved, lines = refused_resume(reference, data, tmp_path / "unwhitened", "--stem_whitening=0")
    assert lines == [f"error: checkpoint {saved} was made with stem_whitening=32, "
                     "this run has 0; resume with --stem_whitening=32"]


def test_resume_without_lookahead_is_refused(reference, data, tmp_path):
    saved, lines = refused_resume(reference, data, tmp_path / "plain", "--lookahead_steps=0")
    assert lines == [f"error: checkpoint {saved} was made with lookahead_steps=3, "
                     "this run has 0; resume with --lookahead_steps=3"]


def test_resume_with_trained_batchnorm_scales_is_refused(reference, data, tmp_path):
    saved, lines = refused_resume(reference, data, tmp_path / "scales", "--freeze_bn_scale=False")
    assert lines == [f"error: checkpoint {saved} was made with freeze_bn_scale=True, "
                     "this run has False; resume with --freeze_bn_scale=True"]


def test_eval_py_takes_the_ema_and_the_averaged_weights(reference, data, tmp_path):
    """eval.py with flip TTA on <arch>-ema.ckpt repeats the in-training EMA evaluation of
    the last epoch; a checkpoint averaged by avg_checkpoints.py evaluates too."""
    run_dir, stdout = reference
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(os.path.join(run_dir, "vgg11_bn-ema.ckpt"), folder)
    run([sys.executable, "avg_checkpoints.py", run_dir, "--n=2",
         f"--output={folder / 'vgg11_bn-avg.ckpt'}"])
    result = run([sys.executable, "eval.py", *SMALL_RUN_ARGS, f"--data_dir={data}",
                  f"--pre_trained={folder}", "--eval_flip_tta=True",
                  "--eval_tta_shift=1"])
    found = {kind: float(acc) for acc, kind in
             re.findall(r"result: \{'acc': ([\d.]+)\} ckpt=.*-(ema|avg)\.ckpt", result)}
    assert set(found) == {"ema", "avg"}, result
    in_training = float(re.search(r"eval \(EMA\) after epoch 2: top1 ([\d.]+)", stdout)[1])
    assert found["ema"] == pytest.approx(in_training, abs=5e-5)
    assert 0 <= found["avg"] <= 1
