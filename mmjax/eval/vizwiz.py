"""VizWiz-VQA: questions from blind users, many of them unanswerable from the photo.

Official layout (https://vizwiz.org/tasks-and-datasets/vqa/): `Annotations/val.json` / `test.json`, each a list
of `{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer", "answer_confidence"}] x10,
"answer_type", "answerable"}` (test: image and question only), with the images in `val/` / `test/`; pass that
folder as `--images`. The question id is the image name (one question per image).

LLaVA-1.5 (50.0 on test-dev) prompts with "When the provided information is insufficient, respond with
'Unanswerable'." before the short-answer suffix; "unanswerable" is an ordinary answer class of the ground truth.
Scoring on val is VQAv2's accuracy (the VizWiz evaluation is the VQA code), with the official per
`answer_type` breakdown ("unanswerable", "yes/no", "number", "other"). Writes answers.jsonl and
submission.json (`[{"image", "answer"}]`, answers through the EvalAI processor: the test server's format).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmjax.eval import vqa
from mmjax.eval.benchmark import Benchmark, Record, has_truth, with_suffix
from mmjax.eval.llava_files import answers_file

UNANSWERABLE_PROMPT = "When the provided information is insufficient, respond with 'Unanswerable'."


def read_vizwiz(path: str, image_dir: str) -> list[Record]:
    """Records of an official VizWiz annotation file (a JSON list)."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    return [{"question_id": q["image"], "text": q["question"], "answers": q.get("answers"),
             "answer_type": q.get("answer_type"), "images": [os.path.join(image_dir, q["image"])]} for q in rows]


def vizwiz_prompt(record: Record) -> str:
    from mmjax.data.conversation import SHORT_ANSWER_PROMPT

    return with_suffix(with_suffix(record.get("text", ""), UNANSWERABLE_PROMPT), SHORT_ANSWER_PROMPT)


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    vqa.write_evalai_submission(records, out / "submission.json", id_key="image")
    if not has_truth(records, "answers"):
        return {}
    scores = vqa.score_vqa(records)
    scores.pop("per_question_type")
    return scores


BENCHMARKS = {"vizwiz": Benchmark(read_vizwiz, vizwiz_prompt, _write_and_score)}
