"""MMBench and MMBench-CN with circular evaluation.

Official layout (https://github.com/open-compass/MMBench): one TSV per split, e.g. `mmbench_dev_20230712.tsv`
(LLaVA-1.5's "MMBench" column) or `mmbench_dev_cn_20231003.tsv` ("MMBench-CN"), with the columns `index,
question, hint, A, B, C, D, answer` (hidden in test), `category, l2-category` and `image` (base64); no
`--images` needed. Options beyond the question's last one are empty.

Circular evaluation, as LLaVA's `model_vqa_mmbench.py --all-rounds` asks and the MMBench evaluator scores: a
question with N options is asked N times, the options rotated one place further each round (A B C D, B C D A,
...), and counts as right only when every round is. Prompt: the hint (when given), the question, "A. option"
lines, then "Answer with the option's letter from the given choices directly." (MMBench-CN: "请直接回答选项字母。").
Answers are read with `mmjax.eval.choices.extract_option_letter`; the official evaluator additionally asks a
GPT model to match answers it cannot parse, which a letter-answering model does not need (`failed` counts them).

Writes answers.jsonl and submission.tsv: one row per question and round with the options as asked, its index
`index + round * 1000000` (the evaluator's numbering of circular copies) and the `prediction` letter; convert
it to .xlsx (`pandas.read_csv(f, sep="\\t").to_excel(...)`) for the MMBench server.
"""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth, with_suffix
from mmjax.eval.choices import LETTERS, extract_option_letter, score_choices
from mmjax.eval.llava_files import answers_file

ROUND_OFFSET = 1_000_000
PROMPTS = {"mmbench": "Answer with the option's letter from the given choices directly.",
           "mmbench_cn": "请直接回答选项字母。"}


def _missing(value: str | None) -> bool:
    """An empty TSV cell; pandas-written files may hold "nan" there."""
    return value is None or value.strip() in ("", "nan")


def circular_rounds(row: dict[str, str]) -> list[Record]:
    """The rounds of one TSV row: options rotated left by the round number, the answer letter following."""
    options = []
    for letter in "ABCDEFGHI":  # the options run up to the first empty one (LLaVA's get_options)
        if _missing(row.get(letter)):
            break
        options.append(row[letter])
    answer = row.get("answer", "").strip()
    rounds = []
    for k in range(len(options)):
        rotated = options[k:] + options[:k]
        truth = LETTERS[(LETTERS.index(answer) - k) % len(options)] if answer in LETTERS[: len(options)] else None
        rounds.append({"question_id": f"{row['index']}_{k}", "index": int(row["index"]), "round": k,
                       "text": row["question"], "hint": row.get("hint", ""), "options": rotated, "answer": truth,
                       "category": row.get("category"), "l2-category": row.get("l2-category")})
    return rounds


def read_mmbench(path: str, image_dir: str) -> list[Record]:
    """Every round of every question of an MMBench TSV (images decoded from the `image` column)."""
    csv.field_size_limit(sys.maxsize)  # the base64 images exceed csv's default field limit
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            image = base64.b64decode(row["image"]) if row.get("image") else None
            records += [{**r, "images": [image] if image else []} for r in circular_rounds(row)]
    return records


def _prompt(suffix: str):
    def prompt(record: Record) -> str:
        lines = [] if _missing(record.get("hint")) else [record["hint"]]
        lines += [record["text"], *(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(record["options"]))]
        return with_suffix("\n".join(lines), suffix)

    return prompt


def score_mmbench(records: list[Record]) -> dict[str, Any]:
    """Circular accuracy (percent) over questions (`index`), with per-category accuracy; plus the accuracy of
    round 0 alone (`vanilla_accuracy`), the single-pass number some tables quote."""
    scores = score_choices(records, group_key="index")
    scores["vanilla_accuracy"] = score_choices([r for r in records if r["round"] == 0])["accuracy"]
    return scores


def write_submission(records: list[Record], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                         "prediction"])
        for r in records:
            options = (r["options"] + ["", "", "", ""])[:4]
            letter = extract_option_letter(r["prediction"], options=r["options"])
            writer.writerow([r["index"] + r["round"] * ROUND_OFFSET, r["text"], r.get("hint", ""), *options,
                             r.get("answer") or "", r.get("category") or "", r.get("l2-category") or "",
                             letter or r["prediction"].strip()])


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    write_submission(records, out / "submission.tsv")
    return score_mmbench(records) if has_truth(records, "answer") else {}


BENCHMARKS = {name: Benchmark(read_mmbench, _prompt(suffix), _write_and_score) for name, suffix in PROMPTS.items()}
