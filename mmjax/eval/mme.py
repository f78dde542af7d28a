"""MME scoring: per-subtask accuracy and accuracy+ and the perception / cognition totals.

Every MME image has two yes/no questions. ``acc`` is the share of questions answered right, ``acc+`` the share
of images with both right; a subtask scores ``100 * (acc + acc+)`` (max 200) and the perception total sums the
ten perception subtasks (max 2000; LLaVA-1.5 7B: 1510.7). Answers are parsed as the official
``calculation.py`` does, and the per-subtask ``.txt`` files it reads are written and read here.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(text: str) -> str:
    """Official parse: lower-case; exactly yes/no, else "yes" or "no" inside the first 4 characters (yes
    checked first), else "other" (always wrong)."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score_mme(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores ``{"category", "image", "answer": "Yes"|"No", "prediction"}`` records.

    Returns ``{"per_category": {cat: {"acc", "acc_plus", "score", "questions", "images"}}, "perception",
    "cognition", "total"}`` with acc / acc+ in percent; totals sum the subtasks present.
    """
    # category -> image -> [correct, ...]
    results: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        gt = str(r["answer"]).strip().lower()
        if gt not in ("yes", "no"):
            where = f"{r['category']}/{r['image']}"
            raise ValueError(f"MME ground truth must be yes/no, got {r['answer']!r} ({where})")
        results[r["category"]][r["image"]].append(mme_yes_no(r["prediction"]) == gt)
    per_category = {}
    for cat, images in sorted(results.items()):
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(oks) for oks in images.values()) / len(images)
        per_category[cat] = {
            "acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
            "questions": len(answers), "images": len(images),
        }  # fmt: skip
    perception = sum(v["score"] for k, v in per_category.items() if k in PERCEPTION)
    cognition = sum(v["score"] for k, v in per_category.items() if k in COGNITION)
    return {
        "per_category": per_category,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
    }


def _clean(field: Any) -> str:
    return str(field).replace("\t", " ").replace("\n", " ").strip()


def write_mme_results(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Writes ``{category}.txt`` files with lines ``image<TAB>question<TAB>answer<TAB>prediction``, the input
    of the official ``calculation.py`` (LLaVA's ``convert_mme_for_eval``). Tabs/newlines in fields become
    spaces. Records keep their order within a category (the official tool pairs an image's two consecutive
    lines)."""
    lines: dict[str, list[str]] = defaultdict(list)
    for r in records:
        fields = (r["image"], r["question"], r["answer"], r["prediction"])
        lines[r["category"]].append("\t".join(_clean(f) for f in fields))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for cat, rows in lines.items():
        path = out / f"{cat}.txt"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def read_mme_results(result_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Reads the per-subtask ``.txt`` files back into records (category from the file name)."""
    records = []
    for path in sorted(Path(result_dir).glob("*.txt")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 tab-separated fields, got {len(parts)}")
            image, question, answer, prediction = parts
            records.append({"category": path.stem, "image": image, "question": question,
                            "answer": answer, "prediction": prediction})
    return records


def score_mme_dir(result_dir: str | os.PathLike) -> dict[str, Any]:
    """Scores a directory of per-subtask ``.txt`` result files."""
    return score_mme(read_mme_results(result_dir))
