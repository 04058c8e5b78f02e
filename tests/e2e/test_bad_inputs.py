"""Bad inputs, one table: every row runs a real entry point in a subprocess and must end with
a non-zero exit, one `error: ...` line (a usage text for the shell scripts) that names the
culprit, no Python traceback (unless --debug=True), and every file already in the run
folder left as it was.

The rows run three at a time: most cost one MindSpore import (about 4 s). Set
BAD_INPUTS_TABLE=FILE to write the outcomes as a Markdown table (README's "Bad inputs").
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_TRAIN_DIR, write_cifar10_bin
from tests.helpers import QUICK_CONFIG, REPO, RunsCode

NET = ["--device_target=CPU", "--arch=vgg11", "--batch_norm=True", "--image_size=32,32"]
TRAIN = [f"--config_path={QUICK_CONFIG}", *NET, "--batch_size=16", "--max_epoch=1", "--T_max=1",
         "--warmup_epochs=0", "--eval_interval=0"]
EVAL = [f"--config_path={QUICK_CONFIG}", *NET, "--batch_size=16"]
# All five training images (one broken) in the first batch, so the broken one is met before
# the graph is compiled; two epochs, as a one-step schedule makes MindSpore warn.
ONE_BATCH = ["--batch_size=5", "--max_epoch=2", "--T_max=2"]
EXISTING = "vgg11_bn-1_8.ckpt"  # a checkpoint of an earlier run, in every row's run folder


@dataclass
class Row:
    """One bad input. `args` and `expect` are templates over the paths of `bad_data`
    ({d}: the data folder, {run}: this row's run folder)."""
    name: str
    entry: str  # train | eval | export | predict | convert | a script under scripts/
    args: list
    expect: list  # substrings of the error line (for scripts: of stderr's first line)
    where: str = ""  # what the user gave, for the README table
    env: dict = field(default_factory=dict)


ROWS = [
    # --- data ---------------------------------------------------------------------------
    Row("data_dir missing", "train", ["--data_dir={d}/nowhere"], ["data_dir", "{d}/nowhere"]),
    Row("data_dir empty", "train", ["--data_dir={d}/empty"],
        ["no data_batch_*.bin files", "{d}/empty"]),
    Row("layout: class folders given as cifar10", "train", ["--data_dir={d}/inet"],
        ["no data_batch_*.bin files", "{d}/inet"]),
    Row("layout: cifar10 files given as imagenet2012", "train",
        ["--data_dir={d}/cifar", "--dataset=imagenet2012"], ["{d}/cifar"]),
    Row("truncated .bin", "train", ["--data_dir={d}/truncated"],
        ["{d}/truncated/cifar-10-batches-bin/data_batch_1.bin", "not a positive multiple"]),
    Row("label out of range", "train", ["--data_dir={d}/badlabel"],
        ["{d}/badlabel/cifar-10-batches-bin/data_batch_1.bin", "label 12",
         "num_classes=10"]),
    Row("label out of range, --debug=True", "train", ["--data_dir={d}/badlabel", "--debug=True"],
        ["{d}/badlabel/cifar-10-batches-bin/data_batch_1.bin", "label 12"]),
    Row("corrupt JPEG (train)", "train",
        ["--data_dir={d}/corrupt", "--dataset=imagenet2012", "--num_classes=2",
         *ONE_BATCH], ["{d}/corrupt/ilsvrc/b/broken.JPEG", "cannot decode"]),
    Row("zero-byte JPEG (train)", "train",
        ["--data_dir={d}/zero", "--dataset=imagenet2012", "--num_classes=2", *ONE_BATCH],
        ["{d}/zero/ilsvrc/b/empty.JPEG", "cannot decode"]),
    Row("corrupt JPEG (eval)", "eval",
        ["--data_dir={d}/corrupt", "--dataset=imagenet2012", "--num_classes=2",
         "--pre_trained={d}/weights2.ckpt"],
        ["{d}/corrupt/validation_preprocess/b/broken.JPEG", "cannot decode"]),
    Row("zero-byte JPEG (eval)", "eval",
        ["--data_dir={d}/zero", "--dataset=imagenet2012", "--num_classes=2",
         "--pre_trained={d}/weights2.ckpt"],
        ["{d}/zero/validation_preprocess/b/empty.JPEG", "cannot decode"]),
    Row("class folders != num_classes", "train",
        ["--data_dir={d}/inet", "--dataset=imagenet2012", "--num_classes=10"],
        ["{d}/inet/ilsvrc", "2 class folders", "--num_classes=2"]),
    Row("malformed text-mode list", "train",
        ["--data_dir={d}/inet/ilsvrc", "--dataset=imagenet2012", "--num_classes=2",
         "--data_list={d}/list.txt"], ["{d}/list.txt:3", "cannot parse", "b/1.JPEG"]),
    Row("data_list missing", "train",
        ["--data_dir={d}/inet/ilsvrc", "--dataset=imagenet2012", "--num_classes=2",
         "--data_list={d}/nolist.txt"], ["{d}/nolist.txt"]),
    Row("eval data_dir missing", "eval",
        ["--data_dir={d}/nowhere", "--pre_trained={d}/weights.ckpt"], ["{d}/nowhere"]),
    # --- configuration --------------------------------------------------------------------
    Row("YAML syntax error", "train", ["--config_path={d}/broken.yaml"],
        ["{d}/broken.yaml", "not valid YAML at line 3"]),
    Row("config file missing", "train", ["--config_path={d}/none.yaml"], ["{d}/none.yaml"]),
    Row("unknown key (YAML)", "train", ["--config_path={d}/unknown.yaml"],
        ["unknown config key 'learning_rate' in unknown.yaml"]),
    Row("unknown key (command line)", "train", ["--data_dir={d}/cifar", "--batch_sise=8"],
        ["unknown config key 'batch_sise'", "did you mean 'batch_size'"]),
    Row("wrong type", "train", ["--data_dir={d}/cifar", "--batch_size=eight"],
        ["'batch_size'", "must be int", "'eight'"]),
    Row("wrong type (YAML)", "train", ["--config_path={d}/wrongtype.yaml"],
        ["'batch_size' in wrongtype.yaml must be int"]),
    Row("value outside choices", "train", ["--data_dir={d}/cifar", "--lr_scheduler=poly"],
        ["'lr_scheduler' is 'poly'", "allowed values"]),
    Row("impossible image_size", "train", ["--data_dir={d}/cifar", "--image_size=100,100"],
        ["'image_size'", "[100, 100]", "multiple of 32"]),
    Row("value out of range", "train", ["--data_dir={d}/cifar", "--lookahead_alpha=0"],
        ["'lookahead_alpha' is 0.0", "it must be in (0, 1]"]),
    Row("argument without --key=value", "train", ["--data_dir={d}/cifar", "batch_size=8"],
        ["'batch_size=8'", "--key=value"]),
    # --- checkpoints ----------------------------------------------------------------------
    Row("--pre_trained missing", "train", ["--data_dir={d}/cifar", "--pre_trained={d}/no.ckpt"],
        ["checkpoint not found: {d}/no.ckpt"]),
    Row("--pre_trained truncated", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/truncated.ckpt"],
        ["checkpoint {d}/truncated.ckpt is corrupt"]),
    Row("--pre_trained empty file", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/empty.ckpt"],
        ["checkpoint {d}/empty.ckpt is empty"]),
    Row("--pre_trained text file", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/notes.ckpt"],
        ["checkpoint {d}/notes.ckpt is corrupt or not a MindSpore checkpoint"]),
    Row("--pre_trained PyTorch .pth", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/torch.pth"],
        ["checkpoint {d}/torch.pth is corrupt or not a MindSpore checkpoint"]),
    Row("--pre_trained of another variant", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/vgg11.ckpt"],
        ["checkpoint {d}/vgg11.ckpt does not fit", "parameters missing"]),
    Row("--pre_trained with stem_whitening", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/weights.ckpt", "--stem_whitening=16"],
        ["'pre_trained' and 'stem_whitening' both set the first convolution",
         "--stem_whitening=0"]),
    Row("--pre_trained of another class count", "train",
        ["--data_dir={d}/cifar", "--pre_trained={d}/weights.ckpt", "--num_classes=12"],
        ["checkpoint {d}/weights.ckpt does not fit",
         "classifier.6.weight (10, 4096) vs network (12, 4096)", "--reinit_classifier=True"]),
    Row("--resume missing", "train", ["--data_dir={d}/cifar", "--resume={d}/no.ckpt"],
        ["checkpoint not found: {d}/no.ckpt"]),
    Row("--resume truncated", "train", ["--data_dir={d}/cifar", "--resume={d}/truncated.ckpt"],
        ["checkpoint {d}/truncated.ckpt is corrupt"]),
    Row("--resume text file", "train", ["--data_dir={d}/cifar", "--resume={d}/notes.ckpt"],
        ["checkpoint {d}/notes.ckpt is corrupt or not a MindSpore checkpoint"]),
    Row("--resume PyTorch .pth", "train", ["--data_dir={d}/cifar", "--resume={d}/torch.pth"],
        ["checkpoint {d}/torch.pth is corrupt or not a MindSpore checkpoint"]),
    Row("--resume weights-only checkpoint", "train",
        ["--data_dir={d}/cifar", "--resume={d}/weights.ckpt"],
        ["checkpoint {d}/weights.ckpt has no training position", "--pre_trained"]),
    Row("eval --pre_trained missing", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/no.ckpt"], ["{d}/no.ckpt does not exist"]),
    Row("eval --pre_trained truncated", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/truncated.ckpt"],
        ["checkpoint {d}/truncated.ckpt is corrupt"]),
    Row("eval --pre_trained text file", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/notes.ckpt"],
        ["checkpoint {d}/notes.ckpt is corrupt or not a MindSpore checkpoint"]),
    Row("eval --pre_trained folder without checkpoints", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/empty"], ["folder {d}/empty holds no .ckpt"]),
    Row("eval checkpoint of another variant", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/vgg11.ckpt"],
        ["checkpoint {d}/vgg11.ckpt holds vgg11, but the config builds vgg11_bn"]),
    Row("eval checkpoint of another class count", "eval",
        ["--data_dir={d}/cifar", "--pre_trained={d}/weights.ckpt", "--num_classes=12"],
        ["checkpoint {d}/weights.ckpt does not fit",
         "classifier.6.weight (10, 4096) vs network (12, 4096)"]),
    # --- outputs and devices --------------------------------------------------------------
    Row("unwritable output folder", "train",
        ["--data_dir={d}/cifar", "--ckpt_path={d}/notes.ckpt/run"],
        ["output folder {d}/notes.ckpt/run is not writable", "--ckpt_path"]),
    Row("export AIR on CPU", "export",
        ["--ckpt_file={d}/weights.ckpt", "--file_format=AIR", "--file_name={run}/vgg11_bn"],
        ["file_format AIR needs device_target=Ascend", "got CPU"]),
    Row("export without --ckpt_file", "export", ["--file_name={run}/vgg11_bn"], ["ckpt_file"]),
    Row("export truncated checkpoint", "export",
        ["--ckpt_file={d}/truncated.ckpt", "--file_name={run}/vgg11_bn"],
        ["checkpoint {d}/truncated.ckpt is corrupt"]),
    Row("export to an unwritable folder", "export",
        ["--ckpt_file={d}/weights.ckpt", "--file_name={d}/notes.ckpt/out/vgg11_bn"],
        ["file_name", "{d}/notes.ckpt/out"]),
    # --- predict.py and convert_torchvision.py ---------------------------------------------
    Row("predict: model missing", "predict", ["--model={d}/no.ckpt", "--image={d}/cat.jpg"],
        ["model: {d}/no.ckpt is not a file"]),
    Row("predict: text file as model", "predict",
        ["--model={d}/notes.ckpt", "--image={d}/cat.jpg"],
        ["checkpoint {d}/notes.ckpt is corrupt or not a MindSpore checkpoint"]),
    Row("predict: corrupt image", "predict",
        ["--model={d}/weights.ckpt", "--image={d}/corrupt/ilsvrc/b/broken.JPEG"],
        ["{d}/corrupt/ilsvrc/b/broken.JPEG"]),
    Row("predict: folder without images", "predict",
        ["--model={d}/weights.ckpt", "--image={d}/empty"], ["{d}/empty holds no images"]),
    Row("convert: .pth missing", "convert", ["--pth={d}/no.pth", "--output={run}/out.ckpt"],
        ["weights: {d}/no.pth is not a file"]),
    Row("convert: .pth that runs code", "convert",
        ["--pth={d}/evil.pth", "--output={run}/out.ckpt"],
        ["weights: {d}/evil.pth refused by torch.load(weights_only=True)",
         "GLOBAL posix.system"]),
    Row("convert: MindSpore checkpoint as .pth", "convert",
        ["--pth={d}/weights.ckpt", "--output={run}/out.ckpt"],
        ["weights: {d}/weights.ckpt refused by torch.load"]),
    Row("convert: truncated .safetensors", "convert",
        ["--weights={d}/cut.safetensors", "--output={run}/out.ckpt"],
        ["weights: {d}/cut.safetensors is truncated or corrupt", "features.0.weight"]),
    # --- shell launchers ------------------------------------------------------------------
    Row("run_infer_310.sh without arguments", "run_infer_310.sh", [],
        ["expected 4 or 5 arguments, got 0"]),
    Row("run_infer_310.sh model missing", "run_infer_310.sh",
        ["{d}/no.mindir", "cifar10", "{d}/cifar", "y"],
        ["MINDIR_PATH {d}/no.mindir is not a file"]),
    Row("run_infer_310.sh unknown dataset", "run_infer_310.sh",
        ["{d}/notes.ckpt", "mnist", "{d}/cifar", "y"], ["DATASET_NAME 'mnist'"]),
    Row("run_infer_310.sh dataset path missing", "run_infer_310.sh",
        ["{d}/notes.ckpt", "cifar10", "{d}/nowhere", "y"], ["DATASET_PATH {d}/nowhere"]),
    Row("run_infer_310.sh NEED_PREPROCESS not y/n", "run_infer_310.sh",
        ["{d}/notes.ckpt", "cifar10", "{d}/cifar", "yes"], ["NEED_PREPROCESS 'yes'"]),
    Row("run_infer_310.sh DEVICE_ID not a number", "run_infer_310.sh",
        ["{d}/notes.ckpt", "cifar10", "{d}/cifar", "y", "npu0"], ["DEVICE_ID 'npu0'"]),
    Row("run_distribute_train.sh without arguments", "run_distribute_train.sh", [],
        ["expected at least 2 argument(s), got 0"]),
    Row("run_distribute_train.sh rank table missing", "run_distribute_train.sh",
        ["{d}/hccl.json", "{d}/cifar"], ["RANK_TABLE_JSON {d}/hccl.json is not a file"]),
    Row("run_distribute_train.sh rank table not JSON", "run_distribute_train.sh",
        ["{d}/broken.yaml", "{d}/cifar"],
        ["RANK_TABLE_JSON {d}/broken.yaml", "not an HCCL rank table"]),
    Row("run_distribute_train.sh DATA_PATH missing", "run_distribute_train.sh",
        ["{d}/rank_table.json", "{d}/nowhere"], ["DATA_PATH {d}/nowhere is not a folder"]),
    Row("run_distribute_train_gpu.sh without arguments", "run_distribute_train_gpu.sh", [],
        ["expected at least 1 argument(s), got 0"]),
    Row("run_distribute_train_gpu.sh DEVICE_NUM not a number", "run_distribute_train_gpu.sh",
        ["{d}/cifar", "eight"], ["DEVICE_NUM 'eight' must be an integer >= 1"]),
    Row("run_distribute_train_gpu.sh option not --key=value", "run_distribute_train_gpu.sh",
        ["{d}/cifar", "2", "--batch_size", "8"], ["'--batch_size' is not of the form --key=value"]),
    Row("run_distribute_train_cpu.sh DATA_PATH missing", "run_distribute_train_cpu.sh",
        ["{d}/nowhere"], ["DATA_PATH {d}/nowhere is not a folder"]),
    Row("run_distribute_train_cpu.sh --device_num=0", "run_distribute_train_cpu.sh",
        ["{d}/cifar", "--device_num=0"], ["device count '0' must be an integer >= 1"]),
]
SCRIPTS = {"train": "train.py", "eval": "eval.py", "export": "export.py",
           "predict": "predict.py", "convert": "convert_torchvision.py"}
FIXED_ARGS = {"train": TRAIN, "eval": EVAL, "export": [f"--config_path={QUICK_CONFIG}", *NET]}


# ---------------------------------------------------------------- the data the rows point at

def write_cifar(root, n_train=32, n_eval=16, seed=0, labels_max=10):
    """Random images, labels below labels_max; returns the training file."""
    rng = np.random.default_rng(seed)
    for sub, name, n in ((CIFAR10_TRAIN_DIR, "data_batch_1.bin", n_train),
                         (CIFAR10_EVAL_DIR, "test_batch.bin", n_eval)):
        labels = rng.integers(0, labels_max, n).astype(np.uint8)
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        write_cifar10_bin(os.path.join(root, sub, name), images, labels)
    return os.path.join(root, CIFAR10_TRAIN_DIR, "data_batch_1.bin")


def write_jpegs(folder, classes=("a", "b"), per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, name, f"{i}.JPEG"))


def write_imagenet(root, bad_name=None, bad_bytes=b""):
    for split in ("ilsvrc", "validation_preprocess"):
        write_jpegs(os.path.join(root, split))
        if bad_name:
            with open(os.path.join(root, split, "b", bad_name), "wb") as handle:
                handle.write(bad_bytes)


def save_network(path, arch, num_classes):
    from src import vgg
    from src.checkpoint import save_checkpoint

    net = getattr(vgg, arch)(num_classes=num_classes, image_size=(32, 32))
    return save_checkpoint(net, path, {"arch": arch})


def write_three_part_yaml(path, values):
    import yaml

    with open(QUICK_CONFIG, encoding="utf-8") as handle:
        base, help_text, choices = yaml.safe_load_all(handle)
    base.update(values)
    help_text.update({k: "help" for k in values})
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all([base, help_text, choices], handle)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """Every file the rows name, under one folder; returns its path."""
    import torch

    d = str(tmp_path_factory.mktemp("bad"))
    write_cifar(os.path.join(d, "cifar"))
    os.makedirs(os.path.join(d, "empty"))
    truncated_bin = write_cifar(os.path.join(d, "truncated"))
    with open(truncated_bin, "r+b") as handle:
        handle.truncate(os.path.getsize(truncated_bin) - 1000)
    write_cifar(os.path.join(d, "badlabel"), labels_max=13, seed=3)
    write_jpegs(os.path.join(d, "inet", "ilsvrc"))
    write_imagenet(os.path.join(d, "corrupt"), "broken.JPEG", b"\xff\xd8\xff\xe0" + b"junk" * 40)
    write_imagenet(os.path.join(d, "zero"), "empty.JPEG", b"")
    with open(os.path.join(d, "list.txt"), "w", encoding="utf-8") as handle:
        handle.write("a/0.JPEG 0\nb/0.JPEG 1\nb/1.JPEG\n")
    shutil.copy(os.path.join(d, "inet", "ilsvrc", "a", "0.JPEG"), os.path.join(d, "cat.jpg"))
    with open(os.path.join(d, "broken.yaml"), "w", encoding="utf-8") as handle:
        handle.write("batch_size: 4\nlr: [0.1\n")
    write_three_part_yaml(os.path.join(d, "unknown.yaml"), {"learning_rate": 0.1})
    write_three_part_yaml(os.path.join(d, "wrongtype.yaml"), {"batch_size": "four"})
    with open(os.path.join(d, "rank_table.json"), "w", encoding="utf-8") as handle:
        handle.write('{"server_list": [{"device": [{"device_id": "0", "rank_id": "0"}]}]}')

    weights = save_network(os.path.join(d, "weights.ckpt"), "vgg11_bn", 10)
    save_network(os.path.join(d, "weights2.ckpt"), "vgg11_bn", 2)
    save_network(os.path.join(d, "vgg11.ckpt"), "vgg11", 10)
    with open(weights, "rb") as source, open(os.path.join(d, "truncated.ckpt"), "wb") as target:
        target.write(source.read(os.path.getsize(weights) // 2))
    open(os.path.join(d, "empty.ckpt"), "wb").close()
    with open(os.path.join(d, "notes.ckpt"), "w", encoding="utf-8") as handle:
        handle.write("this is not a checkpoint\n")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, os.path.join(d, "torch.pth"))
    from safetensors.torch import save_file

    cut = os.path.join(d, "cut.safetensors")
    save_file({"features.0.weight": torch.ones(64, 3, 3, 3)}, cut)
    with open(cut, "r+b") as handle:
        handle.truncate(os.path.getsize(cut) - 100)
    torch.save({"features.0.weight": RunsCode(os.path.join(d, "MARKER"))},
               os.path.join(d, "evil.pth"))
    return d


# ---------------------------------------------------------------- running the rows

def fill(template, d, run):
    return template.replace("{d}", d).replace("{run}", run)


def prepare_run_folder(run, weights):
    """An earlier run's outputs: a checkpoint, its metrics, its config and its log."""
    os.makedirs(run)
    # A hard link, not a copy (110 MB for each of ~70 rows): a row that wrote into the file
    # instead of replacing it would still change this row's snapshot.
    try:
        os.link(weights, os.path.join(run, EXISTING))
    except OSError:
        shutil.copy(weights, os.path.join(run, EXISTING))
    for name, text in (("metrics.csv", "epoch,global_step,loss\n1,8,2.1\n"),
                       ("config.yaml", "arch: vgg11\n"), ("train_rank0.log", "epoch: 1\n")):
        with open(os.path.join(run, name), "w", encoding="utf-8") as handle:
            handle.write(text)


def snapshot(folder):
    found = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def command(row, d, run):
    args = [fill(a, d, run) for a in row.args]
    if row.entry.endswith(".sh"):
        return ["bash", os.path.join(REPO, "scripts", row.entry), *args]
    fixed = list(FIXED_ARGS.get(row.entry, []))
    if row.entry == "train" and not any(a.startswith("--ckpt_path=") for a in args):
        fixed.append(f"--ckpt_path={run}")
    if any(a.startswith("--config_path=") for a in args):
        fixed = [a for a in fixed if not a.startswith("--config_path=")]
    return [sys.executable, os.path.join(REPO, SCRIPTS[row.entry]), *fixed, *args]


def run_row(row, d, work):
    run = os.path.join(work, row.name.replace(" ", "_").replace("/", "_"))
    prepare_run_folder(run, os.path.join(d, "weights.ckpt"))
    before = snapshot(run)
    env = dict(os.environ, PYTHON=sys.executable, INFER_BACKEND="python", **row.env)
    env.pop("VGG_DEBUG", None)
    done = subprocess.run(command(row, d, run), cwd=run, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    return done, before, snapshot(run), run


def selected_rows(session):
    """The rows whose tests this pytest session will run (so that -k runs only those)."""
    names = set()
    for item in session.items:
        if item.module.__name__ != __name__:
            continue
        if item.originalname == "test_bad_input":
            names.add(item.callspec.params["row"].name)
        elif item.originalname == "test_failed_start_keeps_the_earlier_config":
            names.update(row.name for row in ROWS if row.entry == "train")
    return [row for row in ROWS if row.name in names]


@pytest.fixture(scope="module")
def outcomes(request, bad_data, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("runs"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {row.name: pool.submit(run_row, row, bad_data, work)
                   for row in selected_rows(request.session)}
        yield {name: future for name, future in futures.items()}
        table = os.environ.get("BAD_INPUTS_TABLE")
        if table:
            write_table(table, futures, bad_data)


def write_table(path, futures, d):
    lines = ["| input | entry point | what the user sees | exit |", "|---|---|---|---|"]
    for row in ROWS:
        if row.name not in futures or not futures[row.name].done():
            continue
        done = futures[row.name].result()[0]
        err = done.stderr.strip().splitlines()
        shown = err[0] if row.entry.endswith(".sh") else err[-1]
        shown = shown.replace(d + "/", "").replace(REPO + "/", "").replace("|", "\\|")
        entry = row.entry if row.entry.endswith(".sh") else SCRIPTS[row.entry]
        suffix = " (+ usage)" if row.entry.endswith(".sh") and len(err) > 1 else ""
        lines.append(f"| {row.name} | {entry} | `{shown}`{suffix} | {done.returncode} |")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input(row, outcomes, bad_data):
    done, before, after, run = outcomes[row.name].result()
    err = done.stderr.strip().splitlines()
    context = f"\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode != 0, context
    assert err, context
    debug = "--debug=True" in row.args
    if row.entry.endswith(".sh"):
        line = err[0]
        assert line.startswith(f"{row.entry}: "), context
        # argument mistakes are followed by the usage text; other failures are one line
        assert len(err) == 1 or err[1].startswith(f"usage: bash scripts/{row.entry}"), context
    else:
        line = err[-1]
        assert line.startswith("error: "), context
        if not debug:
            assert len(err) == 1, context
    for expected in row.expect:
        assert fill(expected, bad_data, run) in line, context
    assert ("Traceback" in done.stderr) == debug, context
    # Files of the earlier run are all still there and unchanged; its log only grows.
    # (config.yaml: see test_failed_start_keeps_the_earlier_config.) A fresh run starts a new
    # metrics.csv once training has begun: a broken image found in the first batch is past it.
    started = " epochs x " in done.stdout
    for name, content in before.items():
        assert name in after, f"{name} was removed{context}"
        if name == "config.yaml" or (name == "metrics.csv" and started):
            continue
        if name == "train_rank0.log":
            assert after[name].startswith(content), context
        else:
            assert after[name] == content, f"{name} was changed{context}"
    assert not os.path.exists(os.path.join(bad_data, "MARKER")), "a .pth ran code"


def test_failed_start_keeps_the_earlier_config(outcomes):
    """A run that stops on a bad input before training begins leaves the run folder's
    config.yaml (which describes the checkpoints there) as it was."""
    changed = []
    for row in ROWS:
        if row.entry == "train" and row.name in outcomes:
            done, before, after, _ = outcomes[row.name].result()
            if " epochs x " in done.stdout:  # training had begun: a new run's config
                continue
            if after.get("config.yaml") != before["config.yaml"]:
                changed.append(row.name)
    assert not changed, f"config.yaml overwritten by: {', '.join(changed)}"


def test_every_requested_kind_of_bad_input_has_a_row():
    names = " ".join(row.name for row in ROWS)
    for kind in ("data_dir missing", "data_dir empty", "layout", "truncated .bin",
                 "label out of range", "corrupt JPEG (train)", "zero-byte JPEG (eval)",
                 "malformed text-mode list", "YAML syntax error", "unknown key", "wrong type",
                 "outside choices", "impossible image_size", "--pre_trained truncated",
                 "--resume text file", "eval --pre_trained missing", "another variant",
                 "another class count", "unwritable output folder", "export AIR on CPU",
                 "run_infer_310.sh", "run_distribute_train.sh", "run_distribute_train_gpu.sh",
                 "run_distribute_train_cpu.sh"):
        assert kind in names, kind
