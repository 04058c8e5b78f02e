"""How an entry point gets its config: parse the YAML and the command line, then run the
work, inside the ModelArts adapter (copy data in, outputs out) when enable_modelarts is set.
An entry point's main() calls run_with_config(work) and is itself run by src.cli.run_entry
(one-line errors)."""
from model_utils.config import get_config
from src.cli import CONFIG_DEBUG


def run_with_config(work, default_config="cifar10_config.yaml", argv=None):
    """Parse the YAML config and command line, then run work(config): inside the ModelArts
    adapter when enable_modelarts is set, directly otherwise. An exception leaves carrying
    the config's `debug` value, for run_entry to decide on the traceback."""
    config = get_config(argv, default_config=default_config)
    try:
        if config.enable_modelarts:
            from model_utils.moxing_adapter import run_on_modelarts
            return run_on_modelarts(config, work)
        return work(config)
    except Exception as err:
        setattr(err, CONFIG_DEBUG, bool(config.get("debug", False)))
        raise
