"""Scores offline inference: reads the result files of ascend310_infer/ or src/infer_runner.py
and the labels preprocess.py wrote, prints the accuracy and writes it to acc.log.

    python postprocess.py --dataset=cifar10 --result_path=./result_Files
                          --label_path=./preprocess_Result/cifar10_label_ids.npy [--acc_log=acc.log]
    python postprocess.py --dataset=imagenet2012 --result_path=./result_Files
                          --label_path=./preprocess_Result/imagenet_label.json

cifar10: file vgg_cifar10_bs1_<i>_0.bin holds the logits of image i, whose label is entry i
of the .npy array; acc.log gets `{'acc': 0.92}`. imagenet2012: file <stem>_0.bin holds the
logits of image <stem>, labelled in the JSON; acc.log gets the top-1 and top-5 counts and
`{'acc': top-1, 'top1_acc': ..., 'top5_acc': ...}`. Only output 0 (the logits) is read.
"""
import argparse
import json
import os
import re

import numpy as np

from src.cli import add_debug_option, run_entry
from src.errors import UserError
from src.evaluation import topk_correct

RESULT_SUFFIX = "_0.bin"
DEFAULT_LABELS = {"cifar10": "./preprocess_Result/cifar10_label_ids.npy",
                  "imagenet2012": "./preprocess_Result/imagenet_label.json"}


def result_stems(result_path):
    """{input stem: result file} for every *_0.bin file of result_path."""
    if not os.path.isdir(result_path):
        raise UserError(f"result_path: {result_path} is not a folder (run the inference first)")
    stems = {name[:-len(RESULT_SUFFIX)]: os.path.join(result_path, name)
             for name in os.listdir(result_path) if name.endswith(RESULT_SUFFIX)}
    if not stems:
        raise UserError(f"result_path: {result_path} holds no *{RESULT_SUFFIX} result files")
    return stems


def read_logits(path, num_classes=None):
    logits = np.fromfile(path, dtype=np.float32)
    if logits.size == 0 or (num_classes and logits.size != num_classes):
        raise UserError(f"{path}: {logits.size} float32 values, expected the logits of one image"
                        + (f" ({num_classes})" if num_classes else ""))
    return logits


def cifar10_pairs(result_path, label_path):
    """(logits N x C, labels N) in image order; every image needs exactly one result."""
    try:
        labels = np.load(label_path).astype(np.int64).reshape(-1)
    except OSError as err:
        raise UserError(f"label_path: cannot read {label_path} ({err})") from None
    except ValueError:
        raise UserError(f"label_path: {label_path} is not the .npy label array preprocess.py "
                        "writes for cifar10") from None
    by_index = {}
    for stem, path in result_stems(result_path).items():
        match = re.search(r"_(\d+)$", stem)
        if not match:
            raise UserError(f"{path}: name does not end in _<image index>{RESULT_SUFFIX}")
        by_index[int(match.group(1))] = path
    missing = [i for i in range(len(labels)) if i not in by_index]
    extra = sorted(i for i in by_index if i >= len(labels))
    if missing or extra:
        which = f"no result for image {missing[0]}" if missing else f"a result for image {extra[0]}"
        raise UserError(f"result_path: {result_path} has {len(by_index)} results for {len(labels)} "
                        f"labels in {label_path} ({which}); "
                        "rerun the inference on this preprocess output")
    first = read_logits(by_index[0])
    logits = np.stack([read_logits(by_index[i], first.size) for i in range(len(labels))])
    return logits, labels


def imagenet_pairs(result_path, label_path):
    """(logits N x C, labels N) for every labelled image; every one needs a result."""
    try:
        with open(label_path, encoding="utf-8") as handle:
            label_of = json.load(handle)
    except OSError as err:
        raise UserError(f"label_path: cannot read {label_path} ({err})") from None
    except ValueError:
        label_of = None
    if not isinstance(label_of, dict) or not label_of:
        raise UserError(f"label_path: {label_path} is not the JSON label file preprocess.py "
                        "writes for imagenet2012") from None
    results = result_stems(result_path)
    missing = sorted(set(label_of) - set(results))
    if missing:
        raise UserError(f"result_path: {result_path} has no result for image '{missing[0]}' "
                        f"({len(missing)} of {len(label_of)} labelled images missing)")
    stems = sorted(label_of)
    first = read_logits(results[stems[0]])
    logits = np.stack([read_logits(results[s], first.size) for s in stems])
    return logits, np.array([int(label_of[s]) for s in stems], np.int64)


def score(dataset, result_path, label_path):
    """The lines acc.log holds for these results."""
    if dataset == "cifar10":
        logits, labels = cifar10_pairs(result_path, label_path)
        return [str({"acc": topk_correct(logits, labels, 1) / len(labels)})]
    logits, labels = imagenet_pairs(result_path, label_path)
    total = len(labels)
    top1, top5 = topk_correct(logits, labels, 1), topk_correct(logits, labels, 5)
    return [f"top1_correct={top1}, tot={total}, acc={100.0 * top1 / total:.2f}%",
            f"top5_correct={top5}, tot={total}, acc={100.0 * top5 / total:.2f}%",
            str({"acc": top1 / total, "top1_acc": top1 / total, "top5_acc": top5 / total})]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dataset", "--dataset_name", dest="dataset", default="cifar10",
                        choices=("cifar10", "imagenet2012"))
    parser.add_argument("--result_path", "--result_dir", dest="result_path",
                        default="./result_Files", help="folder of <stem>_0.bin result files")
    parser.add_argument("--label_path", "--label_file", dest="label_path", default=None,
                        help="label file from preprocess.py (default: ./preprocess_Result/...)")
    parser.add_argument("--acc_log", default="acc.log", help="file the accuracy lines go to")
    add_debug_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    lines = score(args.dataset, args.result_path, args.label_path or DEFAULT_LABELS[args.dataset])
    with open(args.acc_log, "w", encoding="utf-8") as log:
        log.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_entry(main)
