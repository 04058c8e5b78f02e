"""Reads the three-part YAML (values, help, choices), applies `--key=value` overrides and
validates every key against model_utils/schema.py, so that a bad setting fails in one line
before any work starts."""
import difflib
import os
import sys

import yaml

from model_utils.schema import KEYS, OLD_NAMES, SCHEMA
from src.cli import FALSE_WORDS, TRUE_WORDS
from src.errors import UserError
from src.lr_schedule import PER_STEP


class Config:
    """Read-only view of a resolved configuration: `config.batch_size`, `config.to_dict()`."""

    def __init__(self, values, choices=None):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_choices", dict(choices or {}))

    def __getattr__(self, key):
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        raise AttributeError(f"config has no key '{key}'")

    def __setattr__(self, key, value):
        raise AttributeError(f"config is read-only (tried to set '{key}')")

    def __contains__(self, key):
        return key in self._values

    def get(self, key, default=None):
        return self._values.get(key, default)

    def to_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._values.items()}

    def replace(self, **changes):
        """A new Config with some values changed and validated (the original stays as it is)."""
        values = dict(self._values)
        for key, value in changes.items():
            key = OLD_NAMES.get(key, key)
            _check_known(key, "override")
            values[key] = _coerce(key, value, "override")
        _check_choices(values, self._choices)
        _check_consistency(values)
        return Config(values, self._choices)

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def _current_names(part, where):
    """A YAML part with renamed keys under their current names (schema Key.old_names), so
    that configs written before a rename, saved run configs among them, still load."""
    renamed, given_as = {}, {}
    for key, value in part.items():
        name = OLD_NAMES.get(str(key), key)
        if name in renamed:
            raise UserError(f"config keys '{given_as[name]}' and '{key}' in {where} are one key "
                            f"(old and current name); keep '{name}'")
        renamed[name], given_as[name] = value, key
    return renamed


def _nearest_hint(key):
    close = difflib.get_close_matches(key, SCHEMA.keys(), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_known(key, where):
    if key not in SCHEMA:
        raise UserError(f"unknown config key '{key}' in {where}{_nearest_hint(key)}")


def _type_name(key):
    spec = SCHEMA[key]
    if spec.type is list:
        return f"list of {spec.item.__name__}"
    return spec.type.__name__


def _coerce_scalar(key, kind, value, where):
    bad = UserError(f"config key '{key}' in {where} must be {_type_name(key)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise bad
    return str(value)


def _coerce(key, value, where):
    spec = SCHEMA[key]
    if spec.type is not list:
        return _coerce_scalar(key, spec.type, value, where)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        value = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UserError(f"config key '{key}' in {where} must be {_type_name(key)}, got {value!r}")
    return tuple(_coerce_scalar(key, spec.item, item, where) for item in value)


def _check_choices(values, choices):
    for key, allowed in choices.items():
        if key not in values:
            continue
        value = values[key]
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if item not in allowed:
                raise UserError(f"config key '{key}' is {item!r}; allowed values: "
                                + ", ".join(str(a) for a in allowed))


def _check_ranges(values):
    """Each key's own rule from the schema (at least 1, not negative, a multiple of 32, ...)."""
    for key, value in values.items():
        problem = SCHEMA[key].check(value) if SCHEMA[key].check else None
        if problem:
            shown = list(value) if isinstance(value, tuple) else value
            raise UserError(f"config key '{key}' is {shown}; {problem}")


def _check_consistency(v):
    """Range and cross-field checks that would otherwise fail late, after data has been read."""
    _check_ranges(v)
    for key in ("warmup_epochs", "no_aug_epochs"):
        if key in v and "max_epoch" in v and v[key] > v["max_epoch"]:
            raise UserError(f"config key '{key}' ({v[key]}) is larger than 'max_epoch' "
                            f"({v['max_epoch']})")
    _check_per_step_warmup(v)
    if v.get("pad_mode") == "same" and v.get("padding", 0) != 0:
        raise UserError(f"config key 'padding' is {v.get('padding')}; pad_mode 'same' needs "
                        "padding 0")
    if v.get("pad_mode") == "pad" and v.get("padding", 1) != 1:
        raise UserError(f"config key 'padding' is {v.get('padding')}; pad_mode 'pad' keeps the "
                        "feature size of a 3x3 convolution only with padding 1")
    for key, off in (("alternate_flip", False), ("crop_padding_mode", "zero")):
        if v.get(key, off) != off and v.get("dataset", "cifar10") != "cifar10":
            raise UserError(f"config key '{key}' applies to dataset cifar10, not "
                            f"{v.get('dataset')!r}")
    if v.get("crop_padding_mode") == "reflect" and v.get("crop_padding", 0) > 31:
        raise UserError(f"config key 'crop_padding' is {v['crop_padding']}; a reflected border "
                        "can be at most 31 pixels wide (CIFAR-10 images are 32x32)")
    _check_batchnorm_keys(v)
    _check_ghost_batch(v)
    shift, size = v.get("eval_tta_shift", 0), v.get("image_size")
    if shift and size and shift >= min(size):
        raise UserError(f"config key 'eval_tta_shift' is {shift}; it must be smaller than the "
                        f"image size ({min(size)})")


def _check_batchnorm_keys(v):
    """Keys that act on BatchNorm layers stay at their off value on a network without them."""
    if v.get("batch_norm") is not False:
        return
    for key, off in (("ghost_batch_size", 0), ("freeze_bn_scale", False),
                     ("bn_bias_lr_scale", 1.0)):
        if v.get(key, off) != off:
            raise UserError(f"config key '{key}' is {v[key]}, but the network has no BatchNorm "
                            f"(batch_norm=False); set --{key}={off}")


def _check_ghost_batch(v):
    """ghost_batch_size: on a network with BatchNorm, not synchronised. That it divides
    batch_size is checked by train.py alone: evaluation normalises with the running statistics,
    so eval.py takes any batch size with a config that trains in ghost batches."""
    ghost = v.get("ghost_batch_size", 0)
    if not ghost:
        return
    if v.get("sync_bn"):
        raise UserError(f"config keys 'ghost_batch_size' ({ghost}) and 'sync_bn' ask for "
                        "BatchNorm statistics over fewer and over more images; set one of "
                        "them off")


def _check_per_step_warmup(v):
    """warmup_steps and warmup_fraction: one or the other, and only where they are used."""
    fraction, steps = v.get("warmup_fraction", 0.0), v.get("warmup_steps", 0)
    if fraction and steps:
        raise UserError(f"config keys 'warmup_steps' ({steps}) and 'warmup_fraction' "
                        f"({fraction}) both set the warmup; set one of them to 0")
    scheduler = v.get("lr_scheduler")
    for key, value in (("warmup_steps", steps), ("warmup_fraction", fraction)):
        if value and scheduler not in PER_STEP:
            raise UserError(f"config key '{key}' ({value}) applies to lr_scheduler "
                            f"{' or '.join(PER_STEP)}, not {scheduler!r}; per-epoch schedules "
                            "warm up over warmup_epochs")


def _uses_warmup_epochs(v):
    """False when a per-step schedule takes its warmup from warmup_steps or warmup_fraction."""
    return v.get("lr_scheduler") not in PER_STEP or not (v.get("warmup_steps", 0)
                                                         or v.get("warmup_fraction", 0.0))


def _fit_warmup_to_run(values, explicit, where):
    """A warmup_epochs from the YAML that outlasts a shorter max_epoch is cut to the run, with
    one warning; a warmup_epochs given on the command line is left for the consistency check."""
    warmup, epochs = values.get("warmup_epochs"), values.get("max_epoch")
    if "warmup_epochs" in explicit or warmup is None or epochs is None or warmup <= epochs:
        return values
    if _uses_warmup_epochs(values):
        print(f"warning: config key 'warmup_epochs' is {warmup} in {where}, more than "
              f"max_epoch {epochs}; warming up for {epochs} epoch(s) instead", file=sys.stderr)
    return dict(values, warmup_epochs=epochs)


def _allowed_values(file_choices, where):
    """The schema's choices, narrowed to those a YAML's own choices part lists (a key without
    choices in the schema takes the file's list as it is). A listed value the schema does not
    know is dropped: no code could run it."""
    allowed = {key.name: list(key.choices) for key in KEYS if key.choices}
    for key, listed in file_choices.items():
        known = SCHEMA[key].choices
        kept = [value for value in listed if not known or value in known]
        if not kept:
            raise UserError(f"choices for config key '{key}' in {where} name none of the "
                            f"supported values: {', '.join(map(str, known))}")
        allowed[key] = kept
    return allowed


def load_yaml(path):
    """Returns (values, help, choices) of a three-part YAML file: the values typed, the help
    part as written (every value needs one) and the choices the schema allows, narrowed by
    the file's own choices part."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            parts = [doc if doc is not None else {} for doc in yaml.safe_load_all(handle)]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not 1 <= len(parts) <= 3 or not all(isinstance(p, dict) for p in parts):
        raise UserError(f"config file {path} must hold up to three YAML mappings "
                        "(values, then '---' help, then '---' choices)")
    parts += [{}] * (3 - len(parts))
    where = os.path.basename(path)
    values, help_text, choices = (_current_names(part, where) for part in parts)
    for key in list(values) + list(help_text) + list(choices):
        _check_known(str(key), where)
    for key in values:
        if key not in help_text:
            raise UserError(f"config key '{key}' in {where} has no help text in the second part")
    for key, allowed in choices.items():
        if not isinstance(allowed, list) or not allowed:
            raise UserError(f"choices for config key '{key}' in {where} must be a non-empty list")
    typed = {key: _coerce(key, value, where) for key, value in values.items()}
    return typed, help_text, _allowed_values(choices, where)


def _split_argv(argv):
    """`--key=value` and `--key value` pairs, in order; a bare `--flag` means True."""
    pairs = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"unexpected argument '{arg}'; use --key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        else:
            key, value = body, "True"
        pairs.append((OLD_NAMES.get(key, key), value))
        i += 1
    return pairs


def format_help(path, values, choices):
    lines = [f"usage: {os.path.basename(sys.argv[0])} --config_path=FILE [--key=value ...]",
             f"keys of {path} (any can be overridden on the command line):"]
    for key, value in values.items():
        shown = ",".join(str(x) for x in value) if isinstance(value, tuple) else value
        extra = f"  choices: {', '.join(map(str, choices[key]))}" if key in choices else ""
        lines.append(f"  --{key}={shown}\n      {SCHEMA[key].help}{extra}")
    return "\n".join(lines)


def get_config(argv=None, default_config="cifar10_config.yaml"):
    """Parse argv (default sys.argv[1:]) into a validated, read-only Config.

    `--config_path` picks the YAML (relative paths are tried from the working folder and
    then from the repository root); every other `--key=value` overrides a YAML value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    argv = [a for a in argv if a not in ("-h", "--help")]
    pairs = _split_argv(argv)
    path = default_config
    for key, value in pairs:
        if key == "config_path":
            path = value
    path = _resolve_config_path(path)
    values, _, choices = load_yaml(path)
    if wants_help:
        print(format_help(path, values, choices))
        sys.exit(0)
    for key, raw in pairs:
        if key == "config_path":
            continue
        _check_known(key, "command line")
        values[key] = _coerce(key, raw, "command line")
    _check_choices(values, choices)
    values = _fit_warmup_to_run(values, {key for key, _ in pairs}, os.path.basename(path))
    _check_consistency(values)
    return Config(values, choices)


def _resolve_config_path(path):
    if os.path.isabs(path) or os.path.exists(path):
        return path
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(repo_root, path)
    return candidate if os.path.exists(candidate) else path


def save_config(config, folder, name="config.yaml"):
    """Write the resolved config into a run folder in the same three-part form (help from the
    schema), so that it can be passed back as --config_path; returns the file path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    values = config.to_dict()
    parts = [values, {key: SCHEMA[key].help for key in values}, dict(config._choices)]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all(parts, handle, sort_keys=False)
    return path
