"""Averages the network weights of several checkpoints of one variant into one weights
checkpoint (BatchNorm moving statistics are averaged like the weights), the form eval.py
and export.py load."""
import os

import numpy as np

from src import checkpoint as ckpt
from src.errors import UserError

# The VGG's own parameters; optimizer state (moments.*, global_step), EMA averages (ema.*),
# accumulated gradients and loss-scale state are not part of the network.
NETWORK_PREFIXES = ("features.", "classifier.")
EMA_PREFIX = "ema."


def checkpoints_to_average(inputs, count):
    """The files to average: the given files, or the newest `count` numbered checkpoints
    (<arch>-<epoch>_<step>.ckpt) of one run folder."""
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        found = ckpt.list_checkpoints(inputs[0])
        if not found:
            raise UserError(f"{inputs[0]}: no <arch>-<epoch>_<step>.ckpt checkpoints to average")
        return found[-count:]
    for path in inputs:
        if not os.path.isfile(path):
            raise UserError(f"{path}: not a checkpoint file (give files, or one run folder)")
    return list(inputs)


def network_weights(entries, path, use_ema=False):
    """{name: float64 array} of the network's weights in one checkpoint's entries; with
    use_ema its ema.* averages under the network's own names."""
    names = [k for k in entries if k.startswith(NETWORK_PREFIXES)]
    if not names:
        raise UserError(f"checkpoint {path} holds no VGG weights (features.*, classifier.*)")
    if use_ema:
        missing = [n for n in names if EMA_PREFIX + n not in entries]
        if missing:
            raise UserError(f"checkpoint {path} has no EMA weights ({EMA_PREFIX}{missing[0]}); "
                            "it was trained without ema_decay: leave out --use_ema")
        return {n: entries[EMA_PREFIX + n].asnumpy().astype(np.float64) for n in names}
    return {n: entries[n].asnumpy().astype(np.float64) for n in names}


def _check_same_variant(first, first_path, weights, meta, path):
    arch, other = first[1].get("arch"), meta.get("arch")
    if arch and other and arch != other:
        raise UserError(f"checkpoint {path} holds {other}, {first_path} holds {arch}; "
                        "average checkpoints of one variant")
    layout = {k: v.shape for k, v in first[0].items()}
    if {k: v.shape for k, v in weights.items()} != layout:
        differing = sorted(set(layout.items()) ^ {(k, v.shape) for k, v in weights.items()})
        raise UserError(f"checkpoint {path} does not match {first_path} (parameter "
                        f"{differing[0][0]}); average checkpoints of one variant")


def average_checkpoints(paths, use_ema=False):
    """(averaged float32 weights by name, metadata of the last checkpoint)."""
    total, first, meta = None, None, {}
    for path in paths:
        entries = ckpt.read_checkpoint(path)
        weights, meta = network_weights(entries, path, use_ema), ckpt.checkpoint_meta(entries)
        if first is None:
            first, total = (weights, meta), {k: v.copy() for k, v in weights.items()}
            continue
        _check_same_variant(first, paths[0], weights, meta, path)
        for name, value in weights.items():
            total[name] += value
    return {k: (v / len(paths)).astype(np.float32) for k, v in total.items()}, meta


def save_average(weights, path, meta):
    import mindspore as ms

    kept = {k: meta[k] for k in ("arch", "config_yaml") if k in meta}
    ckpt.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in weights.items()], path,
                         kept)
    return path
