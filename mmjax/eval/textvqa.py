"""TextVQA: VQA accuracy as the TextVQA server and LLaVA's `m4c_evaluator.py` compute it.

Official layout (https://textvqa.org/dataset): `TextVQA_0.5.1_val.json` / `TextVQA_0.5.1_test.json`, each
`{"data": [{"question_id", "question", "image_id", "answers": [10 strings] (not in test)}]}`, and the images as
`train_images/<image_id>.jpg` (val and train share that folder) or `test_images/<image_id>.jpg`; pass that
folder as `--images`. LLaVA-1.5's 58.2 (val) prompts with the Rosetta OCR tokens: a record's `ocr_tokens`
(the official `TextVQA_Rosetta_OCR_v0.2_val.json` has them per image; LLaVA's `llava_textvqa_val_v051_ocr.jsonl`
carries them in its text, and is read as it is) add the line "Reference OCR token: a, b, c".

Scoring differs from VQAv2's in one way that moves numbers: the EvalAI processor normalises the human answers as
well as the prediction, always. Each distinct human answer scores `min(#other annotators who gave it / 3, 1)`
averaged over the ten leave-one-out subsets; the prediction gets the score of the human answer it equals (0 for
none). Writes answers.jsonl and submission.json (`[{"question_id", "answer"}]`, the EvalAI test format).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmjax.eval import vqa
from mmjax.eval.benchmark import Benchmark, Record, has_truth, percent
from mmjax.eval.llava_files import answers_file, read_llava_questions, short_answer_prompt


def answer_scores(human_answers: Sequence[str]) -> dict[str, float]:
    """Soft score in [0, 1] of each distinct (normalised) human answer: the TextVQA evaluator's table."""
    normalised = [vqa.evalai_normalize(a) for a in human_answers]
    scores = {}
    for candidate in set(normalised):
        matches = sum(a == candidate for a in normalised)
        # leaving annotator i out removes one match exactly when i gave the candidate
        scores[candidate] = sum(min(1.0, (matches - (a == candidate)) / 3.0) for a in normalised) / len(normalised)
    return scores


def textvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against its (usually ten) human answers."""
    if not human_answers:
        raise ValueError("textvqa_accuracy needs at least one human answer")
    return answer_scores(human_answers).get(vqa.evalai_normalize(prediction), 0.0)


def score_textvqa(records: Sequence[Record]) -> dict[str, Any]:
    """`{"accuracy" (percent), "count"}` of records `{"prediction", "answers": [str, ...]}`."""
    hits = [textvqa_accuracy(r["prediction"], r["answers"]) for r in records]
    return {"accuracy": percent(hits), "count": len(hits)}


def read_textvqa(path: str, image_dir: str) -> list[Record]:
    """The official TextVQA JSON (`{"data": [...]}`), or a LLaVA question file (JSONL or JSON list)."""
    with open(path, encoding="utf-8") as f:
        head = f.read(1).strip() or "?"
    if head != "{":
        return read_llava_questions(path, image_dir)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    return [{"question_id": q["question_id"], "text": q["question"], "answers": q.get("answers"),
             "ocr_tokens": q.get("ocr_tokens"), "images": [os.path.join(image_dir, f"{q['image_id']}.jpg")]}
            for q in data]


def textvqa_prompt(record: Record) -> str:
    """LLaVA-1.5's TextVQA prompt: the question, the OCR line when tokens are given, the short-answer suffix."""
    tokens = record.get("ocr_tokens")
    text = record.get("text", "")
    if tokens:
        text = f"{text}\nReference OCR token: {', '.join(tokens)}"
    return short_answer_prompt({"text": text})


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    vqa.write_evalai_submission(records, out / "submission.json")
    if annotations:
        with open(annotations, encoding="utf-8") as f:
            truth = {q["question_id"]: q["answers"] for q in json.load(f)["data"]}
        records = [{**r, "answers": truth[r["question_id"]]} for r in records if r["question_id"] in truth]
    return score_textvqa(records) if has_truth(records, "answers") else {}


BENCHMARKS = {"textvqa": Benchmark(read_textvqa, textvqa_prompt, _write_and_score)}
