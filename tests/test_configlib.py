import os

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
