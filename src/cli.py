"""Runs an entry point so that a user's mistake ends in one line and a non-zero exit."""
import os
import sys
import traceback

from src.errors import UserError


def _debug_requested(argv):
    if os.environ.get("VGG_DEBUG", "") not in ("", "0"):
        return True
    return any(a in ("--debug", "--debug=True", "--debug=1", "--debug=true") for a in argv)


def run_entry(main, argv=None):
    """Call main(); UserError and unexpected failures become `error: ...` on stderr, exit 1.

    `--debug=True` (or VGG_DEBUG=1) shows the full traceback instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    debug = _debug_requested(argv)
    try:
        main()
    except UserError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # pylint: disable=broad-except
        if debug:
            raise
        inner = _user_error_inside(err)
        if inner is not None:
            print(f"error: {inner}", file=sys.stderr)
            sys.exit(1)
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: {type(err).__name__}: {first} (run with --debug=True for the traceback)",
              file=sys.stderr)
        sys.exit(1)


def run_with_config(work, default_config="cifar10_config.yaml", argv=None):
    """Parse the YAML config and command line, then run work(config): inside the ModelArts
    adapter (copy data in, outputs out) when enable_modelarts is set, directly otherwise."""
    from model_utils.config import get_config

    config = get_config(argv, default_config=default_config)
    if config.enable_modelarts:
        from model_utils.moxing_adapter import run_on_modelarts
        return run_on_modelarts(config, work)
    return work(config)


def _user_error_inside(err):
    """A data-pipeline failure carries our one-line UserError inside MindSpore's banner."""
    try:
        from src.dataset import pipeline_user_error
    except ImportError:
        return None
    return pipeline_user_error(err)
