"""Set-up shared by every test file."""
from src.native.isa import cap_onednn_isa


def pytest_configure(config):
    # What every entry point does first (src.cli.run_entry): cap oneDNN's instruction set for
    # MindSpore's convolutions before MindSpore first runs oneDNN in this process.
    cap_onednn_isa()
