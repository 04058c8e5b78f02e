"""The training toolbox in data-parallel jobs: a 2-process msrun job with accumulation,
clipping, Nesterov, EMA, Lookahead, mixup/CutMix, RandAugment, random erasing and flip-TTA
evaluation keeps its ranks identical; flip-TTA evaluation split over shards counts exactly
what one process counts."""
import re

import numpy as np
import pytest

from tests.helpers import (
    JOB_BATCH,
    JOB_RECORDS,
    checkpoint_arrays,
    job_output,
    launch_cpu_training,
    needs_msrun,
)

TOOLBOX = ["--accumulate_steps=2", "--clip_grad_norm=1.0", "--nesterov=True",
           "--ema_decay=0.9", "--lookahead_steps=2", "--mixup_alpha=0.4", "--cutmix_alpha=1.0",
           "--auto_augment=randaugment", "--random_erasing=0.25", "--eval_interval=1",
           "--eval_flip_tta=True", "--is_save_on_master=False", "--native_kernels=off"]


@pytest.mark.e2e
@needs_msrun
def test_toolbox_job_keeps_ranks_identical(id_coded_cifar, tmp_path):
    run_dir = tmp_path / "run"
    result = launch_cpu_training(id_coded_cifar, tmp_path, f"--ckpt_path={run_dir}", *TOOLBOX)
    assert result.returncode == 0, job_output(result, tmp_path)
    batches = JOB_RECORDS // (2 * JOB_BATCH)
    name = f"vgg11-1_{batches}.ckpt"
    rank0 = checkpoint_arrays(run_dir / "rank_0" / name)
    rank1 = checkpoint_arrays(run_dir / "rank_1" / name)
    assert rank0.keys() == rank1.keys()
    assert int(rank0["global_step"][0]) == batches // 2  # optimizer steps
    assert any(k.startswith("ema.") for k in rank0)
    assert any(k.startswith("lookahead.") for k in rank0)
    # no BatchNorm here: every entry (weights, momenta, EMA averages, Lookahead's slow
    # weights) is the same on both ranks, although each rank mixed and augmented its own
    # batches
    different = [k for k in rank0 if not np.array_equal(rank0[k], rank1[k])]
    assert not different, f"ranks diverged in {different[:5]}"
    logs = [(run_dir / f"train_rank{r}.log").read_text() for r in (0, 1)]
    ema_lines = [re.search(r"eval \(EMA\) after epoch 1: top1 [\d.]+ top5 [\d.]+", log)
                 for log in logs]
    assert all(ema_lines) and ema_lines[0][0] == ema_lines[1][0]  # summed over the ranks
    assert "2 batches per optimizer step, 64 images per optimizer step" in logs[0]


@pytest.mark.parametrize("tta", [{"flip_tta": True}, {"flip_tta": True, "tta_shift": 1}])
def test_tta_over_shards_adds_up_to_one_process(id_coded_cifar, tta):
    import mindspore as ms

    from model_utils.config import get_config
    from src.evaluation import evaluate
    from src.factory import build_dataset, build_network
    from src.runtime import Runtime

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = get_config(["--config_path=cpu_quickstart_config.yaml", "--arch=vgg11",
                         "--batch_norm=False", "--has_dropout=False", "--native_kernels=off",
                         f"--data_dir={id_coded_cifar}", "--batch_size=16", "--num_workers=1"])
    ms.set_seed(4)
    net = build_network(config, "CPU")

    def counts(rank, size):
        return evaluate(net, build_dataset(config, training=False,
                                           runtime=Runtime("CPU", 0, rank, size)), **tta)

    whole = counts(0, 1)
    parts = [counts(rank, 3) for rank in range(3)]  # 40 images: shards of 14, 13, 13
    assert whole.total == 40 == sum(p.total for p in parts)
    assert (whole.top1, whole.top5) == (sum(p.top1 for p in parts), sum(p.top5 for p in parts))
    np.testing.assert_array_equal(whole.class_top1, sum(p.class_top1 for p in parts))


def test_flip_tta_averages_the_softmax_of_the_horizontal_mirror():
    """A 'network' scoring class 0 by the left half of the image and class 1 by the right
    half: averaged with its horizontal mirror it can no longer tell them apart (0.5 each),
    which a vertical flip or no flip would not give."""
    from src.evaluation import flip_tta_scores

    images = np.random.default_rng(0).standard_normal((5, 3, 4, 6)).astype(np.float32)

    def halves(x):
        return np.stack([x[..., :3].mean(axis=(1, 2, 3)), x[..., 3:].mean(axis=(1, 2, 3))], 1)

    np.testing.assert_allclose(flip_tta_scores(halves, images), 0.5, rtol=1e-6)
    one_view = np.exp(halves(images)) / np.exp(halves(images)).sum(axis=1, keepdims=True)
    assert not np.allclose(one_view, 0.5, atol=1e-3)


def test_shift_tta_weights_each_shifted_view():
    """A 'network' that reads only pixel (1, 1): the view moved down-right shows it pixel
    (0, 0), the one moved up-left pixel (2, 2); the scores are 1/2, 1/4, 1/4 of their
    softmaxes. With flip too, each view is averaged with its mirror image, which reads
    column W-2 instead."""
    from src.evaluation import softmax, tta_scores

    images = np.random.default_rng(1).standard_normal((3, 1, 4, 5)).astype(np.float32)

    def pixel(x):
        return np.stack([x[:, 0, 1, 1], -x[:, 0, 1, 1]], axis=1)

    def reads(row, col):
        value = images[:, 0, row, col]
        return softmax(np.stack([value, -value], axis=1))

    expected = 0.5 * reads(1, 1) + 0.25 * reads(0, 0) + 0.25 * reads(2, 2)
    np.testing.assert_allclose(tta_scores(pixel, images, shift=1), expected, rtol=1e-6)
    # mirrored, pixel (1, 1) is column 3 of a 5-wide image; shifted, columns 2 and 4
    mirrored = 0.5 * reads(1, 3) + 0.25 * reads(0, 2) + 0.25 * reads(2, 4)
    np.testing.assert_allclose(tta_scores(pixel, images, flip=True, shift=1),
                               (expected + mirrored) / 2, rtol=1e-6)
    np.testing.assert_array_equal(tta_scores(pixel, images), pixel(images))  # no TTA: logits


def test_shift_tta_reflects_the_border_and_refuses_too_large_a_shift():
    from src.evaluation import shifted_views

    image = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    ahead, behind = shifted_views(image, 1)
    np.testing.assert_array_equal(ahead[0, 0], [[4, 3, 4], [1, 0, 1], [4, 3, 4]])
    np.testing.assert_array_equal(behind[0, 0], [[4, 5, 4], [7, 8, 7], [4, 5, 4]])
    with pytest.raises(ValueError, match="eval_tta_shift must be between 1 and 2 for 3x3"):
        shifted_views(image, 3)
