"""`python -m mmjax.eval` from the official files to scores.json: the registry, image decoding and skipping,
prompts and writers (a stub answerer), and one tiny LLaVA run answering a new benchmark's questions."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mmjax.eval import answerers, benchmark
from mmjax.eval import run as eval_run


class EchoAnswerer:
    """Answers from a table keyed by the prompt's first line; records what it was asked."""

    needs_image = False

    def __init__(self, table):
        self.table, self.asked = table, []

    def answer(self, items, batch_size, max_new_tokens):
        self.asked += [(text, [im.shape for im in images], batch_size, max_new_tokens) for text, images in items]
        return [self.table[text.split("\n")[0]] for text, _ in items]


def test_every_benchmark_is_registered_with_its_module():
    for name in benchmark.MODULES:
        bench = benchmark.get(name)
        assert callable(bench.read) and callable(bench.prompt) and bench.max_new_tokens > 0
    assert set(eval_run.BENCHMARKS) == {*benchmark.MODULES, "shapes"}
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; known: ai2d"):
        benchmark.get("nope")


def test_textvqa_files_to_scores_with_skips(tmp_path, monkeypatch):
    for name in ("a", "b"):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    data = {"data": [{"question_id": i, "question": q, "image_id": im, "answers": ["coke"] * 10}
                     for i, (q, im) in enumerate([("brand?", "a"), ("drink?", "b"), ("bad?", "c"), ("gone?", "z")])]}
    (tmp_path / "val.json").write_text(json.dumps(data))
    stub = EchoAnswerer({"brand?": "Coke.", "drink?": "pepsi"})
    monkeypatch.setattr(answerers, "load_answerer", lambda workdir, overrides, **kw: (stub, 3))
    out = tmp_path / "out"
    assert eval_run.main(["--workdir", str(tmp_path), "--benchmark", "textvqa", "--questions",
                          str(tmp_path / "val.json"), "--images", str(tmp_path), "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores == {"benchmark": "textvqa", "answered": 2, "accuracy": 50.0, "count": 2,
                      "skipped": {"ImageDecodeError": 1, "MissingImageError": 1}}
    assert stub.asked[0] == ("brand?\nAnswer the question using a single word or phrase.", [(6, 8, 3)], 3, 16)
    assert json.loads((out / "submission.json").read_text())[0] == {"question_id": 0, "answer": "coke"}
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert answers[1] == {"question_id": 1, "prompt": stub.asked[1][0], "text": "pepsi",
                          "model_id": tmp_path.name}


def test_show_o_runs_skip_questions_without_an_image(tmp_path, monkeypatch):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "Hi?", "answer": "x"}) + "\n")
    stub = EchoAnswerer({})
    stub.needs_image = True
    monkeypatch.setattr(answerers, "load_answerer", lambda workdir, overrides, **kw: (stub, 1))
    assert eval_run.main(["--workdir", str(tmp_path), "--benchmark", "gqa", "--questions", str(tmp_path / "q.jsonl"),
                          "--out", str(tmp_path / "out")]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["answered"] == 0 and scores["skipped"] == {"NoImage": 1}


def test_bad_files_and_runs_are_one_error_line(tmp_path, capsys):
    def error(questions):
        assert eval_run.main(["--workdir", str(tmp_path), "--benchmark", "vizwiz", "--questions", str(questions),
                              "--out", str(tmp_path / "o")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    # LLaVA's JSONL where VizWiz's official JSON list belongs, then a record without its question
    (tmp_path / "q.jsonl").write_text('{"question_id": 1}\n{"question_id": 2}\n')
    assert error(tmp_path / "q.jsonl").startswith(f"error: {tmp_path / 'q.jsonl'}: not vizwiz's official layout "
                                                  "(JSONDecodeError: Extra data")
    (tmp_path / "val.json").write_text(json.dumps([{"image": "a.jpg"}]))
    assert error(tmp_path / "val.json") == (f"error: {tmp_path / 'val.json'}: not vizwiz's official layout "
                                            "(KeyError: 'question'); see mmjax.eval.vizwiz")
    (tmp_path / "val.json").write_text(json.dumps([{"image": "a.jpg", "question": "What?"}]))
    (tmp_path / "config.json").write_text(json.dumps({"task": "lm"}))
    assert "task is 'lm'; mmjax.eval answers with 'llava' or 'showo' runs" in error(tmp_path / "val.json")


def test_every_benchmark_has_its_command_in_the_paper_tables_page():
    from tests.helpers import REPO

    with open(os.path.join(REPO, "docs", "paper_tables.md"), encoding="utf-8") as f:
        page = f.read()
    assert not [name for name in benchmark.MODULES if f"--benchmark {name} " not in page]


def test_a_tiny_llava_run_answers_docvqa_files(tmp_path):
    """A real (random-weight) tiny LLaVA run through the DocVQA reader, prompt, batched KV-cache answers, ANLS."""
    import flax.linen as nn
    import jax
    import orbax.checkpoint as ocp
    from flax.core import unfreeze

    from mmjax import configlib
    from mmjax.train.tasks.llava import LlavaTask
    from tests.helpers import REPO

    config = configlib.load_config_file(os.path.join(REPO, "configs/llava/tiny.py:stage=2,steps=1"))
    # random weights of the right shapes, without running (or compiling) the initialisers
    task = LlavaTask(config)
    shapes = nn.unbox(unfreeze(jax.eval_shape(task.init, jax.random.key(0), task.example_batch(1))["params"]))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(s.dtype), shapes)
    run = tmp_path / "run"
    run.mkdir()
    configlib.write_json(config, str(run / "config.json"))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(run / "checkpoints" / "1" / "state"), {"params": params})
    (tmp_path / "documents").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / "documents" / f"{i}.png")
    data = {"data": [{"questionId": i, "question": f"Total {i}?", "image": f"documents/{i}.png",
                      "answers": ["42"]} for i in range(3)]}
    (tmp_path / "val.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert eval_run.main(["--workdir", str(run), "--benchmark", "docvqa", "--questions", str(tmp_path / "val.json"),
                          "--images", str(tmp_path), "--out", str(out), "--batch-size", "3",
                          "--max-new-tokens", "3"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["answered"] == 3 and scores["count"] == 3 and 0.0 <= scores["anls"] <= 100.0
    submission = json.loads((out / "submission.json").read_text())
    assert [row["questionId"] for row in submission] == [0, 1, 2]
    assert all(isinstance(row["answer"], str) for row in submission)


def test_show_o_answerer_feeds_the_first_image_eval_batch_at_a_time():
    class Task:
        config = SimpleNamespace(eval=SimpleNamespace(batch=2))

        def mmu_inputs(self, model_state, records):
            return np.stack([r["image"][0, 0] for r in records])

        def answer(self, params, model_state, inputs, questions):
            return [f"{q}:{int(v[0])}" for q, v in zip(questions, inputs)]

    image = [np.full((2, 2, 3), i, np.uint8) for i in range(3)]
    items = [("a", [image[0], image[2]]), ("b", [image[1]]), ("c", [image[2]])]
    assert answerers.ShowoAnswerer(Task(), None, None).answer(items, 99, 5) == ["a:0", "b:1", "c:2"]


@pytest.mark.slow
@pytest.mark.parametrize("clip", [0, 1])
def test_show_o_runs_answer_textvqa_files(tmp_path, clip):
    """Random-weight tiny Show-o runs (discrete image tokens, and CLIP-ViT features) through the TextVQA reader
    and batched KV-cache MMU answers (about 30 s / 100 s on a busy 2-core CPU, hence slow)."""
    import flax.linen as nn
    import jax
    import orbax.checkpoint as ocp
    from flax.core import unfreeze

    from mmjax import configlib
    from mmjax.train.tasks import make_task
    from tests.helpers import REPO
    from tests.train.test_showo_task import write_tokenizer_run

    write_tokenizer_run(str(tmp_path / "vq"))
    config = configlib.load_config_file(os.path.join(
        REPO, f"configs/showo/tiny.py:width=64,layers=2,records=256,clip={clip},tokenizer={tmp_path / 'vq'}"))
    task = make_task(config)
    shapes = nn.unbox(unfreeze(jax.eval_shape(task.init, jax.random.key(0), task.example_batch(1))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(s.dtype), shapes["params"])
    frozen = task.pretrained_variables()
    model_state = {k: frozen[k] for k in ("tokenizer", "vision_tower") if k in frozen}
    run = tmp_path / "run"
    run.mkdir()
    configlib.write_json(config, str(run / "config.json"))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(run / "checkpoints" / "1" / "state"),
                   {"params": params, "model_state": jax.device_get(model_state)})
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.jpg")
    data = {"data": [{"question_id": i, "question": f"what {i}?", "image_id": str(i), "answers": ["red"] * 10}
                     for i in range(3)]}
    (tmp_path / "val.json").write_text(json.dumps(data))
    assert eval_run.main(["--workdir", str(run), "--benchmark", "textvqa", "--questions", str(tmp_path / "val.json"),
                          "--images", str(tmp_path), "--out", str(tmp_path / "out"), "--max-new-tokens", "3",
                          "--batch-size", "2"]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["answered"] == 3 and scores["count"] == 3
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [0, 1, 2] and all(isinstance(a["text"], str) for a in answers)


def test_vqav2_submission_covers_every_test2015_question(tmp_path):
    from mmjax.eval import llava_files

    (tmp_path / "test2015.json").write_text(json.dumps({"questions": [{"question_id": q} for q in (5, 6, 7)]}))
    records = [{"question_id": 6, "prompt": "", "prediction": "Two"}]
    scores = llava_files.BENCHMARKS["vqav2"].write_and_score(records, tmp_path, str(tmp_path / "test2015.json"))
    assert scores == {"submission_filled": 2}
    assert json.loads((tmp_path / "submission.json").read_text()) == [
        {"question_id": 5, "answer": ""}, {"question_id": 6, "answer": "2"}, {"question_id": 7, "answer": ""}]
