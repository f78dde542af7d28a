"""MMMU: college-level questions, multiple-choice and open, scored with MMMU's own answer parsing.

Official layout: the `MMMU/MMMU` dataset release, one folder per subject holding
`validation-00000-of-00001.parquet` (and `dev-` / `test-` files) with the columns `id, question, options` (a
Python list written as a string), `image_1` ... `image_7` (`{"bytes", "path"}`, unused ones null), `answer`,
`question_type` ("multiple-choice" / "open"), `subfield`. Pass one parquet file, a folder (every `*.parquet`
beneath it) or a glob such as `'MMMU/*/validation-*.parquet'` as `--questions`; images are inside the files.
Published MMMU numbers are on the validation split (900 questions).

Prompt: MMMU's LLaVA-1.5 configuration: the question, the options as "(A) option" lines, a blank line and
"Answer with the option's letter from the given choices directly." (open: the question and "Answer the question
using a single word or phrase."). `<image k>` references stay in the text; the images follow in order.

Parsing (eval_utils.py of the MMMU repository, quirks kept): multiple choice takes a bracketed "(B)", else a
bare " B ", else -- in answers longer than five words -- an option's text; several matches: the one that
occurs last; none: a random letter (seeded with 42, as the reference seeds its global generator). Open answers
are cut to the shortest tail after "could be / so / is / thus / therefore / final / answer / result" (and "="
in the last line) of each line; numbers found in them are added; each is normalised (floats rounded to 2
places, strings lower-cased, a one-character string padded with a space) and the question is right when a
normalised gold answer equals a number or is a substring of a string. Writes answers.jsonl and
submission.json (`{id: letter or answer}`, the input of MMMU's `main_eval_only.py` and its test server).
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth, parquet_rows, percent, with_suffix
from mmjax.eval.choices import LETTERS
from mmjax.eval.llava_files import answers_file

SEED = 42
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # 1.5e-3
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)


def parse_choice(response: str, options: Sequence[str], rng: random.Random) -> str:
    """The letter MMMU reads in a multiple-choice response (see the module doc)."""
    letters = LETTERS[: len(options)]
    for char in ",.!?;:'":
        response = response.strip(char)
    padded = f" {response} "
    found = [c for c in letters if f"({c})" in padded]
    bracketed, by_text = bool(found), False
    if not found:
        found = [c for c in letters if f" {c} " in padded]
    if not found and len(padded.split()) > 5:
        found = [c for c, opt in zip(letters, options) if opt.lower() in padded.lower()]
        by_text = bool(found)
    if not found:
        return rng.choice(letters)
    if len(found) == 1:
        return found[0]
    if by_text:
        positions = [padded.lower().rfind(options[letters.index(c)].lower()) for c in found]
    else:
        positions = [padded.rfind(f"({c})" if bracketed else f" {c} ") for c in found]
    return found[positions.index(max(positions))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(text: str) -> list[str | float]:
    """MMMU's normalize_str: a number -> [float rounded to 2 places]; else lower-cased, a single character as
    [" c", "c "] so it cannot match inside any word."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
    # lower-cased BEFORE the split, so the reference's sentence split (". " before a capital) never fires
    response = response.strip().strip(".").lower()
    lines = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, line in enumerate(lines):
        indicators = _KEY_INDICATORS + (("=",) if i == len(lines) - 1 else ())
        shortest = ""
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):  # an empty tail is replaced by the next one
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """The normalised candidate answers MMMU reads in an open response."""
    keys = _key_responses(response)
    candidates = list(keys)
    for key in keys:
        for pattern in _NUMBER_PATTERNS:
            candidates += pattern.findall(key)
    return list({value for c in candidates for value in normalize(c)})


def open_correct(gold: str | Sequence[str], candidates: Sequence[str | float]) -> bool:
    golds = [value for g in ([gold] if isinstance(gold, str) else gold) for value in normalize(g)]
    for c in candidates:
        if isinstance(c, str):
            if any(isinstance(g, str) and g in c for g in golds):
                return True
        elif c in golds:
            return True
    return False


def _gold(answer: Any) -> str | list[str]:
    """Open answers are sometimes a list written as a string ("['24', '24.0']")."""
    if isinstance(answer, str) and answer.startswith("["):
        try:
            return [str(a) for a in ast.literal_eval(answer)]
        except (ValueError, SyntaxError):
            return answer
    return answer


def parse_predictions(records: Sequence[Record]) -> list[str | list[str | float]]:
    """Each record's parsed prediction (a letter, or the open candidates), drawing random letters in order."""
    rng = random.Random(SEED)
    return [parse_choice(r["prediction"], r["options"], rng) if r["question_type"] == "multiple-choice"
            else parse_open(r["prediction"]) for r in records]


def score_mmmu(records: Sequence[Record]) -> dict[str, Any]:
    """Micro-averaged accuracy (percent), also per subject (the id's middle part) and per question type."""
    hits, by_subject, by_type = [], defaultdict(list), defaultdict(list)
    for r, parsed in zip(records, parse_predictions(records)):
        gold = _gold(r["answer"])
        hit = parsed in gold if r["question_type"] == "multiple-choice" and isinstance(gold, list) else (
            parsed == gold if r["question_type"] == "multiple-choice" else open_correct(gold, parsed))
        hits.append(hit)
        by_subject[str(r["question_id"]).split("_", 1)[-1].rsplit("_", 1)[0]].append(hit)
        by_type[r["question_type"]].append(hit)
    return {"accuracy": percent(hits), "count": len(hits),
            "per_subject": {k: percent(v) for k, v in sorted(by_subject.items())},
            "per_question_type": {k: percent(v) for k, v in sorted(by_type.items())}}


def read_mmmu(path: str, image_dir: str) -> list[Record]:
    """Records of MMMU parquet files (images embedded; `image_dir` is unused)."""
    records = []
    for row in parquet_rows(path):
        options = ast.literal_eval(row["options"]) if isinstance(row["options"], str) else row["options"]
        images = [row[f"image_{i}"]["bytes"] for i in range(1, 8) if row.get(f"image_{i}")]
        records.append({"question_id": row["id"], "text": row["question"], "options": list(options),
                        "question_type": row["question_type"], "answer": row.get("answer"), "images": images})
    return records


def mmmu_prompt(record: Mapping[str, Any]) -> str:
    from mmjax.data.conversation import OPTION_LETTER_PROMPT, SHORT_ANSWER_PROMPT

    if record["question_type"] != "multiple-choice":
        return with_suffix(record["text"], SHORT_ANSWER_PROMPT)
    options = "".join(f"({LETTERS[i]}) {opt}\n" for i, opt in enumerate(record["options"]))
    return f"{record['text']}\n{options}\n{OPTION_LETTER_PROMPT}"


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    submission = {r["question_id"]: (p if isinstance(p, str) else r["prediction"])
                  for r, p in zip(records, parse_predictions(records))}
    (out / "submission.json").write_text(json.dumps(submission, indent=1), encoding="utf-8")
    # the test split's answer column holds "?" (hidden)
    truth = has_truth(records, "answer") and all(r["answer"] != "?" for r in records)
    return score_mmmu(records) if truth else {}


BENCHMARKS = {"mmmu": Benchmark(read_mmmu, mmmu_prompt, _write_and_score)}
