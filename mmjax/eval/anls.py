"""DocVQA and InfographicVQA, scored by ANLS (average normalised Levenshtein similarity).

Official layouts (https://rrc.cvc.uab.es/?ch=17, Single Document VQA and Infographics VQA):
  docvqa   `val_v1.0_withQT.json` / `test_v1.0.json`: `{"data": [{"questionId", "question", "image":
           "documents/<name>.png", "answers" (not in test)}]}`; `--images` is the folder holding `documents/`.
  infovqa  `infographicsVQA_val_v1.0_withQT.json` / `..._test_v1.0.json`: `{"data": [{"questionId", "question",
           "image_local_name", "answers"}]}`; `--images` is the image folder.

ANLS (Biten et al. 2019, the RRC evaluator): answers are compared after lower-casing and collapsing
whitespace; a question scores `max over gold answers of 1 - NL` where `NL = levenshtein / max(len(gold),
len(prediction))` (lengths of the upper-cased strings, a quirk every implementation shares), and 0 when NL
reaches the threshold 0.5; `tests/eval/test_parity.py` compares with the `anls` package. Prompt: the question
and "Answer the question using a single word or phrase." (LLaVA's and lmms-eval's). Writes answers.jsonl and
submission.json (`[{"questionId", "answer"}]`, the RRC server's format for the test split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth, percent
from mmjax.eval.llava_files import answers_file, short_answer_prompt

THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, gold_answers: Sequence[str], threshold: float = THRESHOLD) -> float:
    """The ANLS of one prediction in [0, 1]."""
    pred, best = _norm(prediction), 0.0
    for gold in map(_norm, gold_answers):
        length = max(len(gold.upper()), len(pred.upper()))  # as the reference: "ß".upper() is "SS"
        nl = levenshtein(gold, pred) / length if length else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def score_anls(records: Sequence[Record]) -> dict[str, Any]:
    """`{"anls" (percent), "count"}` of records `{"prediction", "answers"}`."""
    values = [anls(r["prediction"], r["answers"]) for r in records]
    return {"anls": percent(values), "count": len(values)}


def _reader(image_field: str):
    def read(path: str, image_dir: str) -> list[Record]:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
        return [{"question_id": q["questionId"], "text": q["question"], "answers": q.get("answers"),
                 "images": [os.path.join(image_dir, q[image_field])]} for q in data]

    return read


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    rows = [{"questionId": r["question_id"], "answer": r["prediction"]} for r in records]
    (out / "submission.json").write_text(json.dumps(rows), encoding="utf-8")
    return score_anls(records) if has_truth(records, "answers") else {}


BENCHMARKS = {
    "docvqa": Benchmark(_reader("image"), short_answer_prompt, _write_and_score),
    "infovqa": Benchmark(_reader("image_local_name"), short_answer_prompt, _write_and_score),
}
