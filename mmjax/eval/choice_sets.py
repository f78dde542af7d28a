"""Single-pass multiple-choice benchmarks: SEED-Bench (image), ScienceQA-IMG and AI2D.

All three are prompted like LLaVA-1.5 (and lmms-eval's AI2D task): [context,] question, "A. option" lines,
"Answer with the option's letter from the given choices directly.", and scored by option-letter match
(`mmjax.eval.choices`; `failed` counts answers naming no option). Official layouts:

  seed       `SEED-Bench.json` (github.com/AILab-CVC/SEED-Bench): `{"questions": [{"question_id", "question",
             "choice_a".."choice_d", "answer": letter, "data_id", "data_type", "question_type_id"}],
             "question_type": {name: id}}`; `--images` is `SEED-Bench-image/` (file `<data_id>`, `.jpg` added
             when it has no extension). Only `data_type == "image"` questions (LLaVA-1.5's "SEED" column:
             the 14,233 image questions); per-dimension accuracy in `per_category`.
  scienceqa  `problems.json` (github.com/lupantech/ScienceQA): `{pid: {"question", "choices", "answer": index,
             "hint", "image": "image.png" | null, "split", "subject"}}`; `--images` is the folder holding
             `test/<pid>/image.png`. Only test questions with an image (SQA-IMG, 2,017); the hint is the
             context line "Context: ...".
  ai2d       the `lmms-lab/ai2d` parquet release lmms-eval scores OneVision on (`question`, `options`, `answer`:
             the index as a string, `image`); a file, folder or glob as `--questions`.

Each writes answers.jsonl (LLaVA's answer file, with the extracted letter as `choice`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth, parquet_rows
from mmjax.eval.choices import LETTERS, extract_option_letter, score_choices
from mmjax.eval.llava_files import option_prompt
from mmjax.eval.vqa import write_jsonl


def read_seed(path: str, image_dir: str) -> list[Record]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    names = {v: k for k, v in data.get("question_type", {}).items()}
    records = []
    for q in data["questions"]:
        if q.get("data_type", "image") != "image":
            continue
        image = q["data_id"] if os.path.splitext(q["data_id"])[1] else q["data_id"] + ".jpg"
        records.append({"question_id": q["question_id"], "text": q["question"],
                        "options": [q[f"choice_{c}"] for c in "abcd"], "answer": q.get("answer"),
                        "category": names.get(q.get("question_type_id"), q.get("question_type_id")),
                        "images": [os.path.join(image_dir, image)]})
    return records


def read_scienceqa(path: str, image_dir: str) -> list[Record]:
    with open(path, encoding="utf-8") as f:
        problems = json.load(f)
    return [{"question_id": pid, "text": p["question"], "options": list(p["choices"]), "answer": p.get("answer"),
             "hint": p.get("hint") or "", "category": p.get("subject"),
             "images": [os.path.join(image_dir, p["split"], pid, p["image"])]}
            for pid, p in problems.items() if p.get("split") == "test" and p.get("image")]


def read_ai2d(path: str, image_dir: str) -> list[Record]:
    return [{"question_id": i, "text": row["question"], "options": list(row["options"]),
             "answer": int(row["answer"]) if row.get("answer") not in (None, "") else None,
             "images": [row["image"]["bytes"]] if row.get("image") else []} for i, row in enumerate(parquet_rows(path))]


def choice_prompt(record: Record) -> str:
    hint = f"Context: {record['hint']}" if record.get("hint") else ""
    return option_prompt(record["text"], record["options"], hint)


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    rows = []
    for r in records:
        letter = extract_option_letter(r["prediction"], options=r["options"])
        rows.append({"question_id": r["question_id"], "prompt": r["prompt"], "text": r["prediction"],
                     "choice": letter, "options": {LETTERS[i]: o for i, o in enumerate(r["options"])}})
    write_jsonl(rows, out / "answers.jsonl")
    return score_choices(records) if has_truth(records, "answer") else {}


BENCHMARKS = {
    "seed": Benchmark(read_seed, choice_prompt, _write_and_score),
    "scienceqa": Benchmark(read_scienceqa, choice_prompt, _write_and_score),
    "ai2d": Benchmark(read_ai2d, choice_prompt, _write_and_score),
}
