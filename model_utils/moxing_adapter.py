"""ModelArts: copy a job's inputs from OBS to the local disk before an entry point runs, and
its outputs back to OBS afterwards (also when it fails). Only imported when
enable_modelarts=True, and only this module imports `moxing`.

    run_on_modelarts(config, train)    # train.py; eval.py and export.py alike

Before: data_url -> data_path and checkpoint_url -> load_path, done once per node by local
rank 0 (with the unzip of <modelarts_dataset_unzip_name>.zip when asked); the other local
ranks wait for its marker file. Then fn runs on a config whose data_dir, ckpt_path,
pre_trained/ckpt_file and file_name point at the local copies. After: output_path ->
train_url, by local rank 0 when fn returns, and by any process whose fn raised.
"""
import logging
import os
import sys
import time
import zipfile

from src.errors import UserError
from src.runtime import LOCAL_RANK_VARIABLES

log = logging.getLogger("vgg.modelarts")


def _console_logging():
    """The copy steps run before the entry point sets up its own logging: show them."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("modelarts: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

SYNC_MARKER = ".modelarts_inputs_ready"
DEFAULT_WAIT_SECONDS = 3600.0  # copying and unzipping ImageNet can take most of an hour
DEVICES_PER_NODE = 8


def load_file_api():
    """moxing's file API (copy_parallel, exists, ...), which only ModelArts images carry."""
    try:
        import moxing
        file_api = moxing.file
        file_api.copy_parallel  # noqa: B018  # pylint: disable=pointless-statement
    except (ImportError, AttributeError):
        # (the PyPI package named moxing is an unrelated project without .file)
        raise UserError("enable_modelarts=True needs moxing, which is only available on "
                        "ModelArts; set --enable_modelarts=False to run elsewhere") from None
    return file_api


def node_local_rank():
    """This process's index among the processes of its node, from the launcher's variables;
    DEVICE_ID (msrun exports the local rank there, ModelArts the device) as a fallback."""
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    device_id = os.environ.get("DEVICE_ID", "")
    return int(device_id) % DEVICES_PER_NODE if device_id.isdigit() else 0


def unzip_dataset(config):
    """Extract <data_path>/<modelarts_dataset_unzip_name>.zip into data_path."""
    archive = os.path.join(config.data_path, config.modelarts_dataset_unzip_name + ".zip")
    if not os.path.isfile(archive):
        raise UserError(f"need_modelarts_dataset_unzip=True but {archive} does not exist "
                        "(check data_url and modelarts_dataset_unzip_name)")
    start = time.time()
    try:
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(config.data_path)
    except zipfile.BadZipFile as err:
        raise UserError(f"{archive} is not a readable zip file ({err})") from None
    log.info("unzipped %s into %s in %.0f s", archive, config.data_path, time.time() - start)


def checkpoint_is_file(config):
    return config.checkpoint_url.rstrip("/").endswith(".ckpt")


def copy_inputs(config, file_api):
    """data_url -> data_path, checkpoint_url -> load_path, then the unzip when asked."""
    if config.data_url:
        os.makedirs(config.data_path, exist_ok=True)
        log.info("copying %s to %s", config.data_url, config.data_path)
        file_api.copy_parallel(config.data_url, config.data_path)
    if config.checkpoint_url:
        os.makedirs(config.load_path, exist_ok=True)
        log.info("copying %s to %s", config.checkpoint_url, config.load_path)
        if checkpoint_is_file(config):
            name = os.path.basename(config.checkpoint_url.rstrip("/"))
            file_api.copy(config.checkpoint_url, os.path.join(config.load_path, name))
        else:
            file_api.copy_parallel(config.checkpoint_url, config.load_path)
    if config.need_modelarts_dataset_unzip:
        unzip_dataset(config)


def marker_path(config):
    return os.path.join(config.data_path, SYNC_MARKER)


def prepare_inputs(config, file_api, local_rank, wait_seconds, poll_seconds=1.0):
    """Local rank 0 copies and unzips, then writes the marker ('ok' or 'failed: why'); the
    other local ranks wait for it."""
    marker = marker_path(config)
    if local_rank == 0:
        os.makedirs(config.data_path, exist_ok=True)
        if os.path.exists(marker):
            os.remove(marker)  # from an earlier job in this container
        try:
            copy_inputs(config, file_api)
        except BaseException as err:
            _write_marker(marker, f"failed: {type(err).__name__}: {err}")
            raise
        _write_marker(marker, "ok")
        return
    deadline = time.monotonic() + wait_seconds
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise UserError(f"local rank {local_rank} waited {wait_seconds:.0f} s for {marker}, "
                            "which local rank 0 writes after copying (and unzipping) the "
                            "dataset; see local rank 0's log")
        time.sleep(poll_seconds)
    with open(marker, encoding="utf-8") as handle:
        state = handle.read().strip()
    if state != "ok":
        raise UserError(f"local rank 0 could not prepare the inputs ({state})")


def _write_marker(path, text):
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    os.replace(partial, path)  # waiters never see a half-written marker


def local_data_dir(config):
    """data_path, or its <modelarts_dataset_unzip_name>/ folder when the archive made one."""
    unzipped = os.path.join(config.data_path, config.modelarts_dataset_unzip_name)
    if config.need_modelarts_dataset_unzip and os.path.isdir(unzipped):
        return unzipped
    return config.data_path


def local_checkpoint(config, value):
    """Where a checkpoint setting points after checkpoint_url was copied to load_path."""
    if value and os.path.isabs(value):
        return value
    if value:
        return os.path.join(config.load_path, value)  # a name inside checkpoint_url
    if checkpoint_is_file(config):
        return os.path.join(config.load_path, os.path.basename(config.checkpoint_url.rstrip("/")))
    return config.load_path


def under_output(config, value):
    """A relative output setting placed inside output_path (which is copied to train_url)."""
    if value and os.path.isabs(value):
        return value
    return os.path.join(config.output_path, value)


def localize_config(config):
    """The config fn sees: data, checkpoints and outputs on the local disk."""
    changes = {"ckpt_path": under_output(config, config.ckpt_path)}
    if config.data_url or config.need_modelarts_dataset_unzip:
        changes["data_dir"] = local_data_dir(config)
    if config.checkpoint_url:
        for key in ("pre_trained", "ckpt_file"):
            if key in config:
                changes[key] = local_checkpoint(config, config.get(key))
    if config.get("file_name"):
        changes["file_name"] = under_output(config, config.file_name)
    return config.replace(**changes)


def copy_outputs(config, file_api):
    if not config.train_url:
        log.warning("train_url is empty: the outputs stay in %s", config.output_path)
        return
    log.info("copying %s to %s", config.output_path, config.train_url)
    file_api.copy_parallel(config.output_path, config.train_url)


def run_on_modelarts(config, fn, file_api=None, local_rank=None, wait_seconds=None):
    """Run fn(local_config) between copying the inputs in and the outputs out; returns what
    fn returns. file_api stands in for moxing.file (tests pass a local one)."""
    _console_logging()
    if file_api is None:
        file_api = load_file_api()
    if local_rank is None:
        local_rank = node_local_rank()
    if wait_seconds is None:
        wait_seconds = DEFAULT_WAIT_SECONDS
    prepare_inputs(config, file_api, local_rank, wait_seconds)
    local_config = localize_config(config)
    os.makedirs(config.output_path, exist_ok=True)
    try:
        result = fn(local_config)
    except BaseException:
        # this process failed: its logs are what the user needs to see on OBS
        try:
            copy_outputs(config, file_api)
        except Exception as copy_err:  # pylint: disable=broad-except
            log.error("copying the outputs to %s failed too: %s", config.train_url, copy_err)
        raise
    if local_rank == 0:
        copy_outputs(config, file_api)
    return result
