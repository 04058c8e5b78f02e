"""Fine-tuning a pre-trained network on a folder of one's own images."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from src import checkpoint as ckpt
from src.progress import read_metrics
from tests.helpers import checkpoint_arrays, run_python

CLASSES = ["cat", "dog", "emu"]
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "emu": (50, 60, 230)}


def write_image_folder(root, per_class=12, size=64, seed=0):
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.jpg"), quality=90)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 10-class vgg11 checkpoint at 64x64 standing in for ImageNet weights."""
    import mindspore as ms

    from src import vgg

    ms.set_seed(3)
    net = vgg.vgg11(num_classes=10, image_size=(64, 64), pad_mode="pad", has_bias=True,
                    initialize_mode="KaimingNormal")
    path = str(tmp_path_factory.mktemp("weights") / "vgg11-imagenet.ckpt")
    ckpt.save_checkpoint(net, path, {"arch": "vgg11"})
    return path


def finetune(data, run_dir, pretrained, *extra):
    return run_python("train.py", "--config_path=imagenet2012_config.yaml",
                      "--device_target=CPU", f"--data_dir={data}", "--arch=vgg11",
                      "--batch_norm=False", "--image_size=64,64", "--batch_size=8",
                      "--max_epoch=4", "--T_max=4", "--lr=0.01", "--log_interval=1",
                      f"--ckpt_path={run_dir}", f"--pre_trained={pretrained}",
                      "--keep_checkpoint_max=1", *extra)


def test_finetune_new_head_frozen_features(tmp_path, pretrained):
    data = str(tmp_path / "images")
    write_image_folder(data)
    run_dir = str(tmp_path / "run")
    result = finetune(data, run_dir, pretrained, "--num_classes=3", "--reinit_classifier=True",
                      "--freeze_features=True")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "classes: 0=cat, 1=dog, 2=emu" in result.stdout
    assert "classifier.6.weight, classifier.6.bias" in result.stdout
    with open(os.path.join(run_dir, "class_names.json"), encoding="utf-8") as handle:
        assert json.load(handle) == CLASSES
    start = checkpoint_arrays(pretrained)
    end = checkpoint_arrays(ckpt.list_checkpoints(run_dir)[-1])
    assert end["classifier.6.weight"].shape == (3, 4096)
    for name in start:
        if name.startswith("features."):
            np.testing.assert_array_equal(start[name], end[name], err_msg=name)
    assert not np.array_equal(start["classifier.3.weight"], end["classifier.3.weight"])
    losses = [float(r["loss"]) for r in read_metrics(os.path.join(run_dir, "metrics.csv"))
              if r["loss"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_class_folders_must_match_num_classes(tmp_path, pretrained):
    data = str(tmp_path / "images")
    write_image_folder(data, per_class=2)
    result = finetune(data, str(tmp_path / "run"), pretrained, "--num_classes=5",
                      "--reinit_classifier=True")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {data} has 3 class folders but num_classes is 5; "
                                     "set --num_classes=3")


def test_eval_and_export_use_the_class_names(tmp_path, pretrained):
    data = str(tmp_path / "images")
    write_image_folder(data, per_class=4)
    run_dir = str(tmp_path / "run")
    trained = finetune(data, run_dir, pretrained, "--num_classes=3", "--reinit_classifier=True",
                       "--freeze_features=True", "--max_epoch=1", "--T_max=1")
    assert trained.returncode == 0, trained.stderr
    weights = ckpt.list_checkpoints(run_dir)[-1]
    common = ["--config_path=imagenet2012_config.yaml", "--device_target=CPU", "--arch=vgg11",
              "--batch_norm=False", "--image_size=64,64", "--num_classes=3"]
    evaluated = run_python("eval.py", *common, f"--data_dir={data}", f"--pre_trained={weights}",
                           "--batch_size=5")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = evaluated.stdout.splitlines()
    start = lines.index("top-1 accuracy per class:")
    per_class = lines[start + 1:start + 4]
    assert [line.split()[0] for line in per_class] == CLASSES
    assert all(line.endswith("/4)") for line in per_class)  # every image counted once
    out = tmp_path / "export" / "vgg11"
    exported = run_python("export.py", *common, f"--ckpt_file={weights}", f"--file_name={out}")
    assert exported.returncode == 0, exported.stderr
    with open(tmp_path / "export" / "class_names.json", encoding="utf-8") as handle:
        assert json.load(handle) == CLASSES


def test_finetune_torchvision_style_weights_into_a_linear_head(tmp_path, pretrained):
    """The mlp-head weights give their features to a network with head=linear; its one dense
    layer is trained from scratch, and eval.py scores the run's checkpoint."""
    data = str(tmp_path / "images")
    write_image_folder(data)
    run_dir = str(tmp_path / "run")
    refused = finetune(data, run_dir, pretrained, "--num_classes=3", "--head=linear")
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "has the mlp head (classifier.0/classifier.3/classifier.6) but the network has "
        "head=linear; set --head=mlp, or --reinit_classifier=True to train a new linear head "
        "on its features")
    result = finetune(data, run_dir, pretrained, "--num_classes=3", "--head=linear",
                      "--reinit_classifier=True", "--freeze_features=True")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "classifier.0.weight, classifier.0.bias" in result.stdout
    start = checkpoint_arrays(pretrained)
    weights = ckpt.list_checkpoints(run_dir)[-1]
    end = checkpoint_arrays(weights)
    assert sorted(n for n in end if n.startswith("classifier.")) == [
        "classifier.0.bias", "classifier.0.weight"]
    assert end["classifier.0.weight"].shape == (3, 512 * 2 * 2)
    for name in start:
        if name.startswith("features."):
            np.testing.assert_array_equal(start[name], end[name], err_msg=name)
    losses = [float(r["loss"]) for r in read_metrics(os.path.join(run_dir, "metrics.csv"))
              if r["loss"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    evaluated = run_python("eval.py", "--config_path=imagenet2012_config.yaml",
                           "--device_target=CPU", "--arch=vgg11", "--batch_norm=False",
                           "--image_size=64,64", "--num_classes=3", "--head=linear",
                           f"--data_dir={data}", f"--pre_trained={weights}", "--batch_size=6")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "top-1 accuracy per class:" in evaluated.stdout
