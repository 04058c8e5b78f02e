"""Set-up shared by every test file: the oneDNN instruction-set cap, the e2e marker on
everything under tests/e2e/, and the fixtures several files use (helpers in tests/helpers.py).

    python -m pytest -q tests              # everything (the README's and CI's command)
    python -m pytest -q tests -m "not e2e" # the fast, in-process tests alone
"""
from pathlib import Path

import numpy as np
import pytest

from src.dataset import CIFAR10_EVAL_DIR, CIFAR10_TRAIN_DIR, write_cifar10_bin
from src.native.isa import cap_onednn_isa
from tests.helpers import JOB_RECORDS, write_learnable_cifar

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_configure(config):
    # What every entry point does first (src.cli.run_entry): cap oneDNN's instruction set for
    # MindSpore's convolutions before MindSpore first runs oneDNN in this process.
    cap_onednn_isa()


def pytest_collection_modifyitems(config, items):
    # Whole runs live under tests/e2e/; a whole run inside a unit file carries the mark itself.
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def learnable_cifar(tmp_path_factory):
    """make(n_train=128, n_eval=48, seed=0) -> a data folder of write_learnable_cifar files,
    written once per session for each set of arguments (tests only read it)."""
    made = {}

    def make(n_train=128, n_eval=48, seed=0):
        key = (n_train, n_eval, seed)
        if key not in made:
            made[key] = write_learnable_cifar(tmp_path_factory.mktemp("cifar"), *key)
        return made[key]

    return make


@pytest.fixture(scope="module")
def id_coded_cifar(tmp_path_factory):
    """CIFAR-10 layout (a pathlib folder); training image i is filled with the value i, so any
    pixel of the centre (untouched by crop and flip) tells which record a batch row came from;
    40 random evaluation images."""
    root = tmp_path_factory.mktemp("cifar")
    ids = np.arange(JOB_RECORDS, dtype=np.uint8)
    write_cifar10_bin(str(root / CIFAR10_TRAIN_DIR / "data_batch_1.bin"),
                      np.repeat(ids[:, None], 3 * 32 * 32, axis=1), ids % 10)
    rng = np.random.default_rng(0)
    write_cifar10_bin(str(root / CIFAR10_EVAL_DIR / "test_batch.bin"),
                      rng.integers(0, 256, (40, 3072), dtype=np.uint8), rng.integers(0, 10, 40))
    return root


@pytest.fixture(scope="session")
def library():
    """The native kernel library, built if it is not (a test that needs it fails, never
    skips, when it cannot be built: CI builds it with --strict first)."""
    from src.native import build as native_build

    try:
        return native_build.build()
    except native_build.BuildError as exc:
        pytest.fail(f"native kernel library not built: {exc}")


@pytest.fixture(scope="module")
def graph_mode_on_cpu():
    """MindSpore in graph mode on CPU for a whole module (use with pytest.mark.usefixtures)."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
