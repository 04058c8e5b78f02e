"""The offline inference chain: preprocess.py -> src/infer_runner.py or ascend310_infer ->
postprocess.py.

A tiny network is exported as MindIR (and ONNX when onnxruntime is installed) and run over 37
generated CIFAR-10 records; the chain must give exactly the logits and the accuracy of the
network applied to the evaluation pipeline. The C++ app is syntax-checked against stub
headers and built with CMake and run against a fake MindSpore library (tests/stubs/).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import postprocess
import preprocess
from src import infer_runner
from src.dataset import write_cifar10_bin
from src.errors import UserError
from tests.helpers import REPO, STUBS, run_bash

NUM_RECORDS, NUM_CLASSES, RIGHT = 37, 10, 20  # the first RIGHT records get the predicted label


def tiny_net():
    """Conv-BN-ReLU-pool twice and a dense layer: the VGG layer code, small enough to be quick."""
    from mindspore import nn

    from src.vgg import make_layers

    class TinyVGG(nn.Cell):
        def __init__(self):
            super().__init__()
            self.features = make_layers([8, "M", 16, "M"], batch_norm=True)
            self.flatten = nn.Flatten()
            self.head = nn.Dense(16 * 8 * 8, NUM_CLASSES)

        def construct(self, x):
            return self.head(self.flatten(self.features(x)))

    net = TinyVGG()
    net.set_train(False)
    return net


def eval_pipeline(data_dir, name="cifar10"):
    """(images N,3,32,32, labels N) exactly as eval.py receives them."""
    from src.dataset import create_dataset
    dataset = create_dataset(name, data_dir, batch_size=16, training=False, image_size=(32, 32),
                             num_classes=NUM_CLASSES)
    batches = list(dataset.create_tuple_iterator(output_numpy=True))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def net_logits(net, images):
    import mindspore as ms
    return net(ms.Tensor(images)).asnumpy()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """CIFAR-10 eval data whose labels make the tiny net score RIGHT/NUM_RECORDS, and its MindIR."""
    import mindspore as ms
    root = tmp_path_factory.mktemp("infer")
    data_dir = root / "data"
    bin_path = str(data_dir / "cifar-10-verify-bin" / "test_batch.bin")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (NUM_RECORDS, 3 * 32 * 32), dtype=np.uint8)
    write_cifar10_bin(bin_path, pixels, np.zeros(NUM_RECORDS, np.uint8))

    ms.set_seed(3)
    net = tiny_net()
    images, _ = eval_pipeline(str(data_dir))
    predicted = net_logits(net, images).argmax(axis=1)
    labels = np.where(np.arange(NUM_RECORDS) < RIGHT, predicted, (predicted + 1) % NUM_CLASSES)
    write_cifar10_bin(bin_path, pixels, labels)

    mindir = str(root / "tiny")
    ms.export(net, ms.Tensor(np.zeros((1, 3, 32, 32), np.float32)), file_name=mindir,
              file_format="MINDIR")
    images, labels = eval_pipeline(str(data_dir))
    direct = net_logits(net, images)
    direct_acc = float((direct.argmax(axis=1) == labels).mean())
    assert direct_acc == RIGHT / NUM_RECORDS
    return dict(root=root, data_dir=str(data_dir), mindir=mindir + ".mindir", net=net,
                images=images, labels=labels, direct=direct, direct_acc=direct_acc)


def result_logits(result_dir, count):
    return np.stack([np.fromfile(os.path.join(result_dir, f"vgg_cifar10_bs1_{i}_0.bin"), np.float32)
                     for i in range(count)])


def score(result_dir, label_file, tmp_path, dataset="cifar10"):
    acc_log = tmp_path / "acc.log"
    postprocess.main([f"--dataset={dataset}", f"--result_path={result_dir}",
                      f"--label_path={label_file}",
                      f"--acc_log={acc_log}"])
    return acc_log.read_text()


def test_preprocess_writes_eval_pipeline_images_and_labels(chain, tmp_path):
    count = preprocess.write_cifar10_inputs(chain["data_dir"], str(tmp_path), (32, 32), NUM_CLASSES)
    assert count == NUM_RECORDS
    files = sorted(os.listdir(tmp_path / "00_data"))
    assert len(files) == NUM_RECORDS
    image_7 = np.fromfile(tmp_path / "00_data" / "vgg_cifar10_bs1_7.bin", np.float32)
    np.testing.assert_array_equal(image_7, chain["images"][7].reshape(-1))
    labels = np.load(tmp_path / "cifar10_label_ids.npy")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, chain["labels"])


def test_mindir_runner_and_postprocess_match_direct_evaluation(chain, tmp_path):
    preprocess.write_cifar10_inputs(chain["data_dir"], str(tmp_path / "pre"), (32, 32), NUM_CLASSES)
    count, avg_ms = infer_runner.run(chain["mindir"], str(tmp_path / "pre" / "00_data"),
                                     str(tmp_path / "res"))
    assert count == NUM_RECORDS and avg_ms > 0
    np.testing.assert_allclose(result_logits(tmp_path / "res", count), chain["direct"], atol=1e-5)
    log = score(tmp_path / "res", tmp_path / "pre" / "cifar10_label_ids.npy", tmp_path)
    assert log.strip() == str({"acc": chain["direct_acc"]})


def test_onnx_runner_matches_direct_evaluation(chain, tmp_path):
    pytest.importorskip("onnxruntime")
    import mindspore as ms
    fresh = tiny_net()  # one network instance cannot be exported to ONNX twice
    ms.load_param_into_net(fresh, chain["net"].parameters_dict())
    onnx_file = str(tmp_path / "tiny.onnx")
    ms.onnx.export(fresh, ms.Tensor(np.zeros((1, 3, 32, 32), np.float32)), file_name=onnx_file,
                   input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    preprocess.write_cifar10_inputs(chain["data_dir"], str(tmp_path / "pre"), (32, 32), NUM_CLASSES)
    count, _ = infer_runner.run(onnx_file, str(tmp_path / "pre" / "00_data"), str(tmp_path / "res"))
    np.testing.assert_allclose(result_logits(tmp_path / "res", count), chain["direct"], atol=1e-4)
    log = score(tmp_path / "res", tmp_path / "pre" / "cifar10_label_ids.npy", tmp_path)
    assert log.strip() == str({"acc": chain["direct_acc"]})


def test_runner_rejects_inputs_of_another_image_size(chain, tmp_path):
    (tmp_path / "in").mkdir()
    np.zeros(3 * 64 * 64, np.float32).tofile(tmp_path / "in" / "x_0.bin")
    with pytest.raises(UserError, match=r"x_0.bin: 49152 bytes.*\(1, 3, 32, 32\) takes 12288"):
        infer_runner.run(chain["mindir"], str(tmp_path / "in"), str(tmp_path / "res"))


def write_jpegs(folder, per_class=2, classes=("n01", "n02", "n03")):
    from PIL import Image
    rng = np.random.default_rng(1)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img_{c}_{i}.JPEG", quality=95)


def test_imagenet_labels_runner_and_top5_match_eval_pipeline(chain, tmp_path):
    folder = tmp_path / "data" / "validation_preprocess"
    write_jpegs(folder)
    assert preprocess.write_imagenet_labels(str(tmp_path / "data"), str(tmp_path / "pre")) == 6
    labels = json.loads((tmp_path / "pre" / "imagenet_label.json").read_text())
    assert labels == {"img_0_0": 0, "img_0_1": 0, "img_1_0": 1, "img_1_1": 1, "img_2_0": 2,
                      "img_2_1": 2}

    count, _ = infer_runner.run(chain["mindir"], str(folder), str(tmp_path / "res"), "imagenet2012")
    assert count == 6
    images, eval_labels = eval_pipeline(str(tmp_path / "data"), "imagenet2012")
    direct = net_logits(chain["net"], images)
    stems = sorted(labels)  # the eval pipeline reads classes, then files, in sorted order
    ran = np.stack([np.fromfile(tmp_path / "res" / f"{s}_0.bin", np.float32) for s in stems])
    np.testing.assert_allclose(ran, direct, atol=1e-5)

    log = score(tmp_path / "res", tmp_path / "pre" / "imagenet_label.json", tmp_path,
                "imagenet2012").splitlines()
    top = np.argsort(-direct, axis=1, kind="stable")
    top1 = int((top[:, 0] == eval_labels).sum())
    top5 = int((top[:, :5] == eval_labels[:, None]).any(axis=1).sum())
    assert log[0].startswith(f"top1_correct={top1}, tot=6, ")
    assert log[1].startswith(f"top5_correct={top5}, tot=6, ")
    assert log[2] == str({"acc": top1 / 6, "top1_acc": top1 / 6, "top5_acc": top5 / 6})


def test_preprocess_refuses_duplicate_imagenet_stems(tmp_path):
    write_jpegs(tmp_path / "data", per_class=1, classes=("a", "b"))
    shutil.copy(tmp_path / "data" / "a" / "img_0_0.JPEG", tmp_path / "data" / "b" / "img_0_0.JPEG")
    with pytest.raises(UserError, match="img_0_0"):
        preprocess.write_imagenet_labels(str(tmp_path / "data"), str(tmp_path / "pre"))


def test_postprocess_names_a_missing_result(tmp_path):
    np.save(tmp_path / "labels.npy", np.arange(3, dtype=np.int32))
    (tmp_path / "res").mkdir()
    for i in (0, 2):
        np.zeros(NUM_CLASSES, np.float32).tofile(tmp_path / "res" / f"vgg_cifar10_bs1_{i}_0.bin")
    with pytest.raises(UserError, match="no result for image 1"):
        postprocess.score("cifar10", str(tmp_path / "res"), str(tmp_path / "labels.npy"))


# ---------------------------------------------------------------- scripts/run_infer_310.sh

def run_script(args, cwd, **env):
    return run_bash("scripts/run_infer_310.sh", *args, cwd=cwd,
                    env=dict(env, PYTHON=sys.executable), timeout=300)


@pytest.mark.e2e
def test_script_runs_the_chain_with_the_python_backend(chain, tmp_path):
    done = run_script([chain["mindir"], "cifar10", chain["data_dir"], "y"], tmp_path,
                      INFER_BACKEND="python", IMAGE_SIZE="32,32")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "acc.log").read_text().strip() == str({"acc": chain["direct_acc"]})
    assert "Inference avg time" in (tmp_path / "infer.log").read_text()
    assert (tmp_path / "preprocess.log").is_file()


def build_fake_mindspore(root):
    """A MINDSPORE_PATH whose include/ holds the stub headers and lib/ the fake library."""
    shutil.copytree(os.path.join(STUBS, "include"), root / "include")
    (root / "lib").mkdir()
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-D_GLIBCXX_USE_CXX11_ABI=0",
                    f"-I{root}", "-o", str(root / "lib" / "libmindspore.so"),
                    os.path.join(STUBS, "fake_mindspore.cc")],
                   check=True)
    return root


@pytest.mark.e2e
@pytest.mark.skipif(not (shutil.which("g++") and shutil.which("cmake") and shutil.which("make")),
                    reason="needs g++, cmake and make")
def test_script_builds_and_runs_the_cpp_app(chain, tmp_path):
    fake_ms = build_fake_mindspore(tmp_path / "fake_ms")
    model = tmp_path / "fake.mindir"
    model.write_text(f"fake-mindir 1 3 32 32 {NUM_CLASSES}\n")  # the fake sums every 10th value
    work = tmp_path / "work"
    preprocess.write_cifar10_inputs(chain["data_dir"], str(work / "preprocess_Result"), (32, 32),
                                    NUM_CLASSES)
    done = run_script([str(model), "cifar10", chain["data_dir"], "n", "0"], work,
                      INFER_BACKEND="cpp", IMAGE_SIZE="32,32", MINDSPORE_PATH=str(fake_ms),
                      BUILD_DIR=str(tmp_path / "build"))
    assert done.returncode == 0, done.stderr + (work / "build.log").read_text()

    flat = chain["images"].reshape(NUM_RECORDS, -1).astype(np.float64)
    padded = np.pad(flat, ((0, 0), (0, -flat.shape[1] % NUM_CLASSES)))
    expected = padded.reshape(NUM_RECORDS, -1, NUM_CLASSES).sum(axis=1)
    np.testing.assert_allclose(result_logits(work / "result_Files", NUM_RECORDS), expected,
                               rtol=1e-4, atol=1e-3)
    acc = float((expected.argmax(axis=1) == chain["labels"]).mean())
    assert (work / "acc.log").read_text().strip() == str({"acc": acc})
    assert "Inference avg time" in (work / "infer.log").read_text()


@pytest.mark.parametrize("args, complaint", [
    (["only", "two"], "expected 4 or 5 arguments"),
    (["{missing}", "cifar10", "{data}", "y"], "is not a file"),
    (["{model}", "mnist", "{data}", "y"], "DATASET_NAME 'mnist'"),
    (["{model}", "cifar10", "{missing}", "y"], "is not a folder"),
    (["{model}", "cifar10", "{data}", "yes"], "NEED_PREPROCESS 'yes'"),
    (["{model}", "cifar10", "{data}", "y", "gpu0"], "DEVICE_ID 'gpu0'"),
    (["{model}", "cifar10", "{data}", "y", "0", "extra"], "expected 4 or 5 arguments"),
])
def test_script_rejects_bad_arguments_with_usage(tmp_path, args, complaint):
    model = tmp_path / "m.mindir"
    model.write_bytes(b"x")
    names = dict(model=str(model), data=str(tmp_path), missing=str(tmp_path / "nope"))
    done = run_script([a.format(**names) for a in args], tmp_path)
    assert done.returncode != 0
    assert complaint in done.stderr and "usage: bash scripts/run_infer_310.sh" in done.stderr
    assert not (tmp_path / "preprocess_Result").exists()


# ---------------------------------------------------------------- ascend310_infer

@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++")
def test_cpp_app_compiles_against_the_api_stubs():
    sources = [os.path.join(REPO, "ascend310_infer", "src", f) for f in ("main.cc", "utils.cc")]
    done = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                           f"-I{STUBS}", f"-I{os.path.join(REPO, 'ascend310_infer')}", *sources],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_build_says_in_one_line_where_the_api_is_missing(tmp_path):
    done = run_bash("ascend310_infer/build.sh", cwd=REPO,
                    env={"MINDSPORE_PATH": str(tmp_path / "ms"),
                         "BUILD_DIR": str(tmp_path / "out")})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and not done.stdout
    assert str(tmp_path / "ms" / "include" / "api" / "model.h") in lines[0]
    assert "MINDSPORE_PATH" in lines[0]
    assert not (tmp_path / "out").exists()
