"""ChartQA: questions about charts, scored by relaxed accuracy (numbers within 5% count as right).

Official layout (github.com/vis-nlp/ChartQA): `ChartQA Dataset/test/test_human.json` and
`test_augmented.json`, each `[{"imgname", "query", "label"}]`, images in `test/png/` (pass it as `--images`).
`--questions` is one of the files or the `test/` folder (both files: the 2,500 questions OneVision's 61.4 is
over; `per_split` gives each file's accuracy).

Relaxed correctness (pix2struct's `relaxed_correctness`, which lmms-eval scores with): when the gold answer
and the prediction both read as floats (a trailing "%" divides by 100) and the gold one is non-zero, the
prediction is right within 5% of it relative; otherwise it must equal the gold answer case-insensitively.
Prompt: the question and "Answer the question with a single word." (lmms-eval's ChartQA prompt). Writes
answers.jsonl.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth, percent, with_suffix
from mmjax.eval.llava_files import answers_file

MAX_RELATIVE_CHANGE = 0.05
CHARTQA_PROMPT = "Answer the question with a single word."
SPLITS = ("test_human", "test_augmented")


def _to_float(text: str) -> float | None:
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    """Whether `prediction` is within the relative tolerance of a numeric `target` (else equal to it)."""
    pred, gold = _to_float(prediction), _to_float(target)
    if pred is not None and gold:
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(records: list[Record]) -> dict[str, Any]:
    """`{"relaxed_accuracy", "count", "per_split"}` in percent of records `{"prediction", "answer", "split"?}`."""
    hits: dict[str, list[bool]] = {}
    for r in records:
        hits.setdefault(r.get("split", ""), []).append(relaxed_correct(r["prediction"], r["answer"]))
    everything = [h for v in hits.values() for h in v]
    return {"relaxed_accuracy": percent(everything), "count": len(everything),
            "per_split": {k: percent(v) for k, v in sorted(hits.items()) if k}}


def read_chartqa(path: str, image_dir: str) -> list[Record]:
    files = [os.path.join(path, f"{s}.json") for s in SPLITS] if os.path.isdir(path) else [path]
    records = []
    for file in files:
        split = os.path.splitext(os.path.basename(file))[0]
        with open(file, encoding="utf-8") as f:
            for i, q in enumerate(json.load(f)):
                records.append({"question_id": f"{split}_{i}", "split": split, "text": q["query"],
                                "answer": q.get("label"), "images": [os.path.join(image_dir, q["imgname"])]})
    return records


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    return score_chartqa(records) if has_truth(records, "answer") else {}


BENCHMARKS = {"chartqa": Benchmark(read_chartqa, lambda r: with_suffix(r["text"], CHARTQA_PROMPT), _write_and_score)}
