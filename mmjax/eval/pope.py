"""POPE (object-hallucination) scoring: accuracy, precision, recall, F1 and yes-ratio from free-form answers.

Answers are reduced to yes/no exactly as LLaVA's ``eval_pope.py`` does, so numbers match the paper tables
(LLaVA-1.5 reports F1 averaged over the random / popular / adversarial splits). Scores are percentages.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmjax.eval.vqa import read_jsonl, write_jsonl

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_yes_no(text: str) -> str:
    """Reference extraction: keep the first sentence, drop commas, split on spaces; "no" if a word is exactly
    "No", "no" or "not", otherwise "yes" (so an empty or evasive answer counts as yes, as in the reference).
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Binary metrics in percent, "yes" the positive class, from already-extracted yes/no predictions."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label must be 'yes' or 'no', got {label!r}")
        if pred == "yes":
            tp, fp = tp + (label == "yes"), fp + (label == "no")
        else:
            tn, fn = tn + (label == "no"), fn + (label == "yes")
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n if n else 0.0,
        "count": float(n),
    }


def score_pope(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores ``{"prediction": free text, "label": "yes"|"no", "category"?}`` records.

    Returns ``{"overall": metrics over all records, "per_category": {cat: metrics}, "mean": each metric
    averaged over categories}`` (``mean`` equals ``overall`` when there are no categories).
    """
    preds, labels = [], []
    by_cat: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r in records:
        pred, label = pope_yes_no(r["prediction"]), str(r["label"]).strip().lower()
        preds.append(pred)
        labels.append(label)
        if "category" in r:
            by_cat[r["category"]][0].append(pred)
            by_cat[r["category"]][1].append(label)
    overall = pope_metrics(preds, labels)
    per_cat = {cat: pope_metrics(p, lab) for cat, (p, lab) in sorted(by_cat.items())}
    if per_cat:
        mean = {m: sum(v[m] for v in per_cat.values()) / len(per_cat) for m in METRICS}
    else:
        mean = {m: overall[m] for m in METRICS}
    return {"overall": overall, "per_category": per_cat, "mean": mean}


def score_pope_files(
    answer_files: Mapping[str, str | os.PathLike], label_files: Mapping[str, str | os.PathLike]
) -> dict[str, Any]:
    """Scores LLaVA-format answer files (JSONL ``{"question_id", "text"}``) against POPE label files
    (JSONL ``{"question_id", "label"}``), one pair per category, joined on ``question_id``."""
    records = []
    for category, answer_file in answer_files.items():
        labels = {r["question_id"]: r["label"] for r in read_jsonl(label_files[category])}
        for ans in read_jsonl(answer_file):
            qid = ans["question_id"]
            if qid not in labels:
                raise KeyError(f"{os.fspath(answer_file)}: question_id {qid} has no {category} label")
            records.append({"prediction": ans["text"], "label": labels[qid], "category": category})
    return score_pope(records)


def write_pope_answers(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes LLaVA's answer JSONL ``{"question_id", "prompt", "text"}`` from prediction records."""
    rows = ({"question_id": r["question_id"], "prompt": r.get("prompt", ""), "text": r["prediction"]}
            for r in records)
    write_jsonl(rows, path)
