"""Config loader: YAML parts, typed overrides, and one-line errors for every bad key."""
import glob
import os

import pytest
import yaml

from model_utils import sync_yaml
from model_utils.config import get_config, load_yaml, save_config
from model_utils.schema import KEYS, SCHEMA
from src.errors import UserError
from tests.helpers import REPO

CIFAR = os.path.join(REPO, "cifar10_config.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "*.yaml"))))
def test_every_repository_yaml_loads(path):
    config = get_config([f"--config_path={path}"])
    assert config.batch_size >= 1
    assert len(config.image_size) == 2


def test_upstream_values_are_kept():
    cifar = get_config([f"--config_path={CIFAR}"])
    assert (cifar.num_classes, cifar.lr_max, cifar.lr_scheduler, cifar.batch_size) == \
        (10, 0.1, "step", 64)
    assert cifar.lr_epochs == (30, 60, 90, 120) and cifar.image_size == (224, 224)
    assert cifar.batch_norm is True and cifar.has_bias is False
    imagenet = get_config(["--config_path=imagenet2012_config.yaml"])
    assert (imagenet.num_classes, imagenet.lr_scheduler, imagenet.loss_scale) == \
        (1000, "cosine_annealing", 1024.0)
    assert imagenet.label_smooth is True and imagenet.pad_mode == "pad"


def test_overrides_are_typed_from_the_yaml():
    config = get_config([f"--config_path={CIFAR}", "--batch_size=8", "--lr", "0.5",
                         "--batch_norm=0", "--has_bias=True", "--image_size=64,96",
                         "--lr_epochs=[5,10]", "--device_target=CPU"])
    assert config.batch_size == 8 and isinstance(config.batch_size, int)
    assert config.lr == 0.5
    assert config.batch_norm is False and config.has_bias is True
    assert config.image_size == (64, 96)
    assert config.lr_epochs == (5, 10)
    assert config.device_target == "CPU"


def test_list_forms_agree():
    a = get_config([f"--config_path={CIFAR}", "--image_size=224,224"])
    b = get_config([f"--config_path={CIFAR}", "--image_size=[224,224]"])
    assert a.image_size == b.image_size == (224, 224)


@pytest.mark.parametrize("args, expected", [
    (["--batch_sise=8"], "did you mean 'batch_size'"),
    (["--batch_size=eight"], "'batch_size'"),
    (["--batch_norm=maybe"], "'batch_norm'"),
    (["--device_target=TPU"], "allowed values: Ascend, GPU, CPU"),
    (["--lr_scheduler=poly"], "allowed values"),
    (["--image_size=100,100"], "multiple of 32"),
    (["--image_size=224"], "'image_size'"),
    (["--batch_size=0"], "at least 1"),
    (["--warmup_epochs=80"], "'warmup_epochs' (80) is larger than 'max_epoch' (70)"),
    (["--dataset=mnist"], "allowed values: cifar10, imagenet2012"),
    (["--pad_mode=pad", "--padding=0"], "padding"),
    (["--max_epoch=1", "--warmup_epochs=2"], "'warmup_epochs' (2) is larger than 'max_epoch' (1)"),
    (["--lr_scheduler=cosine", "--warmup_steps=10", "--warmup_fraction=0.1"],
     "'warmup_steps' (10) and 'warmup_fraction' (0.1) both set the warmup"),
    (["--lr_scheduler=cosine", "--warmup_fraction=1.0"], "'warmup_fraction' is 1.0"),
    (["--lr_scheduler=cosine", "--warmup_steps=-1"], "'warmup_steps' is -1"),
    (["--warmup_fraction=0.05"], "'warmup_fraction' (0.05) applies to lr_scheduler cosine or "
                                 "linear, not 'step'"),
    (["--lr_scheduler=multistep", "--warmup_steps=3"], "not 'multistep'"),
    (["--eval_tta_shift=-1"], "'eval_tta_shift' is -1"),
    (["--logit_scale=0"], "'logit_scale' is 0.0; it must be > 0"),
    (["--activation=swish"], "allowed values: relu, gelu"),
    (["--bn_bias_lr_scale=-2"], "'bn_bias_lr_scale' is -2.0; it must be > 0"),
    (["--batch_norm=False", "--freeze_bn_scale=True"],
     "config key 'freeze_bn_scale' is True, but the network has no BatchNorm "
     "(batch_norm=False); set --freeze_bn_scale=False"),
    (["--batch_norm=False", "--bn_bias_lr_scale=16"],
     "config key 'bn_bias_lr_scale' is 16.0, but the network has no BatchNorm "
     "(batch_norm=False); set --bn_bias_lr_scale=1.0"),
    (["--dataset=imagenet2012", "--alternate_flip=True"],
     "'alternate_flip' applies to dataset cifar10, not 'imagenet2012'"),
    (["--dataset=imagenet2012", "--crop_padding_mode=reflect"],
     "'crop_padding_mode' applies to dataset cifar10, not 'imagenet2012'"),
    (["--crop_padding_mode=mirror"], "allowed values: zero, reflect"),
    (["--max_epoch=2", "--no_aug_epochs=3"], "'no_aug_epochs' (3) is larger than 'max_epoch' (2)"),
    (["--no_aug_epochs=-1"], "'no_aug_epochs' is -1"),
    (["--crop_padding_mode=reflect", "--crop_padding=32"],
     "'crop_padding' is 32; a reflected border can be at most 31 pixels wide"),
    (["--image_size=32,32", "--eval_tta_shift=32"],
     "'eval_tta_shift' is 32; it must be smaller than the image size"),
])
def test_bad_command_line_values_are_one_line_errors(args, expected):
    with pytest.raises(UserError) as info:
        get_config([f"--config_path={CIFAR}"] + args)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def _write_yaml(tmp_path, values, help_text=None, choices=None):
    help_text = help_text if help_text is not None else {k: "help" for k in values}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump_all([values, help_text, choices or {}]))
    return str(path)


def test_unknown_key_in_yaml_suggests_nearest(tmp_path):
    path = _write_yaml(tmp_path, {"batch_size": 4, "learning_rate": 0.1})
    with pytest.raises(UserError, match="unknown config key 'learning_rate' in c.yaml"):
        load_yaml(path)


def test_wrong_type_in_yaml(tmp_path):
    path = _write_yaml(tmp_path, {"batch_size": "four"})
    with pytest.raises(UserError, match="'batch_size' in c.yaml must be int"):
        load_yaml(path)


def test_yaml_value_outside_choices(tmp_path):
    path = _write_yaml(tmp_path, {"device_target": "TPU"}, choices={"device_target": ["CPU"]})
    with pytest.raises(UserError, match="'device_target' is 'TPU'; allowed values: CPU"):
        get_config([f"--config_path={path}"])


def test_key_without_help_text_is_refused(tmp_path):
    path = _write_yaml(tmp_path, {"batch_size": 4}, help_text={"seed": "x"})
    with pytest.raises(UserError, match="has no help text"):
        load_yaml(path)


def test_schema_choices_hold_for_a_yaml_without_a_choices_part(tmp_path):
    path = _write_yaml(tmp_path, {"device_target": "CPU", "lr_scheduler": "cosine"})
    with pytest.raises(UserError, match="'lr_scheduler' is 'poly'; allowed values: step, "):
        get_config([f"--config_path={path}", "--lr_scheduler=poly"])
    path = _write_yaml(tmp_path, {"device_target": "TPU"})
    with pytest.raises(UserError, match="'device_target' is 'TPU'; allowed values: Ascend, GPU"):
        get_config([f"--config_path={path}"])


def test_a_yaml_choices_part_narrows_the_schema_and_the_saved_config_keeps_it(tmp_path):
    path = _write_yaml(tmp_path, {"device_target": "CPU", "batch_size": 8},
                       choices={"device_target": ["TPU", "CPU"], "batch_size": [8, 16]})
    config = get_config([f"--config_path={path}"])  # TPU, unknown to the schema, is dropped
    saved = save_config(config, str(tmp_path / "run"))
    for args, message in ((["--device_target=GPU"], "allowed values: CPU"),
                          (["--device_target=TPU"], "allowed values: CPU"),
                          (["--batch_size=32"], "allowed values: 8, 16")):
        for config_path in (path, saved):
            with pytest.raises(UserError, match=message):
                get_config([f"--config_path={config_path}"] + args)
    assert get_config([f"--config_path={saved}", "--batch_size=16"]).batch_size == 16


def test_choices_that_name_no_supported_value_are_refused(tmp_path):
    path = _write_yaml(tmp_path, {"seed": 1}, choices={"device_target": ["TPU"]})
    with pytest.raises(UserError, match="choices for config key 'device_target' in c.yaml name "
                                        "none of the supported values: Ascend, GPU, CPU"):
        load_yaml(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("batch_size: 4\nlr: [0.1\n")
    with pytest.raises(UserError, match=r"broken.yaml is not valid YAML at line \d+"):
        load_yaml(str(path))


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found: nowhere.yaml"):
        get_config(["--config_path=nowhere.yaml"])


def test_yaml_loading_is_safe(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(str(path))


def test_config_is_read_only_and_replace_validates():
    config = get_config([f"--config_path={CIFAR}"])
    with pytest.raises(AttributeError, match="read-only"):
        config.batch_size = 3
    changed = config.replace(batch_size=3)
    assert changed.batch_size == 3 and config.batch_size == 64
    with pytest.raises(UserError):
        config.replace(rank=1)


def test_resolved_config_round_trips(tmp_path):
    config = get_config([f"--config_path={CIFAR}", "--batch_size=16", "--image_size=32,32"])
    path = save_config(config, str(tmp_path / "run"))
    again = get_config([f"--config_path={path}"])
    assert again.to_dict() == config.to_dict()
    with open(path, encoding="utf-8") as handle:
        _, help_text, choices = yaml.safe_load_all(handle)
    assert help_text == {key.name: key.help for key in KEYS}
    assert choices == {key.name: list(key.choices) for key in KEYS if key.choices}


def test_a_renamed_key_is_read_under_its_old_name(tmp_path):
    """native_kernels was called fast_conv: command lines, overrides and the YAMLs of older
    runs (their saved config.yaml, the config stored in their checkpoints) still work."""
    config = get_config([f"--config_path={CIFAR}", "--fast_conv=off"])
    assert config.native_kernels == "off" and "fast_conv" not in config
    assert config.replace(fast_conv="on").native_kernels == "on"
    saved = save_config(config, str(tmp_path / "run"))
    with open(saved, encoding="utf-8") as handle:
        text = handle.read()
    assert text.count("\nnative_kernels:") == 3  # values, help and choices
    old = tmp_path / "old_config.yaml"
    old.write_text(text.replace("\nnative_kernels:", "\nfast_conv:"), encoding="utf-8")
    assert get_config([f"--config_path={old}"]).to_dict() == config.to_dict()
    assert get_config([f"--config_path={old}", "--native_kernels=auto"]).native_kernels == "auto"
    both = _write_yaml(tmp_path, {"fast_conv": "off", "native_kernels": "on"})
    with pytest.raises(UserError, match="'fast_conv' and 'native_kernels' in c.yaml are one key"):
        load_yaml(both)


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as info:
        get_config([f"--config_path={CIFAR}", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    values, help_text, _ = load_yaml(CIFAR)
    for key in values:
        assert f"--{key}=" in out
    assert help_text["lr_scheduler"] in out


@pytest.mark.parametrize("name", ["step", "quadratic", "exponential", "multistep",
                                  "cosine_annealing", "cosine", "linear"])
def test_every_schedule_name_is_a_choice_of_every_yaml(name):
    # the per-step warmup keys go with the per-step schedules only (cifar10_cpu_config sets one)
    neutral = ["--warmup_fraction=0", "--warmup_steps=0"]
    for path in sorted(glob.glob(os.path.join(REPO, "*.yaml"))):
        config = get_config([f"--config_path={path}", f"--lr_scheduler={name}", *neutral])
        assert config.lr_scheduler == name


def test_yaml_warmup_longer_than_the_run_is_cut_with_one_warning(capsys):
    config = get_config([f"--config_path={CIFAR}", "--max_epoch=1"])
    assert (config.warmup_epochs, config.max_epoch) == (1, 1)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and err.count("\n") == 1
    assert "'warmup_epochs' is 5 in cifar10_config.yaml, more than max_epoch 1" in err


def test_no_warning_when_the_warmup_fits_or_is_not_used(capsys):
    assert get_config([f"--config_path={CIFAR}", "--max_epoch=5"]).warmup_epochs == 5
    per_step = get_config([f"--config_path={CIFAR}", "--max_epoch=1", "--lr_scheduler=cosine",
                           "--warmup_fraction=0.05"])
    assert per_step.warmup_epochs == 1 and per_step.warmup_fraction == 0.05
    assert capsys.readouterr().err == ""


def test_yaml_help_and_choices_match_the_schema():
    paths = sync_yaml.repository_yamls()
    assert {os.path.basename(p) for p in paths} >= {
        "cifar10_config.yaml", "imagenet2012_config.yaml", "cpu_quickstart_config.yaml"}
    assert sync_yaml.check(paths) == []  # if not: python -m model_utils.sync_yaml
    for path in paths:
        values, help_text, choices = load_yaml(path)
        assert list(values) == list(SCHEMA), path  # every key, in the schema's order
        assert help_text == {key.name: key.help for key in KEYS}
        assert choices == {key.name: list(key.choices) for key in KEYS if key.choices}


def test_sync_yaml_rewrites_help_and_choices_and_keeps_the_values_byte_for_byte(tmp_path,
                                                                                capsys):
    with open(CIFAR, encoding="utf-8") as handle:
        original = handle.read()
    values_text = original[:original.index("\n---\n") + 1] + "# a user's note: keep me\n\n"
    help_and_choices = original[original.index("\n---\n") + 1:]
    drifted = help_and_choices.replace('seed: "Random seed', 'seed: "Old help').replace(
        'amp_level: ["O0", "O2", "O3"]\n', "")
    path = tmp_path / "drifted.yaml"
    path.write_text(values_text + drifted, encoding="utf-8")

    assert sync_yaml.main(["--check", str(path)]) == 1
    assert "drifted.yaml: help or choices part differs" in capsys.readouterr().err
    assert sync_yaml.main([str(path)]) == 0
    assert sync_yaml.main(["--check", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == values_text + help_and_choices


def test_sync_yaml_check_names_missing_and_unknown_values(tmp_path):
    with open(CIFAR, encoding="utf-8") as handle:
        text = handle.read().replace("seed: 1\n", "").replace("debug: False\n", "dbg: 1\n")
    path = tmp_path / "keys.yaml"
    path.write_text(text, encoding="utf-8")
    assert sync_yaml.check([str(path)]) == [
        "keys.yaml: keys of the schema without a value: seed, debug",
        "keys.yaml: values for keys the schema lacks: dbg"]


def test_configuration_reference_pages_match_the_schema():
    from model_utils import config_docs

    assert config_docs.main(["--check"]) == 0, "run python -m model_utils.config_docs"
