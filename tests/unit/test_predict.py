"""predict.py: the printed top-k names and probabilities are the softmax of the network's own
logits on the ImageNet evaluation transform, from a checkpoint (with or without a stored
config) and from an exported MindIR; bad class-name files and empty folders are one line."""
import json
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import predict
from model_utils.config import get_config, save_config
from src import checkpoint as ckpt
from src.errors import UserError
from src.factory import build_network
from src.infer_runner import imagenet_loader
from tests.helpers import REPO

CLASS_NAMES = ["red fox", "tabby, tiger cat", "oak"]  # a comma inside a name, as in ImageNet
SIZE = 32
TOLERANCE = 1e-4  # probabilities are printed with 4 decimals


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained-style run folder: vgg11_bn (32x32, 3 classes, random weights), its config
    stored in the checkpoint, class_names.json beside it, and 3 images of different sizes."""
    from PIL import Image

    ms.set_seed(3)
    root = tmp_path_factory.mktemp("predict")
    config = get_config(["--config_path=cifar10_config.yaml", "--arch=vgg11",
                         "--batch_norm=True", "--num_classes=3", f"--image_size={SIZE},{SIZE}",
                         "--native_kernels=off", "--device_target=CPU"])
    net = build_network(config)
    net.set_train(False)
    # larger head weights: logits of order 1, so probabilities differ clearly between classes
    head = net.classifier[6].weight
    head.set_data(ms.Tensor(np.random.default_rng(3).normal(0, 3, head.shape), ms.float32))
    with open(save_config(config, str(root)), encoding="utf-8") as handle:
        config_yaml = handle.read()
    stored = str(root / "vgg11_bn-1_10.ckpt")
    ckpt.save_checkpoint(net, stored, {"arch": "vgg11_bn", "config_yaml": config_yaml})
    # no config inside and no class names near it: the network is read off the weights
    bare = tmp_path_factory.mktemp("bare") / "weights.ckpt"
    ckpt.save_checkpoint(net, str(bare), {"arch": "vgg11_bn"})
    with open(root / "class_names.json", "w", encoding="utf-8") as handle:
        json.dump(CLASS_NAMES, handle)

    images = root / "images"
    (images / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [str(images / "a.jpg"), str(images / "b.png"), str(images / "more" / "c.jpeg")]
    for path, (height, width) in zip(paths, [(48, 64), (40, 40), (90, 37)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    load = imagenet_loader((1, 3, SIZE, SIZE))
    logits = [net(ms.Tensor(load(path))).asnumpy()[0] for path in paths]
    # classes far enough apart that the order cannot flip between two computations
    assert min(np.diff(np.sort(x)).min() for x in logits) > 0.01
    mindir = str(root / "export" / "vgg11_bn.mindir")
    ms.export(net, ms.Tensor(np.zeros((1, 3, SIZE, SIZE), np.float32)),
              file_name=mindir[:-len(".mindir")], file_format="MINDIR")
    return {"root": root, "ckpt": stored, "bare": str(bare), "mindir": mindir,
            "images": str(images), "paths": paths, "logits": logits}


def softmax(logits):
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def parse_output(text):
    """{image path: [(probability, name)]} from predict.py's blocks."""
    blocks, current = {}, None
    for line in text.splitlines()[1:]:  # the first line describes the model
        if not line.strip():
            continue
        if line.startswith("  "):
            probability, name = line.strip().split("  ", 1)
            blocks[current].append((float(probability), name))
        else:
            current = line
            blocks[current] = []
    return blocks


def check_against_logits(text, run, names=CLASS_NAMES):
    blocks = parse_output(text)
    assert list(blocks) == run["paths"]
    for path, logits in zip(run["paths"], run["logits"]):
        expected = softmax(logits.astype(np.float64))
        order = np.argsort(-expected)
        shown = blocks[path]
        assert len(shown) == 3  # k = min(5, number of classes)
        assert [name for _, name in shown] == [names[i] for i in order]
        np.testing.assert_allclose([p for p, _ in shown], expected[order], rtol=0,
                                   atol=TOLERANCE)


def run_predict(capsys, model, image, **options):
    """predict.run in this process (MindSpore already set up here): its stdout."""
    predict.run(model, image, device_target=None, **options)
    return capsys.readouterr().out


def test_checkpoint_with_stored_config_and_names_beside_it(run, capsys):
    out = run_predict(capsys, run["ckpt"], run["images"])
    assert "the config stored in the checkpoint" in out.splitlines()[0]
    assert str(run["root"] / "class_names.json") in out.splitlines()[0]
    check_against_logits(out, run)


def test_checkpoint_without_config_is_read_off_its_weights(run, capsys):
    names = str(run["root"] / "class_names.json")
    out = run_predict(capsys, run["bare"], run["images"], class_names=names)
    assert "vgg11_bn (network from its weights)" in out
    check_against_logits(out, run)


def test_one_image_without_names_shows_indices_and_honours_top_k(run, capsys):
    out = run_predict(capsys, run["bare"], run["paths"][1], top_k=2)
    assert "classes by index" in out.splitlines()[0]
    shown = parse_output(out)[run["paths"][1]]
    best = np.argsort(-run["logits"][1])[:2]
    assert [name for _, name in shown] == [f"class {i}" for i in best]


@pytest.mark.e2e
def test_exported_mindir_through_the_command_line_without_torch(run):
    """The script itself, in a fresh process, on the MindIR; PyTorch stays out of it."""
    names = str(run["root"] / "class_names.json")
    code = ("import runpy, sys\n"
            f"sys.argv = ['predict.py', '--model={run['mindir']}', '--image={run['images']}',"
            f" '--class_names={names}']\n"
            "runpy.run_path('predict.py', run_name='__main__')\n"
            "print('torch imported' if 'torch' in sys.modules else '')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "torch imported" not in result.stdout
    assert "vgg11_bn.mindir: 3 classes, input 32x32" in result.stdout
    check_against_logits(result.stdout, run)


def test_exported_mindir_in_process_matches_too(run, capsys):
    out = run_predict(capsys, run["mindir"], run["images"],
                      class_names=str(run["root"] / "class_names.json"))
    check_against_logits(out, run)


def one_line_error(function):
    with pytest.raises(UserError) as info:
        function()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_class_name_count_is_one_line(run, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["a", "b"]))
    message = one_line_error(lambda: predict.run(run["ckpt"], run["paths"][0],
                                                 class_names=str(names), device_target=None))
    assert "lists 2 names but the model has 3 classes" in message


def test_folder_without_images_is_one_line(run, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    message = one_line_error(lambda: predict.run(run["ckpt"], str(tmp_path), device_target=None))
    assert "holds no images" in message


def test_checkpoint_of_another_kind_is_one_line(tmp_path):
    path = str(tmp_path / "other.ckpt")
    weight = ms.Tensor(np.zeros((2, 2), np.float32))
    ckpt.save_checkpoint([{"name": "dense.weight", "data": weight}], path, {})
    image = str(tmp_path / "x.png")
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    message = one_line_error(lambda: predict.run(path, image, device_target=None))
    assert "is not a VGG classifier checkpoint (0 convolutions" in message


def test_linear_head_checkpoint_without_config_is_read_off_its_weights(run, tmp_path):
    from src import vgg

    ms.set_seed(5)
    net = vgg.vgg11_bn(num_classes=4, image_size=(SIZE, SIZE), head="linear")
    net.set_train(False)
    path = str(tmp_path / "linear.ckpt")
    ckpt.save_checkpoint(net, path, {"arch": "vgg11_bn"})
    entries = ckpt.read_checkpoint(path)
    assert predict.settings_from_weights(entries, path)[-2:] == [
        "--head=linear", f"--image_size={SIZE},{SIZE}"]
    model = predict.CheckpointModel(path)
    assert model.net.head == "linear"
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), np.float32)
    np.testing.assert_allclose(model(x)[0], net(ms.Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-5)
