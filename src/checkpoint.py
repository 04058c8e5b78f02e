"""Checkpoints that are written atomically, carry what resuming needs, and load with errors
that name the file and the parameters at fault."""
import contextlib
import logging
import os
import re

from src.errors import UserError

META_KEYS = ("epoch", "step_in_epoch", "global_step", "steps_per_epoch", "accumulate_steps",
             "arch", "config_yaml", "top1")
# Stored under this prefix so they never collide with parameter names (the optimizer has a
# `global_step` parameter of its own).
META_PREFIX = "meta."
NAME_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


@contextlib.contextmanager
def quiet_mindspore():
    """MindSpore logs its own ERROR line before raising; ours is the one the user needs."""
    from mindspore.log import _get_logger  # MindSpore's own logger (not named "mindspore")

    logger = _get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # a failed save is logged at CRITICAL
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_name(prefix, epoch, step):
    """Upstream naming: `<prefix>-<epoch>_<step>.ckpt`, epoch 1-based, step within the epoch."""
    return f"{prefix}-{epoch}_{step}.ckpt"


def save_checkpoint(cell, path, meta):
    """Write `cell`'s parameters plus `meta` to a temporary file, then rename it to `path`.

    A crash or a full disk therefore never leaves a partial file under a checkpoint's name,
    and earlier checkpoints are never touched. CRC is recorded so flipped bytes are caught.
    """
    import mindspore as ms

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with quiet_mindspore():
            ms.save_checkpoint(cell, tmp, crc_check=True,
                               append_dict={META_PREFIX + k: v for k, v in meta.items()})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as err:
        # MindSpore itself writes `<name>.tmp` and renames it to `<name>.ckpt`: remove both
        for partial in (tmp, os.path.splitext(tmp)[0] + ".tmp"):
            with contextlib.suppress(OSError):
                os.remove(partial)
        raise UserError(f"could not write checkpoint {path}: {str(err).splitlines()[0]}; "
                        "earlier checkpoints are unchanged") from None
    return path


def read_checkpoint(path):
    """All entries of a checkpoint file (parameters and metadata), or a one-line UserError."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with quiet_mindspore():
            return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError, TypeError) as err:
        raise UserError(f"checkpoint {path} is corrupt or not a MindSpore checkpoint "
                        f"({str(err).splitlines()[0][:120]})") from None


def checkpoint_meta(entries):
    """The resume metadata stored by save_checkpoint (missing keys are absent)."""
    meta = {}
    for key in META_KEYS:
        if META_PREFIX + key in entries:
            value = entries[META_PREFIX + key]
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    return meta


def load_weights(net, entries, path, reinit_classifier=False):
    """Copy matching parameters of `entries` into `net`.

    Every parameter of the network must be present with the same shape; otherwise a
    UserError lists the offenders. With reinit_classifier the last classifier layer may
    differ (another class count) and keeps its fresh initialisation, and so does the whole
    classifier when the checkpoint has another head (src/vgg.py HEADS). Returns the names
    that were skipped.
    """
    import mindspore as ms

    fresh = _fresh_head_prefix(net, entries, path, reinit_classifier)
    missing, mismatched, skipped = [], [], []
    to_load = {}
    for param in net.get_parameters():
        name = param.name
        if name not in entries:
            if reinit_classifier and name.startswith(fresh):
                skipped.append(name)
                continue
            missing.append(name)
            continue
        stored = entries[name]
        if tuple(stored.shape) != tuple(param.shape):
            if reinit_classifier and name.startswith(fresh):
                skipped.append(name)
                continue
            mismatched.append(f"{name} {tuple(stored.shape)} vs network {tuple(param.shape)}")
            continue
        to_load[name] = stored
    if missing:
        raise UserError(f"checkpoint {path} does not fit the network: {len(missing)} "
                        f"parameters missing ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}); was it made for another "
                        "arch, batch_norm or has_bias setting?")
    if mismatched:
        hint = ("" if reinit_classifier else
                "; for another class count set --reinit_classifier=True to fine-tune")
        raise UserError(f"checkpoint {path} does not fit the network: shape mismatch in "
                        f"{'; '.join(mismatched[:3])}{hint}")
    with quiet_mindspore():
        ms.load_param_into_net(net, to_load, strict_load=True)
    return skipped


def _fresh_head_prefix(net, entries, path, reinit_classifier):
    """Name prefix of the parameters reinit_classifier leaves freshly initialised: the last
    layer of the network's head, or its whole classifier when the checkpoint holds another
    head (refused without reinit_classifier). A network other than a VGG with its head (no
    `head`, or include_top False) is taken to end as the mlp head does."""
    from src.vgg import HEAD_LAYERS, head_of_weights

    net_head = getattr(net, "head", None) if getattr(net, "include_top", True) else None
    stored_head = head_of_weights(entries)
    if net_head is None or stored_head is None or stored_head == net_head:
        return HEAD_LAYERS[net_head or "mlp"][-1] + "."
    if not reinit_classifier:
        raise UserError(f"checkpoint {path} has the {stored_head} head "
                        f"({'/'.join(HEAD_LAYERS[stored_head])}) but the network has "
                        f"head={net_head}; set --head={stored_head}, or "
                        f"--reinit_classifier=True to train a new {net_head} head on its "
                        "features")
    return "classifier."


def list_checkpoints(folder):
    """Checkpoints named `<prefix>-<epoch>_<step>.ckpt` in folder, oldest first; never the
    `.tmp-<pid>-<name>` file of a save in progress or cut short (SIGKILL, power loss)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = NAME_PATTERN.match(name)
        if match and not name.startswith("."):
            found.append((int(match["epoch"]), int(match["step"]), os.path.join(folder, name)))
    return [path for _, _, path in sorted(found)]


def prune_checkpoints(folder, keep):
    """Delete all but the newest `keep` numbered checkpoints of folder."""
    paths = list_checkpoints(folder)
    for path in paths[:-keep] if keep > 0 else []:
        with contextlib.suppress(OSError):
            os.remove(path)
