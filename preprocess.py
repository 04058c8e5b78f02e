"""Prepares the evaluation data for offline inference (ascend310_infer/ or src/infer_runner.py).

cifar10: every evaluation image as it enters the network (normalised float32 CHW at the
config's image_size, the exact output of the eval pipeline) in its own file
`RESULT_PATH/00_data/vgg_cifar10_bs1_<i>.bin`, and the labels, label i belonging to file i,
as an int32 array in `RESULT_PATH/cifar10_label_ids.npy`.
imagenet2012: the images stay where they are (the inference app decodes them); this writes
`RESULT_PATH/imagenet_label.json`, {image file name without extension: class index}, the
index being the position of the image's folder among the sorted class folders.

    python preprocess.py --dataset=cifar10 --data_dir=DATA --result_path=./preprocess_Result/
                         [--config_path=cifar10_config.yaml] [--image_size=32,32]

The image size must be the one the MindIR was exported with (export.py reads the same key).
"""
import json
import os

import numpy as np

from model_utils.config import get_config
from src.cli import run_entry
from src.errors import UserError

CIFAR10_DATA_DIR = "00_data"
CIFAR10_FILE_PATTERN = "vgg_cifar10_bs1_{}.bin"
CIFAR10_LABEL_FILE = "cifar10_label_ids.npy"
IMAGENET_LABEL_FILE = "imagenet_label.json"


def write_cifar10_inputs(data_dir, result_path, image_size, num_classes, batch_size=250):
    """One normalised float32 CHW file per evaluation image plus the labels; returns the count."""
    from src.dataset import create_dataset

    out_dir = os.path.join(result_path, CIFAR10_DATA_DIR)
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # files of an earlier, larger run would be inferred too
        if name.startswith(CIFAR10_FILE_PATTERN.split("{", 1)[0]) and name.endswith(".bin"):
            os.remove(os.path.join(out_dir, name))
    data = create_dataset("cifar10", data_dir, batch_size=batch_size, training=False,
                          image_size=image_size, num_classes=num_classes)
    labels, count = [], 0
    for images, batch_labels in data.create_tuple_iterator(output_numpy=True):
        for image in images:
            np.ascontiguousarray(image, np.float32).tofile(
                os.path.join(out_dir, CIFAR10_FILE_PATTERN.format(count)))
            count += 1
        labels.append(batch_labels.astype(np.int32))
    np.save(os.path.join(result_path, CIFAR10_LABEL_FILE), np.concatenate(labels))
    return count


def write_imagenet_labels(data_dir, result_path):
    """{file stem: class index} for every image of the evaluation folder; returns the count."""
    from src.dataset import imagenet_folder, imagenet_folder_samples

    folder = imagenet_folder(data_dir, training=False)
    labels, seen_in = {}, {}
    for path, label in imagenet_folder_samples(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in labels:  # result files are named by stem, so stems must be unique
            raise UserError(f"{path}: image name '{stem}' also used by {seen_in[stem]}; "
                            "inference results are named by file stem, rename one of them")
        labels[stem], seen_in[stem] = label, path
    os.makedirs(result_path, exist_ok=True)
    with open(os.path.join(result_path, IMAGENET_LABEL_FILE), "w", encoding="utf-8") as out:
        json.dump(labels, out)
    return len(labels)


def main():
    config = get_config()
    if not config.data_dir:
        raise UserError("data_dir is empty; pass --data_dir=DATA (the dataset root)")
    if not os.path.isdir(config.data_dir):
        raise UserError(f"data_dir: {config.data_dir} is not a folder")
    if config.dataset == "cifar10":
        count = write_cifar10_inputs(config.data_dir, config.result_path, tuple(config.image_size),
                                     config.num_classes)
        where = os.path.join(config.result_path, CIFAR10_DATA_DIR)
        print(f"wrote {count} images to {where} and labels to "
              f"{os.path.join(config.result_path, CIFAR10_LABEL_FILE)}")
    else:
        count = write_imagenet_labels(config.data_dir, config.result_path)
        print(f"wrote {count} labels to {os.path.join(config.result_path, IMAGENET_LABEL_FILE)}")


if __name__ == "__main__":
    run_entry(main)
