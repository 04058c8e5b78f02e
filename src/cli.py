"""Runs an entry point so that a user's mistake ends in one line and a non-zero exit."""
import os
import sys
import traceback

from src.errors import UserError

# Attribute that run_with_config sets on an exception: the parsed config's `debug` value.
CONFIG_DEBUG = "vgg_config_debug"


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
    from model_utils.config import TRUE_WORDS

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
    """
    argv = sys.argv[1:] if argv is None else argv
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


def run_with_config(work, default_config="cifar10_config.yaml", argv=None):
    """Parse the YAML config and command line, then run work(config): inside the ModelArts
    adapter (copy data in, outputs out) when enable_modelarts is set, directly otherwise."""
    from model_utils.config import get_config

    config = get_config(argv, default_config=default_config)
    try:
        if config.enable_modelarts:
            from model_utils.moxing_adapter import run_on_modelarts
            return run_on_modelarts(config, work)
        return work(config)
    except Exception as err:
        setattr(err, CONFIG_DEBUG, bool(config.get("debug", False)))
        raise


def _user_error_inside(err):
    """A data-pipeline failure carries our one-line UserError inside MindSpore's banner."""
    try:
        from src.dataset import pipeline_user_error
    except ImportError:
        return None
    return pipeline_user_error(err)
