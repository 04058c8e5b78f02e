"""The class-name file (`class_names.json`, a JSON list in index order) that training writes
for folder datasets and for CIFAR-10 (from the release's `batches.meta.txt`), and that eval,
export and predict use to print names."""
import json
import os

from src.errors import UserError

CLASS_NAMES_FILE = "class_names.json"
# The CIFAR-10 binary release names its classes in this file beside data_batch_*.bin, one a line.
CIFAR10_META_FILE = "batches.meta.txt"


def find_class_names(model_path, given=None):
    """The class-name file to use: `given`, else class_names.json beside the model or one
    folder up; None when there is none."""
    if given:
        if not os.path.isfile(given):
            raise UserError(f"class_names: {given} does not exist")
        return given
    folder = os.path.dirname(os.path.abspath(model_path))
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, CLASS_NAMES_FILE)
        if os.path.isfile(path):
            return path
    return None


def read_class_names(path, num_classes):
    """The list of names in `path`, checked against the model's class count."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"class_names: cannot read {path} as JSON ({err})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"class_names: {path} must hold a JSON list of names in index order")
    if len(names) != num_classes:
        raise UserError(f"class_names: {path} lists {len(names)} names but the model has "
                        f"{num_classes} classes")
    return names


def cifar10_meta_names(folder):
    """The class names listed in `folder`/batches.meta.txt (blank lines skipped), or None when
    the folder has no such file."""
    path = os.path.join(folder, CIFAR10_META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a BOM is not part of a name
            return [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the class names in {path} ({err})") from None
