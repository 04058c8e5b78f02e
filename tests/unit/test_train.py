"""Training: schedules, parameter groups, checkpoints, exact resume, failure handling."""
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from model_utils.config import get_config
from src import checkpoint as ckpt
from src import lr_schedule
from src.errors import UserError
from src.progress import read_metrics
from tests.helpers import (
    SMALL_RUN_ARGS,
    checkpoint_arrays,
    digest,
    interrupt_at,
    quick_config,
    run_python,
    tiny_net,
    write_learnable_cifar,
)


def run_train(args, check=True, timeout=600):
    result = run_python("train.py", *SMALL_RUN_ARGS, *args, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def data(learnable_cifar):
    return learnable_cifar()


def first_checkpoint_in(run_dir, folder):
    """A new folder holding a copy of the run's epoch-1 checkpoint: the copy's path."""
    folder.mkdir()
    return Path(shutil.copy(os.path.join(run_dir, "vgg11_bn-1_8.ckpt"), folder))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """One uninterrupted 2-epoch run, evaluated after each epoch."""
    run_dir = str(tmp_path_factory.mktemp("reference"))
    result = run_train([f"--data_dir={data}", f"--ckpt_path={run_dir}", "--eval_interval=1"])
    return run_dir, result.stdout


# --- schedules -------------------------------------------------------------------------

def test_step_schedule_is_warmup_then_quadratic_decay():
    rates = lr_schedule.warmup_quadratic_decay_lr(0.01, 0.1, 2, 10, 5)
    assert len(rates) == 50
    assert rates[0] == pytest.approx(0.01)
    assert rates[5] == pytest.approx(0.01 + 0.09 * 5 / 10)
    assert rates[10] == pytest.approx(0.1)
    assert rates[30] == pytest.approx(0.1 * (1 - 20 / 40) ** 2)
    assert rates[49] == pytest.approx(0.1 * (1 / 40) ** 2)


def test_exponential_schedule_multiplies_at_milestones():
    rates = lr_schedule.warmup_multistep_lr(0.1, (3, 6), 0.1, 1, 8, 4)
    assert rates[0] == pytest.approx(0.1 / 4) and rates[3] == pytest.approx(0.1)
    assert rates[11] == pytest.approx(0.1) and rates[12] == pytest.approx(0.01)
    assert rates[24] == pytest.approx(0.001) and rates[31] == pytest.approx(0.001)


def test_cosine_schedule_reaches_eta_min_at_t_max():
    rates = lr_schedule.warmup_cosine_annealing_lr(0.1, 0.001, 4, 0, 5, 3)
    assert rates[0] == pytest.approx(0.1)
    assert rates[6] == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi * 2 / 4)) / 2)
    assert rates[12] == pytest.approx(0.001)


def test_config_picks_the_named_schedule():
    config = quick_config("--lr_scheduler=exponential", "--lr_epochs=2", "--lr_gamma=0.5",
                          "--max_epoch=4", "--warmup_epochs=0")
    rates = lr_schedule.learning_rates(config, 10)
    assert rates[19] == pytest.approx(config.lr) and rates[20] == pytest.approx(config.lr / 2)


# --- optimiser --------------------------------------------------------------------------

def test_no_weight_decay_on_batchnorm_or_bias():
    import mindspore as ms

    from src import vgg
    from src.trainer import build_optimizer, split_parameter_groups

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), has_bias=True)
    groups = split_parameter_groups(net)
    decayed = [p.name for (_, decay), ps in groups.items() if decay for p in ps]
    plain = [p.name for (_, decay), ps in groups.items() if not decay for p in ps]
    assert "features.0.weight" in decayed and "classifier.6.weight" in decayed
    assert {"features.0.bias", "features.1.gamma", "features.1.beta",
            "classifier.6.bias"} <= set(plain)
    assert not [n for n in decayed if "gamma" in n or "beta" in n or n.endswith("bias")]
    config = quick_config("--freeze_features=True")
    frozen = vgg.vgg11_bn(num_classes=10, image_size=(32, 32))
    optimizer = build_optimizer(frozen, config, np.full(10, 0.1, np.float32), 1.0)
    names = {p.name for p in optimizer.parameters}
    assert names and all(n.startswith("classifier.") for n in names)


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_matches_mindspore_momentum(fused, monkeypatch):
    """The project's optimizers (the native in-place kernel on CPU, the fused-decay
    nn.Momentum elsewhere) update weights and momenta exactly as nn.Momentum with the same
    groups (weight decay on weights only, a scaled feature learning rate)."""
    import mindspore as ms
    from mindspore import nn

    from src import trainer

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    monkeypatch.setattr(trainer, "_fused_optimizer_usable", lambda config, target: fused)
    config = quick_config("--weight_decay=0.01", "--features_lr_scale=0.5", "--momentum=0.8")
    lrs = np.array([0.1, 0.05, 0.02, 0.01], np.float32)

    def make():
        return tiny_net(11, conv_bias=True)

    def run(net, optimizer):
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
        step.set_train()
        rng = np.random.default_rng(3)
        x = ms.Tensor(rng.standard_normal((5, 3, 6, 6)).astype(np.float32))
        y = ms.Tensor(rng.integers(0, 3, 5).astype(np.int32))
        return [float(step(x, y).asnumpy()) for _ in range(len(lrs))]

    ours, reference = make(), make()
    optimizer = trainer.build_optimizer(ours, config, lrs, 1.0, "CPU")
    assert type(optimizer).__name__ == ("FusedMomentum" if fused else "DecayedMomentum")
    groups = []
    for (is_feature, decayed), params in trainer.split_parameter_groups(reference).items():
        groups.append({"params": params, "weight_decay": 0.01 if decayed else 0.0,
                       "lr": ms.Tensor(lrs * (0.5 if is_feature else 1.0))})
    groups.append({"order_params": reference.trainable_params()})
    expected = nn.Momentum(groups, learning_rate=ms.Tensor(lrs), momentum=0.8)
    np.testing.assert_allclose(run(ours, optimizer), run(reference, expected), rtol=1e-5)
    for mine, theirs in zip(optimizer.parameters, expected.parameters):
        np.testing.assert_allclose(mine.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-7)
    for mine, theirs in zip(optimizer.moments, expected.moments):
        assert mine.name == theirs.name
        np.testing.assert_allclose(mine.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-7)
    assert int(optimizer.global_step.asnumpy()[0]) == len(lrs)


@pytest.mark.parametrize("fused", [True, False])
def test_batchnorm_shifts_take_their_own_rate_and_frozen_scales_stay(fused, monkeypatch):
    """bn_bias_lr_scale multiplies the step of the BatchNorm shifts and of nothing else;
    freeze_bn_scale leaves the scales out of the optimizer, so they keep their value. With the
    scales at their start value (1) the first step's gradients are the same, so the shifts
    move exactly bn_bias_lr_scale times as far in both cases."""
    import mindspore as ms
    from mindspore import nn

    from src import trainer
    from src.momentum import freeze_batchnorm_scales

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    monkeypatch.setattr(trainer, "_fused_optimizer_usable", lambda config, target: fused)
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.standard_normal((6, 3, 6, 6)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 3, 6).astype(np.int32))

    def one_step(*overrides):
        net = tiny_net(11, conv_bias=True)
        config = quick_config("--weight_decay=0.01", "--momentum=0.8", "--nesterov=True",
                              *overrides)
        if config.freeze_bn_scale:
            assert freeze_batchnorm_scales(net) == 1
        start = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
        optimizer = trainer.build_optimizer(net, config, np.full(3, 0.1, np.float32), 1.0)
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
        step.set_train()
        step(x, y)
        moved = {p.name: p.asnumpy() - start[p.name] for p in net.get_parameters()}
        return moved, {p.name for p in optimizer.parameters}

    plain, plain_names = one_step()
    scaled, _ = one_step("--bn_bias_lr_scale=4")
    frozen, frozen_names = one_step("--bn_bias_lr_scale=4", "--freeze_bn_scale=True")
    shift, scale = "features.1.beta", "features.1.gamma"
    assert np.abs(plain[shift]).min() > 0 and np.abs(plain[scale]).max() > 0
    for moved in (scaled, frozen):
        np.testing.assert_allclose(moved[shift], 4 * plain[shift], rtol=1e-5, atol=1e-8)
    for name in ("features.0.weight", "features.0.bias", "classifier.1.weight"):
        np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(frozen[name], plain[name], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scaled[scale], plain[scale], rtol=1e-6, atol=1e-9)
    assert not frozen[scale].any()
    assert plain_names - frozen_names == {scale}


def test_mixed_precision_step_takes_the_dropout_masks(monkeypatch):
    """On GPU/Ascend the step runs under amp O2; the masked-dropout loss must still get the
    VGG (not the AMP wrapper), so the step takes image, label and both masks as Trainer
    feeds it. Forced here on CPU, where float16 also runs (slowly)."""
    import logging

    import mindspore as ms

    from src import trainer, vgg

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    monkeypatch.setattr(trainer, "choose_precision", lambda config, target, log: ("O2", "fixed"))
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32))
    config = quick_config("--amp_level=O2")
    step = trainer.build_train_step(net, config, np.full(4, 0.01, np.float32), "GPU",
                                    logging.getLogger("test"))
    rng = np.random.default_rng(0)
    image = ms.Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    label = ms.Tensor(np.array([1, 2], np.int32))
    masks = trainer.DropoutMasks(config.seed, 0)(0, 2)
    loss = float(step(image, label, *masks).asnumpy())
    assert np.isfinite(loss) and loss > 0


# --- end to end (train.py runs: marked e2e) ----------------------------------------------

@pytest.mark.e2e
def test_training_learns_and_writes_its_outputs(reference_run):
    run_dir, stdout = reference_run
    assert "epoch: 2 step: 8, loss is" in stdout
    rows = read_metrics(os.path.join(run_dir, "metrics.csv"))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    evals = [float(r["eval_top1"]) for r in rows if r["eval_top1"]]
    assert len(evals) == 2 and evals[-1] > 0.3  # 10 classes: chance is 0.1
    best = int(np.argmax(evals))  # the first of equal ones
    assert re.search(rf"training finished in 0:\d\d:\d\d; best top-1 {evals[best]:.4f} after "
                     rf"epoch {best + 1}; checkpoints in ", stdout), stdout[-500:]
    for name in ("config.yaml", "metrics.png", "vgg11_bn-1_8.ckpt", "vgg11_bn-2_8.ckpt",
                 "vgg11_bn-best.ckpt", "train_rank0.log"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert get_config([f"--config_path={run_dir}/config.yaml"]).arch == "vgg11"


@pytest.mark.e2e
def test_checkpoint_carries_resume_state(reference_run):
    run_dir, _ = reference_run
    entries = ckpt.read_checkpoint(os.path.join(run_dir, "vgg11_bn-1_8.ckpt"))
    meta = ckpt.checkpoint_meta(entries)
    assert (meta["epoch"], meta["step_in_epoch"], meta["global_step"]) == (1, 0, 8)
    assert meta["steps_per_epoch"] == 8
    assert "arch: vgg11" in meta["config_yaml"]
    assert "moments.features.0.weight" in entries
    assert int(entries["global_step"].asnumpy().reshape(-1)[0]) == 8


@pytest.mark.e2e
def test_resume_from_epoch_checkpoint_is_exact(reference_run, data, tmp_path):
    run_dir, _ = reference_run
    resumed = first_checkpoint_in(run_dir, tmp_path / "resumed").parent
    result = run_train([f"--data_dir={data}", f"--ckpt_path={resumed}", "--resume=auto"])
    assert "resumed from" in result.stdout and "global step 8" in result.stdout
    assert re.search(r"since the resume; best top-1 [0-9.]+ after epoch 2;", result.stdout)
    expected = checkpoint_arrays(os.path.join(run_dir, "vgg11_bn-2_8.ckpt"))
    got = checkpoint_arrays(str(resumed / "vgg11_bn-2_8.ckpt"))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)


@pytest.mark.e2e
@pytest.mark.parametrize("best_epoch, kept", [(1, True), (2, False)])
def test_resume_keeps_the_run_folders_best_checkpoint(reference_run, data, tmp_path,
                                                      best_epoch, kept):
    """A resumed run compares its evaluations with the top-1 that <arch>-best.ckpt holds (here
    an unbeatable 1.0), unless that file comes from after the resume point."""
    run_dir, _ = reference_run
    resumed = first_checkpoint_in(run_dir, tmp_path / "resumed").parent
    entries = ckpt.read_checkpoint(os.path.join(run_dir, "vgg11_bn-best.ckpt"))
    weights = [{"name": k, "data": v} for k, v in entries.items() if not k.startswith("meta.")]
    best = str(resumed / "vgg11_bn-best.ckpt")
    ckpt.save_checkpoint(weights, best, {"arch": "vgg11_bn", "epoch": best_epoch,
                                         "global_step": 8 * best_epoch, "top1": "1.0"})
    before = digest(best)
    result = run_train([f"--data_dir={data}", f"--ckpt_path={resumed}", "--resume=auto"])
    if kept:
        assert f"best so far: top1 1.0000 after epoch 1 ({best})" in result.stdout
        assert "since the resume; best top-1 1.0000 after epoch 1;" in result.stdout
        assert digest(best) == before
    else:
        assert "is from epoch 2, after the resume point" in result.stdout
        assert "new best top1" in result.stdout and digest(best) != before


@pytest.mark.e2e
def test_interrupted_run_saves_and_resumes_exactly(reference_run, data, tmp_path):
    """Ctrl-C mid-epoch writes a checkpoint; resuming from it ends where the
    uninterrupted run ended, and the losses before the interruption are identical."""
    run_dir, _ = reference_run
    out = str(tmp_path / "interrupted")
    train = [sys.executable, "train.py", *SMALL_RUN_ARGS, f"--data_dir={data}",
             f"--ckpt_path={out}", "--log_interval=1"]
    assert interrupt_at(train, "epoch 1/2 step 3/8") == 130
    saved = ckpt.list_checkpoints(out)
    assert len(saved) == 1 and "-1_" in os.path.basename(saved[0])
    meta = ckpt.checkpoint_meta(ckpt.read_checkpoint(saved[0]))
    assert meta["epoch"] == 0 and 3 <= meta["step_in_epoch"] < 8
    run_train([f"--data_dir={data}", f"--ckpt_path={out}", "--resume=auto"])
    expected = checkpoint_arrays(os.path.join(run_dir, "vgg11_bn-2_8.ckpt"))
    got = checkpoint_arrays(os.path.join(out, "vgg11_bn-2_8.ckpt"))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)
    # Same seed, same data: the same losses at the same steps (determinism).
    reference = {r["global_step"]: r["loss"] for r in read_metrics(f"{run_dir}/metrics.csv")
                 if r["loss"]}
    again = {r["global_step"]: r["loss"] for r in read_metrics(f"{out}/metrics.csv")
             if r["loss"]}
    common = set(reference) & set(again)
    assert len(common) >= 4
    assert all(reference[s] == again[s] for s in common)


@pytest.mark.e2e
def test_non_finite_loss_stops_and_keeps_last_checkpoint(reference_run, data, tmp_path):
    run_dir, _ = reference_run
    target = first_checkpoint_in(run_dir, tmp_path / "diverge")
    out = target.parent
    before = digest(str(target))
    result = run_train([f"--data_dir={data}", f"--ckpt_path={out}", "--resume=auto",
                        "--lr=1e30"], check=False)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()
    assert len(message) == 1
    assert "loss is nan" in message[0] or "loss is inf" in message[0]
    assert str(target) in message[0]
    assert "Traceback" not in result.stderr
    assert digest(str(target)) == before
    assert ckpt.list_checkpoints(str(out)) == [str(target)]


@pytest.mark.e2e
def test_pynative_mode_trains_with_the_dropout_head(data, tmp_path):
    """context_mode=pynative (eager, for debugging) trains too: under NumPy 2 the first eager
    tensor product used to fail (see src/runtime.py's settle_numpy_bridge)."""
    run_dir = str(tmp_path / "run")
    result = run_train([f"--data_dir={data}", f"--ckpt_path={run_dir}", "--context_mode=pynative",
                        "--has_dropout=True", "--max_epoch=1", "--T_max=1", "--warmup_epochs=0",
                        "--eval_interval=0"])
    loss = re.search(r"epoch: 1 step: 8, loss is ([0-9.]+)", result.stdout)
    assert loss and np.isfinite(float(loss.group(1))), result.stdout[-500:]
    assert os.path.isfile(os.path.join(run_dir, "vgg11_bn-1_8.ckpt"))


@pytest.mark.e2e
def test_pretrained_with_other_class_count(reference_run, data, tmp_path):
    run_dir, _ = reference_run
    weights = os.path.join(run_dir, "vgg11_bn-2_8.ckpt")
    refused = run_train([f"--data_dir={data}", f"--ckpt_path={tmp_path}/a",
                         f"--pre_trained={weights}", "--num_classes=12", "--max_epoch=1"],
                        check=False)
    assert refused.returncode == 1
    assert "classifier.6.weight (10, 4096) vs network (12, 4096)" in refused.stderr
    assert "--reinit_classifier=True" in refused.stderr
    tuned = run_train([f"--data_dir={data}", f"--ckpt_path={tmp_path}/b",
                       f"--pre_trained={weights}", "--num_classes=12", "--max_epoch=1",
                       "--reinit_classifier=True", "--freeze_features=True"])
    assert "classifier.6.weight, classifier.6.bias" in tuned.stdout
    start, end = checkpoint_arrays(weights), checkpoint_arrays(f"{tmp_path}/b/vgg11_bn-1_8.ckpt")
    np.testing.assert_array_equal(start["features.0.weight"], end["features.0.weight"])
    assert end["classifier.6.weight"].shape == (12, 4096)
    assert not np.array_equal(start["classifier.0.weight"], end["classifier.0.weight"])


def test_atomic_checkpoint_write_leaves_earlier_files(tmp_path, monkeypatch):
    import mindspore as ms
    from mindspore import nn

    net = nn.Dense(3, 2)
    good = str(tmp_path / "net-1_1.ckpt")
    ckpt.save_checkpoint(net, good, {"epoch": 1})
    before = digest(good)

    def full_disk(cell, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        ckpt.save_checkpoint(net, str(tmp_path / "net-2_1.ckpt"), {"epoch": 2})
    assert sorted(os.listdir(tmp_path)) == ["net-1_1.ckpt"]
    assert digest(good) == before


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    (b"\x00garbage" * 50, "corrupt or not a MindSpore checkpoint"),
])
def test_bad_checkpoint_files(tmp_path, content, expected):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        ckpt.read_checkpoint(str(path))


def test_flipped_byte_is_detected(tmp_path):
    from mindspore import nn

    path = str(tmp_path / "net.ckpt")
    ckpt.save_checkpoint(nn.Dense(30, 20), path, {"epoch": 1})
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        ckpt.read_checkpoint(path)


@pytest.mark.e2e
def test_unwritable_output_folder(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_train([f"--data_dir={data}", f"--ckpt_path={blocker}/run"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: output folder")
    assert "Traceback" not in result.stderr


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


@pytest.mark.parametrize("meta, saved, split_folder", [
    ("\n".join(CIFAR10_NAMES) + "\n\n", CIFAR10_NAMES, False),  # as the release writes it
    ("\n".join(CIFAR10_NAMES) + "\n", CIFAR10_NAMES, True),  # data_dir: the split folder
    ("\ufeff" + "\r\n".join(CIFAR10_NAMES) + "\r\n", CIFAR10_NAMES, False),  # BOM, CRLF
    ("\n".join(CIFAR10_NAMES[:9]) + "\n", None, False),  # 9 names for 10 classes: by index
    (b"\xff\xfe\x00bad", None, False),  # not text: by index, training goes on
    (None, None, False),  # no batches.meta.txt
])
def test_cifar10_class_names_come_from_the_release_meta_file(tmp_path, meta, saved,
                                                             split_folder):
    import logging
    from types import SimpleNamespace

    import train
    from src.class_names import find_class_names, read_class_names

    data = write_learnable_cifar(tmp_path / "data", n_train=4, n_eval=0)
    meta_path = tmp_path / "data" / "cifar-10-batches-bin" / "batches.meta.txt"
    if isinstance(meta, bytes):
        meta_path.write_bytes(meta)
    elif meta is not None:
        meta_path.write_bytes(meta.encode("utf-8"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = quick_config(f"--data_dir={meta_path.parent if split_folder else data}")
    train.save_class_names(config, SimpleNamespace(run_dir=str(run_dir)), logging.getLogger("t"))
    found = find_class_names(str(run_dir / "vgg16_bn-1_1.ckpt"))
    if saved is None:
        assert found is None
    else:
        assert read_class_names(found, 10) == saved
