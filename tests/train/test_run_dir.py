"""A workdir is checked before anything is written: a file is refused, and so is a different config in a run that
has checkpoints (naming the fields), while the fields that may change on resume pass."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mmjax import configlib
from mmjax.train import run_dir
from mmjax.train.checkpoint import CheckpointError
from tests.helpers import REPO

DIGITS = os.path.join(REPO, "configs/vit/digits.py")


def digits(*overrides: str):
    return configlib.apply_overrides(configlib.load_config_file(f"{DIGITS}:steps=100"), list(overrides))


def existing_run(tmp_path, *overrides: str) -> str:
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "50").mkdir(parents=True)
    configlib.write_json(digits(*overrides), str(workdir / "config.json"))
    return str(workdir)


def test_new_and_relative_workdirs_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_dir.prepare_workdir("runs/a", digits()) == str(tmp_path / "runs" / "a")
    assert os.path.isdir(tmp_path / "runs" / "a")


def test_a_file_is_not_a_workdir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        run_dir.prepare_workdir(str(tmp_path / "file"), digits())


def test_a_different_config_is_refused_naming_the_fields_and_nothing_is_written(tmp_path):
    workdir = existing_run(tmp_path)
    before = Path(workdir, "config.json").read_text()
    with pytest.raises(configlib.ConfigError, match=r"different config \(model\.variant: 'Mu/2' -> 'S/4', "
                                                     r"optim\.lr: 0\.003 -> 0\.01\)"):
        run_dir.prepare_workdir(workdir, digits("model.variant=S/4", "optim.lr=1e-2", "log_every=7"))
    assert Path(workdir, "config.json").read_text() == before
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]


def test_cadence_and_length_may_change_on_resume_with_a_warning_for_the_length(tmp_path, caplog):
    workdir = existing_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mmjax.train.run_dir"):
        run_dir.prepare_workdir(workdir, digits("total_steps=200", "log_every=7", "checkpoint_every=20",
                                                "nonfinite=skip", "mesh.data=1"))
    assert any("total_steps 200 (was 100)" in r.getMessage() for r in caplog.records)


def test_without_checkpoints_a_new_config_may_start_over(tmp_path):
    workdir = existing_run(tmp_path)
    os.rmdir(os.path.join(workdir, "checkpoints", "50"))
    assert run_dir.prepare_workdir(workdir, digits("model.variant=S/4")) == workdir
