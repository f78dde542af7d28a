"""The benchmarks LLaVA ships as question files: VQAv2, GQA, POPE, MME and generic multiple choice.

Question files are LLaVA's JSONL (or a JSON list): `{"question_id", "image": path under --images (or a list),
"text"}` plus the ground-truth fields below; `choices` records have `question` and `options`.

  vqav2    answers.jsonl + submission.json (EvalAI [{question_id, answer}], normalised); scored when records have
           `answers` or `--annotations` names the official annotation file (a val split); `--annotations` naming
           the test2015 question file fills the questions not asked with "" (the server wants them all)
  gqa      answers.jsonl + predictions.json ([{questionId, prediction}] for the official eval.py); `answer`
  pope     answers.jsonl ({question_id, prompt, text}); scored from `label` (+ `category`)
  mme      results/<category>.txt (image, question, answer, prediction: the official calculation.py input)
  choices  answers.jsonl (+ mmbench.tsv when records have `index`); scored from `answer` and `options`
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmjax.eval import choices, mme, pope, vqa
from mmjax.eval.benchmark import Benchmark, Record, has_truth, with_suffix


def read_questions(path: str | os.PathLike) -> list[Record]:
    """JSONL (one record a line) or a JSON list; a malformed file is a DataError naming it."""
    from mmjax.data.sources import DataError

    text = Path(path).read_text(encoding="utf-8").lstrip()
    try:
        return json.loads(text) if text.startswith("[") else vqa.read_jsonl(path)
    except ValueError as e:
        raise DataError(f"question file {os.fspath(path)}: {e}") from e


def read_llava_questions(path: str, image_dir: str) -> list[Record]:
    """LLaVA question records with their `image` names resolved under `image_dir` as `images`."""
    out = []
    for r in read_questions(path):
        names = r.get("image")
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        out.append({**r, "images": [os.path.join(image_dir, n) for n in names]})
    return out


def short_answer_prompt(record: Record) -> str:
    """The question + "Answer the question using a single word or phrase." (LLaVA-1.5's VQA prompt)."""
    from mmjax.data.conversation import SHORT_ANSWER_PROMPT

    return with_suffix(record.get("text", record.get("question", "")), SHORT_ANSWER_PROMPT)


def option_prompt(question: str, options: list[str], hint: str = "") -> str:
    """LLaVA-1.5's multiple-choice prompt: [hint,] question, "A. option" lines, the option-letter instruction."""
    from mmjax.data.conversation import OPTION_LETTER_PROMPT

    lines = [hint] if hint else []
    lines += [question, *(f"{choices.LETTERS[i]}. {opt}" for i, opt in enumerate(options))]
    return with_suffix("\n".join(lines), OPTION_LETTER_PROMPT)


def choices_prompt(record: Record) -> str:
    return option_prompt(record.get("question", record.get("text", "")), list(record.get("options", [])))


def answers_file(records: list[Record], out: Path) -> None:
    """answers.jsonl: LLaVA's answer-file format, one {question_id, prompt, text} per question."""
    vqa.write_jsonl([{"question_id": r["question_id"], "prompt": r["prompt"], "text": r["prediction"],
                      "model_id": r.get("model_id", "")} for r in records], out / "answers.jsonl")


def _vqav2(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    """`annotations` is either the official annotation file of a val split (scored against), or the official
    question file of test2015 (`{"questions": [...]}`): the EvalAI server wants an answer for every one of its
    questions, also in the test-dev phase, so the ones not asked get "" as LLaVA's converter does."""
    answers_file(records, out)
    data = {}
    if annotations:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    question_ids = [q["question_id"] for q in data["questions"]] if "questions" in data else None
    filled = vqa.write_vqav2_submission(records, out / "submission.json", question_ids)
    if "annotations" in data:
        return vqa.score_vqa_files(annotations, out / "submission.json")
    scores = vqa.score_vqa(records) if has_truth(records, "answers") else {}
    return {**scores, "submission_filled": filled} if question_ids is not None else scores


def _gqa(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    vqa.write_gqa_predictions(records, out / "predictions.json")
    return vqa.score_gqa(records) if has_truth(records, "answer") else {}


def _pope(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    pope.write_pope_answers(records, out / "answers.jsonl")
    return pope.score_pope(records) if has_truth(records, "label") else {}


def _mme(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    mme.write_mme_results([{**r, "question": r.get("question", r.get("text", ""))} for r in records],
                          out / "results")
    return mme.score_mme(records) if has_truth(records, "answer") else {}


def _choices(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    if has_truth(records, "index"):
        choices.write_mmbench_predictions(records, out / "mmbench.tsv")
    return choices.score_choices(records) if has_truth(records, "answer") else {}


BENCHMARKS = {
    "vqav2": Benchmark(read_llava_questions, short_answer_prompt, _vqav2),
    "gqa": Benchmark(read_llava_questions, short_answer_prompt, _gqa),
    "pope": Benchmark(read_llava_questions, short_answer_prompt, _pope),
    "mme": Benchmark(read_llava_questions, short_answer_prompt, _mme),
    "choices": Benchmark(read_llava_questions, choices_prompt, _choices),
}
