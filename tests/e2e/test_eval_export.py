"""eval.py, export.py and ONNX evaluation against a network applied directly in this process.

A random VGG11 (32x32, 10 classes) and 40 generated CIFAR-10 records are chosen so that the
network gets exactly 24 right by clear margins; every command-line result must reproduce
that, and the exported MindIR and ONNX files must reproduce its logits.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from src.dataset import write_cifar10_bin
from src.errors import UserError
from src.evaluation import count_hits
from src.onnx_eval import load_onnx_model, predict
from tests.helpers import REPO, run_python

NUM_RECORDS, RIGHT, NUM_CLASSES = 40, 24, 10
NET_ARGS = ["--config_path=cifar10_config.yaml", "--device_target=CPU", "--arch=vgg11",
            "--batch_norm=False", "--image_size=32,32"]


def run_script(script, *args, cwd):
    return run_python(script, *NET_ARGS, *args, cwd=cwd, timeout=300)


def start_script(script, *args, cwd):
    return subprocess.Popen([sys.executable, os.path.join(REPO, script), *NET_ARGS, *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def vgg11(seed):
    import mindspore as ms

    from src.vgg import vgg11 as build

    ms.set_seed(seed)
    net = build(num_classes=NUM_CLASSES, image_size=(32, 32))
    net.set_train(False)
    return net


def eval_images(data_dir):
    """(images, labels) exactly as eval.py receives them."""
    from src.dataset import create_dataset

    data = create_dataset("cifar10", data_dir, batch_size=64, training=False, image_size=(32, 32),
                          num_classes=NUM_CLASSES)
    batches = list(data.create_tuple_iterator(output_numpy=True))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def logits_of(net, images):
    import mindspore as ms
    return net(ms.Tensor(images)).asnumpy()


def result_acc(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("result: {'acc': ")]
    assert len(lines) == 1, stdout
    return float(lines[0].split("'acc': ")[1].split("}")[0])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data, the checkpoint of the network that scores RIGHT/NUM_RECORDS on it, its logits."""
    from src.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("evalexport")
    bin_path = str(root / "data" / "cifar-10-verify-bin" / "test_batch.bin")
    pixels = np.random.default_rng(7).integers(0, 256, (2 * NUM_RECORDS, 3072), dtype=np.uint8)
    write_cifar10_bin(bin_path, pixels, np.zeros(len(pixels), np.uint8))
    net = vgg11(seed=1)
    candidates = logits_of(net, eval_images(str(root / "data"))[0])
    # keep the records with the widest top-1 margin, so that float differences between
    # kernels cannot move a prediction; the rest get the least likely class (surely wrong)
    top2 = np.sort(candidates, axis=1)[:, -2:]
    keep = np.sort(np.argsort(top2[:, 0] - top2[:, 1])[:NUM_RECORDS])
    labels = np.where(np.arange(NUM_RECORDS) < RIGHT, candidates[keep].argmax(axis=1),
                      candidates[keep].argmin(axis=1))
    write_cifar10_bin(bin_path, pixels[keep], labels)
    images, read_labels = eval_images(str(root / "data"))
    np.testing.assert_array_equal(read_labels, labels)
    direct = logits_of(net, images)
    acc = float((direct.argmax(axis=1) == labels).mean())
    assert acc == RIGHT / NUM_RECORDS
    ckpt = save_checkpoint(net, str(root / "vgg11.ckpt"), {})
    return dict(root=root, data=str(root / "data"), ckpt=ckpt, images=images, labels=labels,
                direct=direct, acc=acc)


@pytest.fixture(scope="module")
def exported(work):
    """MINDIR (batch 2) and ONNX exports of the checkpoint, made side by side."""
    out = work["root"] / "export"
    mindir = start_script("export.py", f"--ckpt_file={work['ckpt']}", f"--file_name={out}/vgg11",
                          "--file_format=MINDIR", "--export_batch_size=2", cwd=work["root"])
    onnx = start_script("export.py", f"--ckpt_file={work['ckpt']}", f"--file_name={out}/vgg11",
                        "--file_format=ONNX", cwd=work["root"])
    logs = dict(mindir=finished(mindir), onnx=finished(onnx))
    return dict(mindir=str(out / "vgg11.mindir"), onnx=str(out / "vgg11.onnx"), logs=logs)


def test_eval_prints_the_accuracy_of_the_network_over_every_image(work):
    run = run_script("eval.py", f"--data_dir={work['data']}", f"--pre_trained={work['ckpt']}",
                     "--batch_size=16", cwd=work["root"])  # 16 + 16 + 8: a partial last batch
    assert run.returncode == 0, run.stderr
    assert result_acc(run.stdout) == work["acc"]
    assert f"eval speed: {NUM_RECORDS} images in " in run.stdout
    assert "images/s" in run.stdout


def save_with_classes_rolled(ckpt, path, shift):
    """The checkpoint with its output classes renamed (j -> j + shift): other predictions."""
    import mindspore as ms

    from src.checkpoint import read_checkpoint, save_checkpoint

    params = []
    for name, value in read_checkpoint(ckpt).items():
        if name.startswith("classifier.6."):
            value = ms.Tensor(np.roll(value.asnumpy(), shift, axis=0))
        params.append({"name": name, "data": value})
    return save_checkpoint(params, path, {})


def test_eval_of_a_folder_goes_in_epoch_order_and_names_the_best(work):
    folder = work["root"] / "run"
    folder.mkdir()
    save_with_classes_rolled(work["ckpt"], str(folder / "vgg11-1_5.ckpt"), 1)
    os.link(work["ckpt"], folder / "vgg11-2_5.ckpt")
    save_with_classes_rolled(work["ckpt"], str(folder / "vgg11-10_5.ckpt"), 3)
    run = run_script("eval.py", f"--data_dir={work['data']}", f"--pre_trained={folder}",
                     cwd=work["root"])
    assert run.returncode == 0, run.stderr
    results = [line for line in run.stdout.splitlines() if line.startswith("result:")]
    assert [os.path.basename(line.split("ckpt=")[1]) for line in results] == [
        "vgg11-1_5.ckpt", "vgg11-2_5.ckpt", "vgg11-10_5.ckpt"]
    accs = [result_acc(line) for line in results]
    assert accs[1] == work["acc"] and max(accs[0], accs[2]) < work["acc"]
    best = [line for line in run.stdout.splitlines() if line.startswith("best: ")]
    assert best and best[0].startswith(f"best: {folder / 'vgg11-2_5.ckpt'} (top-1 acc 0.6000")


def test_imagenet_eval_prints_upstream_top1_and_top5_counts(work):
    import mindspore as ms
    from PIL import Image

    from src.checkpoint import load_weights, read_checkpoint
    from src.dataset import create_dataset

    data = work["root"] / "imagenet"
    rng = np.random.default_rng(3)
    for label, name in enumerate(["n01", "n02", "n03"]):
        (data / "validation_preprocess" / name).mkdir(parents=True)
        for i in range(3 + label):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / "validation_preprocess" / name / f"{i}.JPEG")
    net = vgg11(seed=5)
    load_weights(net, read_checkpoint(work["ckpt"]), work["ckpt"])
    batches = create_dataset("imagenet2012", str(data), batch_size=4, training=False,
                             image_size=(32, 32), num_classes=NUM_CLASSES)
    top1 = top5 = 0
    for image, label in batches.create_tuple_iterator(output_numpy=True):
        hits = count_hits(net(ms.Tensor(image)).asnumpy(), label)
        top1, top5 = top1 + hits[0], top5 + hits[1]
    run = run_script("eval.py", f"--data_dir={data}", f"--pre_trained={work['ckpt']}",
                     "--dataset=imagenet2012", "--batch_size=4", cwd=work["root"])
    assert run.returncode == 0, run.stderr
    assert f"after allreduce eval: top1_correct={top1}, tot=12, acc={100 * top1 / 12:.2f}%" \
        in run.stdout.splitlines()
    assert f"after allreduce eval: top5_correct={top5}, tot=12, acc={100 * top5 / 12:.2f}%" \
        in run.stdout.splitlines()


def test_a_checkpoint_that_does_not_fit_or_is_corrupt_is_one_line_error(work):
    truncated = str(work["root"] / "truncated.ckpt")
    with open(work["ckpt"], "rb") as source, open(truncated, "wb") as target:
        target.write(source.read(os.path.getsize(work["ckpt"]) // 2))
    cases = {  # another class count, another variant, a damaged file
        "shape mismatch in classifier.6.weight (10, 4096) vs network (100, 4096)":
            (work["ckpt"], "--num_classes=100"),
        "parameters missing": (work["ckpt"], "--arch=vgg16"),
        "is corrupt": (truncated, "--num_classes=10"),
    }
    runs = {expected: start_script("eval.py", f"--data_dir={work['data']}",
                                   f"--pre_trained={path}", option, cwd=work["root"])
            for expected, (path, option) in cases.items()}
    for expected, process in runs.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 1, err
        lines = err.strip().splitlines()
        path = cases[expected][0]
        assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {path} "), err
        assert expected in lines[0]


def test_mindir_export_reproduces_the_checkpoint_logits(work, exported):
    import mindspore as ms
    from mindspore import nn

    from src.infer_runner import mindir_input_shape

    assert f"exported MINDIR to {exported['mindir']} (input 3x32x32, batch 2)" \
        in exported["logs"]["mindir"]
    assert mindir_input_shape(exported["mindir"]) == [2, 3, 32, 32]
    graph = nn.GraphCell(ms.load(exported["mindir"]))
    for start in (0, 2, 38):
        logits = graph(ms.Tensor(work["images"][start:start + 2])).asnumpy()
        np.testing.assert_allclose(logits, work["direct"][start:start + 2], rtol=0, atol=1e-4)


def test_onnx_export_has_a_free_batch_axis_and_reproduces_the_logits(work, exported):
    import onnxruntime as ort

    assert f"exported ONNX to {exported['onnx']} (input 3x32x32, batch free)" \
        in exported["logs"]["onnx"]
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    assert session.get_outputs()[0].shape == ["batch", NUM_CLASSES]
    for batch in (work["images"][:1], work["images"]):
        logits = session.run(None, {"image": batch})[0]
        np.testing.assert_allclose(logits, work["direct"][:len(batch)], rtol=0, atol=1e-4)


def test_onnx_evaluation_gives_the_checkpoint_accuracy(work, exported):
    run = run_script("eval.py", f"--data_dir={work['data']}", f"--pre_trained={exported['onnx']}",
                     "--batch_size=16", cwd=work["root"])
    assert run.returncode == 0, run.stderr
    assert result_acc(run.stdout) == work["acc"]
    assert f"ckpt={exported['onnx']}" in run.stdout


def test_onnx_model_of_another_image_size_is_refused(exported):
    with pytest.raises(UserError) as raised:
        load_onnx_model(exported["onnx"], (64, 64))
    assert str(raised.value) == (
        f"ONNX model {exported['onnx']} takes inputs of shape (-1, 3, 32, 32), but the "
        "evaluation images are 3x64x64; set --image_size to the size the model was exported with")


def test_air_export_off_ascend_is_one_line_error(work, monkeypatch, capsys):
    import export
    from src.cli import run_entry

    argv = [*NET_ARGS, f"--ckpt_file={work['ckpt']}", "--file_format=AIR",
            f"--file_name={work['root']}/vgg11"]
    monkeypatch.setattr(sys, "argv", ["export.py", *argv])
    with pytest.raises(SystemExit) as exited:
        run_entry(export.main, argv)
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: file_format AIR needs device_target=Ascend (MindSpore writes AIR only there), "
        "got CPU; use --file_format=MINDIR or ONNX"]
    assert not os.path.exists(f"{work['root']}/vgg11.air")


class FixedBatchModel:
    """Stands in for an ONNX model exported with batch 3: records what it is fed."""

    input_shape = [3, 3, 32, 32]

    def __init__(self):
        self.fed = []

    def __call__(self, images):
        assert images.shape[0] == 3
        self.fed.append(images.shape[0])
        return [images.reshape(3, -1)[:, :4] * 2]


def test_predict_feeds_a_fixed_batch_model_in_padded_chunks():
    images = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    model = FixedBatchModel()
    logits = predict(model, images)
    assert model.fed == [3, 3, 3]
    np.testing.assert_array_equal(logits, images.reshape(7, -1)[:, :4] * 2)
