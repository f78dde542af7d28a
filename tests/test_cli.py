"""One error style for every command: a user error is one `error:` line and exit status 2 (a traceback only with
--debug); a preempted run is 75 (covered in tests/train); repeated warnings are rate-limited."""

from __future__ import annotations

import logging
import os

import pytest

from mmjax import cli, configlib, sample, tokenize_images
from mmjax.data import sources
from mmjax.eval import run as eval_run
from mmjax.train import __main__ as train_cli
from tests.helpers import REPO, run, train_cmd

DIGITS = os.path.join(REPO, "configs/vit/digits.py")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.py"], "error: config file not found: missing.py"),
    (["--config", f"{DIGITS}:steps=abc"], "error: config variant steps='abc' is not an integer (in 'steps=abc')"),
    (["--config", DIGITS, "--config.nonfinite=maybe"],
     "error: config.nonfinite='maybe' is not allowed; choose one of ['stop', 'skip']"),
    (["--config", DIGITS, "--config.model.scan=ture"], "error: --config.model.scan: 'ture' is not a boolean"),
    (["--config", DIGITS, "--config.task=clasification"], "error: config.task: unknown task 'clasification'"),
])
def test_train_config_errors_are_one_line_and_status_2(tmp_path, capsys, args, message):
    assert train_cli.main([*args, "--workdir", str(tmp_path / "run")]) == cli.EXIT_USAGE
    assert one_error_line(capsys).startswith(message)
    assert not os.path.exists(tmp_path / "run")


def test_a_workdir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert train_cli.main(["--config", DIGITS, "--workdir", str(tmp_path / "notes.txt")]) == cli.EXIT_USAGE
    assert one_error_line(capsys) == f"error: --workdir {tmp_path / 'notes.txt'} exists and is not a directory"


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(configlib.ConfigError, match="config file not found"):
        train_cli.main(["--config", "missing.py", "--workdir", str(tmp_path), "--debug"])


def test_the_train_command_reports_an_unknown_data_source_in_one_line(tmp_path):
    result = run(train_cmd(DIGITS, str(tmp_path / "run"), "data.train.name=imagenet"), timeout=300)
    assert result.returncode == cli.EXIT_USAGE, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: unknown data source 'imagenet' ({' | '.join(sources.SOURCE_NAMES)})"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("main, args, message", [
    (sample.main, ["--workdir", "r", "--out", "o", "--prompt", "a", "--num", "0"],
     "error: argument --num: must be >= 1, got 0 (see python -m mmjax.sample --help)"),
    (sample.main, ["--workdir", "r", "--out", "o", "--task", "mmu", "--question", "q"],
     "error: --task mmu needs --image"),
    (eval_run.main, ["--workdir", "r", "--out", "o", "--benchmark", "shapes", "--limit", "-5"],
     "error: argument --limit: must be >= 0, got -5"),
    (eval_run.main, ["--workdir", "r", "--out", "o", "--benchmark", "gqa"], "error: --benchmark gqa needs --questions"),
    (tokenize_images.main, ["--workdir", "r", "--images", "i", "--out", "o", "--limit", "-5"],
     "error: argument --limit: must be >= 0, got -5"),
    (train_cli.main, ["--config", DIGITS, "--workdir", "r", "--steps=3"], "error: unrecognised argument '--steps=3'"),
])
def test_argument_errors_are_one_line_and_status_2(capsys, main, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == cli.EXIT_USAGE
    assert one_error_line(capsys).startswith(message)


def test_sample_and_eval_refuse_what_is_not_their_run(tmp_path, capsys):
    assert sample.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "o"), "--prompt", "a"]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path} has no config.json: not a training run directory"
    configlib.write_json(configlib.load_config_file(DIGITS), str(tmp_path / "config.json"))
    assert sample.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "o"), "--prompt", "a"]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path} is a 'classification' run; mmjax.sample serves Show-o runs"
    configlib.write_json(configlib.load_config_file(os.path.join(REPO, "configs/llava/tiny.py")),
                         str(tmp_path / "config.json"))
    assert eval_run.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "o"), "--benchmark", "shapes",
                          "--config.eval.num_exampels=3"]) == 2
    assert one_error_line(capsys).startswith("error: unknown config field 'eval.num_exampels'")


def test_bugs_keep_their_traceback():
    def bug() -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        cli.run_main(bug, debug=False)
    assert cli.exit_status(FileNotFoundError("x")) == cli.EXIT_USAGE


def test_repeated_warnings_are_rate_limited_per_message():
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    handler.addFilter(cli.RepeatFilter())
    logger = logging.getLogger("mmjax.test_cli")
    logger.addHandler(handler)
    try:
        for i in range(2001):
            logger.warning("skipping undecodable record %d", i)
        logger.warning("a different warning")
        logger.warning("already limited %d", 5, extra={"rate_limited": True})
        logger.error("errors always pass")
    finally:
        logger.removeHandler(handler)
    assert seen == ["skipping undecodable record 0", "skipping undecodable record 1",
                    "skipping undecodable record 2 [further repeats of this warning: every 1000th]",
                    "skipping undecodable record 999 [repeated 1000 times]",
                    "skipping undecodable record 1999 [repeated 2000 times]",
                    "a different warning", "already limited 5", "errors always pass"]
