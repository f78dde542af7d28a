import os
import re

import pytest

from mmjax import configlib
from tests.helpers import REPO, run, train_cmd

DIGITS = os.path.join(REPO, "configs/vit/digits.py")


def test_parse_arg_types_and_unknown_keys():
    arg = configlib.parse_arg("variant=S/4,steps=20,flag,rate=0.5", variant="Mu/2", steps=1, flag=False, rate=1.0)
    assert (arg.variant, arg.steps, arg.flag, arg.rate) == ("S/4", 20, True, 0.5)
    with pytest.raises(configlib.ConfigError, match="'bogus'"):
        configlib.parse_arg("bogus=1", variant="x")


def test_overrides_are_typed_and_unknown_fields_refused():
    config = configlib.load_config_file(f"{DIGITS}:steps=7")
    assert config.total_steps == 7
    configlib.apply_overrides(config, ["optim.lr=3e-4", "model.variant=S/4", "optim.warmup_steps=5",
                                       "optim.frozen=('head',)"])
    assert config.optim.lr == 3e-4 and config.model.variant == "S/4" and config.optim.frozen == ("head",)
    with pytest.raises(configlib.ConfigError, match=r"'optim\.lrr'"):
        configlib.apply_overrides(config, ["optim.lrr=1"])
    with pytest.raises(configlib.ConfigError, match="'nope'"):
        configlib.apply_overrides(config, ["nope.x=1"])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(configlib.ConfigError, match="not found"):
        configlib.load_config_file(str(tmp_path / "missing.py"))


def test_cli_reports_unknown_field_in_one_line(tmp_path):
    result = run(train_cmd(DIGITS, str(tmp_path), "optim.lrr=3"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config field 'optim.lrr'; fields here: ['b1', 'b2', 'clip_norm', 'end_lr_frac', 'eps', "
        "'frozen', 'grad_accum', 'lr', 'lr_mult', 'momentum', 'name', 'no_decay', 'schedule', 'warmup_steps', "
        "'weight_decay']"]


def test_resolved_config_written_as_json(tmp_path):
    import json

    config = configlib.load_config_file(DIGITS)
    configlib.write_json(config, str(tmp_path / "config.json"))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["variant"] == "Mu/2"


@pytest.mark.parametrize("raw, expected", [("true", True), ("Yes", True), ("ON", True), ("1", True),
                                           ("false", False), ("No", False), ("off", False), ("0", False)])
def test_booleans_accept_the_usual_spellings_in_overrides_and_variants(raw, expected):
    config = configlib.load_config_file(DIGITS)
    assert configlib.apply_overrides(config, [f"model.scan={raw}"]).model.scan is expected
    assert configlib.parse_arg(f"flag={raw}", flag=not expected).flag is expected


def test_boolean_typos_are_refused_with_the_allowed_spellings():
    config = configlib.load_config_file(DIGITS)
    with pytest.raises(configlib.ConfigError, match=r"--config\.model\.scan: 'ture' is not a boolean; use one of "
                                                     r"\['true', '1', 'yes', 'on', 'false', '0', 'no', 'off'\]"):
        configlib.apply_overrides(config, ["model.scan=ture"])
    assert config.model.scan is False
    with pytest.raises(configlib.ConfigError, match="config variant flag: 'maybe' is not a boolean"):
        configlib.parse_arg("flag=maybe", flag=False)


@pytest.mark.parametrize("override, allowed", [
    ("nonfinite=maybe", "['stop', 'skip']"),
    ("optim.name=adam", "['adamw', 'sgd', 'adafactor']"),
    ("optim.schedule=cosin", "['cosine', 'linear', 'constant']"),
    ("model.remat_policy=dot", "['none', 'full', 'dots',"),
])
def test_enum_typos_are_refused_with_the_declared_choices(override, allowed):
    config = configlib.load_config_file(DIGITS)
    field, value = override.split("=")
    with pytest.raises(configlib.ConfigError, match=re.escape(f"config.{field}={value!r} is not allowed; choose one "
                                                              f"of {allowed}")):
        configlib.apply_overrides(config, [override])


def test_enum_values_in_the_declared_set_are_accepted_and_checked_at_load(tmp_path):
    config = configlib.apply_overrides(configlib.load_config_file(DIGITS),
                                       ["nonfinite=skip", "optim.name=sgd", "model.remat_policy=full"])
    assert (config.nonfinite, config.optim.name, config.model.remat_policy) == ("skip", "sgd", "full")
    bad = tmp_path / "bad.py"   # a config file whose own default is not a declared choice fails when loaded
    bad.write_text("from mmjax.train.defaults import trainer_config\n\n"
                   "def get_config(arg=None):\n    return trainer_config(nonfinite='ignore')\n")
    with pytest.raises(configlib.ConfigError, match=r"config\.nonfinite='ignore' is not allowed"):
        configlib.load_config_file(str(bad))


def test_choice_patterns_match_nested_fields_and_exact_declarations_win(monkeypatch):
    monkeypatch.setattr(configlib, "_CHOICES", dict(configlib._CHOICES))  # this test's declarations stay here
    configlib.declare_choices({"*test_mode": ("a", "b"), "special.test_mode": ("c",)})
    assert configlib.allowed_values("model.lm.test_mode") == ("a", "b")
    assert configlib.allowed_values("special.test_mode") == ("c",)
    assert configlib.allowed_values("test_modes") is None
    import ml_collections

    nested = ml_collections.ConfigDict({"model": {"lm": {"test_mode": "z"}}})
    with pytest.raises(configlib.ConfigError, match=r"config\.model\.lm\.test_mode='z'"):
        configlib.check_choices(nested)


def test_variant_values_of_the_wrong_type_name_the_key():
    with pytest.raises(configlib.ConfigError, match=r"config variant steps='abc' is not an integer \(in 'steps=abc'\)"):
        configlib.load_config_file(f"{DIGITS}:steps=abc")
    with pytest.raises(configlib.ConfigError, match="config variant rate='fast' is not a number"):
        configlib.parse_arg("rate=fast", rate=1.0)


def test_get_config_refusing_its_argument_is_a_config_error(tmp_path):
    presets = tmp_path / "presets.py"
    presets.write_text("from mmjax.configlib import parse_arg\nfrom mmjax.train.defaults import trainer_config\n"
                       "SIZES = {'S': 1}\n\ndef get_config(arg=None):\n"
                       "    return trainer_config(seed=SIZES[parse_arg(arg, size='S').size])\n")
    assert configlib.load_config_file(f"{presets}:size=S").seed == 1
    with pytest.raises(configlib.ConfigError, match=r"presets\.py:size=XL: get_config refused its argument: "
                                                     r"KeyError: 'XL'"):
        configlib.load_config_file(f"{presets}:size=XL")
