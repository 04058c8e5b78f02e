"""Runs an entry point so that a user's mistake ends in one line and a non-zero exit, after
the process-wide oneDNN setting (src/native/isa.py)."""
import os
import sys
import traceback

from src.errors import UserError
from src.native.isa import cap_onednn_isa

# Attribute that model_utils.entry.run_with_config sets on an exception: the parsed config's
# `debug` value.
CONFIG_DEBUG = "vgg_config_debug"
# How a boolean is spelled on the command line and in YAML (model_utils/config.py too).
TRUE_WORDS = {"true", "1", "yes"}
FALSE_WORDS = {"false", "0", "no"}


def add_debug_option(parser):
    """`--debug=True` for an argparse entry point: full tracebacks, as the message of an
    unexpected error suggests (read from argv by run_entry)."""
    parser.add_argument("--debug", default=None, help="True: full tracebacks (or VGG_DEBUG=1)")


def _debug_requested(argv, err):
    """VGG_DEBUG, else the parsed config's `debug` (YAML or command line, carried by the
    error), else, when the config itself could not be read, a `--debug` on the command line."""
    if os.environ.get("VGG_DEBUG", "") not in ("", "0"):
        return True
    if hasattr(err, CONFIG_DEBUG):
        return getattr(err, CONFIG_DEBUG)
    return _debug_in_argv(argv)


def _debug_in_argv(argv):
    """The last `--debug[=| ]VALUE` (a bare `--debug` is true), in the loader's spellings."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--debug="):
            value = arg.split("=", 1)[1]
        elif arg == "--debug":
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            value = "true" if following.startswith("--") else following
    return value is not None and value.strip().lower() in TRUE_WORDS


def run_entry(main, argv=None):
    """Call main(); UserError and unexpected failures become `error: ...` on stderr, exit 1.

    `debug: True` in the config (or --debug=True, or VGG_DEBUG=1) shows the full traceback.
    Before main, oneDNN's instruction set is capped for MindSpore's convolutions (it must be
    set before MindSpore first runs oneDNN; a user's own ONEDNN_MAX_CPU_ISA is kept).
    """
    argv = sys.argv[1:] if argv is None else argv
    cap_onednn_isa()
    try:
        main()
    except UserError as err:
        if _debug_requested(argv, err):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # pylint: disable=broad-except
        if _debug_requested(argv, err):
            raise
        inner = _user_error_inside(err)
        if inner is not None:
            print(f"error: {inner}", file=sys.stderr)
            sys.exit(1)
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: {type(err).__name__}: {first} (run with --debug=True for the traceback)",
              file=sys.stderr)
        sys.exit(1)


def _user_error_inside(err):
    """A data-pipeline failure carries our one-line UserError inside MindSpore's banner."""
    try:
        from src.dataset import pipeline_user_error
    except ImportError:
        return None
    return pipeline_user_error(err)
