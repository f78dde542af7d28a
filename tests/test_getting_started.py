"""docs/getting_started.md, followed verbatim: its `# test` blocks run in order in an empty directory.

The page promises that each command's output is the next one's input (tokenizer run -> Show-o run naming it ->
samples -> a question about a sample; LLaVA stage 1 -> stage 2 -> evaluation), with relative paths from the root of
a fresh clone. The test runs exactly the documented commands; the only thing it adds are `--config.<field>=<value>`
overrides (a documented mechanism) that shrink step counts and evaluation sizes, and it then checks that each
output exists and names the run that made it. The directory holds what a clone's root holds for these commands:
`configs/` (linked; the package comes through PYTHONPATH). The Show-o chain runs in the default suite; the LLaVA
chain, another ~90 s of compiling on 2 CPU cores, runs with `-m slow`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run

DOC = os.path.join(REPO, "docs", "getting_started.md")

# Appended to a documented `mmjax.train` command whose --config starts with the key: 2 steps and small evaluations.
TINY = {
    "configs/vq/tiny.py": ["total_steps=2", "batch_size=4", "data.eval.num_records=8", "eval_batch_size=8"],
    "configs/showo/tiny.py": [
        "total_steps=2", *[f"data.{split}.{part}.source.num_records={n}" for split, n in (("train", 32), ("eval", 16))
                           for part in ("t2i", "lm", "mmu")],
        "eval.num_t2i=4", "eval.num_mmu=4", "eval.loss_batches=1", "eval.batch=4", "eval.t2i_steps=2"],
    "configs/llava/tiny.py": ["total_steps=2", "data.eval.num_records=8", "eval.num_examples=8",
                              "eval_batch_size=8"],
}


def documented_commands(markdown: str) -> list[list[str]]:
    """The commands of the ```bash blocks whose first line is `# test`, in page order, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        lines = block.replace("\\\n", " ").splitlines()
        if lines and lines[0].strip() == "# test":
            commands += [shlex.split(line) for line in lines[1:] if line.strip() and not line.startswith("#")]
    return commands


def option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def with_tiny_settings(cmd: list[str]) -> list[str]:
    """The documented command run by this interpreter, tiny overrides appended to training commands."""
    assert cmd[:2] == ["python", "-m"], f"documented commands start with `python -m`: {shlex.join(cmd)}"
    extra = []
    if cmd[2] == "mmjax.train":
        config = option(cmd, "--config")
        extra = next(v for k, v in TINY.items() if config.startswith(k))
    return [sys.executable, *cmd[1:], *[f"--config.{o}" for o in extra]]


def test_documented_commands_chain():
    """Each run, sample or eval command reads a directory or image that an earlier command of the page wrote."""
    commands = documented_commands(Path(DOC).read_text(encoding="utf-8"))
    assert [c[2] for c in commands] == ["mmjax.train", "mmjax.train", "mmjax.sample", "mmjax.sample",
                                        "mmjax.train", "mmjax.train", "mmjax.eval"]
    written: list[str] = []
    for cmd in commands:
        reads = [v for v in (option(cmd, "--config.tokenizer.workdir"), option(cmd, "--config.init.workdir"),
                             option(cmd, "--image")) if v]
        if cmd[2] != "mmjax.train":
            reads.append(option(cmd, "--workdir"))
        for path in reads:
            assert not os.path.isabs(path) and any(path.startswith(w) for w in written), (path, written)
        written.append(option(cmd, "--workdir") if cmd[2] == "mmjax.train" else option(cmd, "--out"))
    assert all(not os.path.isabs(w) for w in written)
    assert all(any(option(cmd, "--config").startswith(k) for k in TINY) for cmd in commands if cmd[2] == "mmjax.train")


def follow(root, part: str) -> None:
    """Runs the page's commands of one chain (`showo` or `llava`: whether they name a runs/llava_tiny run) in
    order, in `root`, which holds what a fresh clone's root holds for them."""
    os.symlink(os.path.join(REPO, "configs"), root / "configs")
    for cmd in documented_commands(Path(DOC).read_text(encoding="utf-8")):
        if ("llava" if option(cmd, "--workdir").startswith("runs/llava") else "showo") == part:
            done = run(with_tiny_settings(cmd), cwd=str(root), timeout=600)
            assert done.returncode == 0, f"{shlex.join(cmd)}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def showo_followed(tmp_path_factory):
    root = tmp_path_factory.mktemp("clone")
    follow(root, "showo")
    return root


@pytest.fixture(scope="module")
def llava_followed(tmp_path_factory):
    root = tmp_path_factory.mktemp("clone")
    follow(root, "llava")
    return root


def final_line(run_dir) -> dict:
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r.get("final")][-1]


def test_show_o_chain(showo_followed):
    """Show-o trained on the documented tokenizer run; samples and an answer drawn from the Show-o run."""
    followed = showo_followed
    tok, showo = followed / "runs" / "vq_tiny4", followed / "runs" / "showo_tiny"
    assert final_line(tok)["step"] == 2 and os.listdir(tok / "checkpoints") == ["2"]
    config = json.loads((showo / "config.json").read_text())
    assert config["tokenizer"]["workdir"] == "runs/vq_tiny4" and config["task"] == "showo"
    assert {"t2i_match", "mmu_accuracy"} <= set(final_line(showo))
    images = followed / "samples" / "red_circle"
    assert sorted(os.listdir(images)) == ["grid.png", *[f"sample_{i}.png" for i in range(4)]]
    answers = [json.loads(line) for line in (followed / "samples" / "answers" / "answers.jsonl").open()]
    assert [(a["image"], a["question"]) for a in answers] == [("samples/red_circle/sample_0.png",
                                                              "What color is the shape?")]
    assert isinstance(answers[0]["answer"], str)


@pytest.mark.slow  # ~90 s more on 2 CPU cores: `make test` stays within its budget with the Show-o chain alone
def test_llava_chain(llava_followed):
    """Stage 2 initialised from the stage-1 run; the evaluation answered the stage-2 run's held-out questions."""
    followed = llava_followed
    s2 = followed / "runs" / "llava_tiny" / "s2"
    assert json.loads((s2 / "config.json").read_text())["init"]["workdir"] == "runs/llava_tiny/s1"
    assert final_line(followed / "runs" / "llava_tiny" / "s1")["step"] == 2
    results = followed / "results" / "llava_tiny"
    scores = json.loads((results / "scores.json").read_text())
    assert scores["benchmark"] == "shapes" and scores["answered"] == scores["count"] == 8
    answers = [json.loads(line) for line in (results / "answers.jsonl").open()]
    assert len(answers) == 8 and {a["model_id"] for a in answers} == {"s2"}
