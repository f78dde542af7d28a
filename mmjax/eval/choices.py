"""Multiple-choice scoring (ScienceQA, MMBench, SEED): option-letter extraction and match.

Models are prompted with "Answer with the option's letter from the given choices directly.", so a good answer
is "B". The extractor also accepts the usual near-misses ("B.", "(B)", "B. a cat", "The answer is B.") and,
when the option texts are given, an answer that repeats exactly one option's text. Anything else counts as
failed (wrong), and the number of failures is reported so a prompt-format regression is visible, not silent.
Scores are percentages.
"""

from __future__ import annotations

import csv
import os
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LETTERS = string.ascii_uppercase

_BARE = re.compile(r"^\(?([A-Z])\)?[.:)]?$")  # "B", "B.", "(B)", "B)", "B:"
_LEADING = re.compile(r"^\(?([A-Z])(?:\)|[.:)]\s)")  # "B. a cat", "(B) a cat", "B) a cat", "B: a cat"
_ANSWER_IS = re.compile(r"\banswer(?: is|:)\s*:?\s*\(?([A-Z])\b\)?")  # "The answer is B.", "Answer: (B)"


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def extract_option_letter(
    text: str, num_options: int | None = None, options: Sequence[str] | None = None
) -> str | None:
    """The option letter an answer names, or None when it names none (or an out-of-range letter).

    Rules in order: a bare letter; a letter opening the answer followed by ".", ")" or ":"; "answer is X" /
    "answer: X" (case-insensitive, must occur exactly once like LLaVA's ScienceQA rule); the answer equal to
    exactly one option's text. ``num_options`` (default ``len(options)``) bounds the valid letters.
    """
    if num_options is None:
        num_options = len(options) if options is not None else len(LETTERS)
    valid = LETTERS[:num_options]
    stripped = text.strip()
    letter = None
    for pattern in (_BARE, _LEADING):
        m = pattern.match(stripped)
        if m:
            letter = m.group(1)
            break
    if letter is None:
        found = _ANSWER_IS.findall(re.sub(r"(?i)\banswer\b", "answer", stripped))
        if len(found) == 1:
            letter = found[0]
    if letter is None and options is not None:
        target = _normalise_text(stripped)
        same = [i for i, opt in enumerate(options) if _normalise_text(opt) == target]
        if len(same) == 1:
            letter = LETTERS[same[0]]
    return letter if letter is not None and letter in valid else None


def _as_letter(answer: str | int) -> str:
    """Ground truth as a letter: ScienceQA stores the index of the right choice, MMBench the letter."""
    if isinstance(answer, int):
        return LETTERS[answer]
    return answer.strip().upper()


def score_choices(records: Iterable[Mapping[str, Any]], group_key: str | None = None) -> dict[str, Any]:
    """Scores ``{"prediction", "answer": letter | index, "options"?: [...], "num_options"?, "category"?}``.

    With ``group_key`` (MMBench CircularEval: the same question asked with rotated options shares a group id),
    a group counts as right only if every record in it is right, and accuracy is over groups.
    Returns ``{"accuracy", "count", "failed", "per_category"}``; ``failed`` counts unparseable answers.
    """
    failed = 0
    hits: dict[Any, list[bool]] = defaultdict(list)
    categories: dict[Any, str | None] = {}
    for i, r in enumerate(records):
        options = r.get("options")
        letter = extract_option_letter(r["prediction"], r.get("num_options"), options)
        failed += letter is None
        key = r[group_key] if group_key is not None else i
        hits[key].append(letter == _as_letter(r["answer"]))
        categories.setdefault(key, r.get("category"))
    correct = {key: all(v) for key, v in hits.items()}
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for key, ok in correct.items():
        if categories[key] is not None:
            by_cat[categories[key]].append(ok)

    def pct(values: Iterable[bool]) -> float:
        values = list(values)
        return 100.0 * sum(values) / len(values) if values else 0.0

    return {
        "accuracy": pct(correct.values()),
        "count": len(correct),
        "failed": failed,
        "per_category": {cat: pct(v) for cat, v in sorted(by_cat.items())},
    }


def write_mmbench_predictions(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    columns: Sequence[str] = ("index", "question"),
) -> None:
    """Writes a TSV of the given MMBench columns plus ``prediction`` (the extracted letter, or the raw answer
    when none is found), the table the MMBench evaluator expects. Convert to .xlsx for the official server."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow([*columns, "prediction"])
        for r in records:
            letter = extract_option_letter(r["prediction"], r.get("num_options"), r.get("options"))
            writer.writerow([r.get(c, "") for c in columns] + [letter or r["prediction"].strip()])
