"""VQAv2 accuracy with the official answer normalisation, GQA exact match, and their answer-file writers.

The normalisation reproduces the official VQA evaluation (GT-Vision-Lab ``vqaEval.py``) rule for rule, quirks
included, because published VQAv2 numbers are computed with it: a cleaner normaliser gives different scores.
All scores are percentages (0-100), the unit of the paper tables.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# -------------------------------------------------------------------------------------------- JSON(L) helpers


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads one JSON object per non-empty line; a bad line raises naming the file and line number."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{os.fspath(path)}:{lineno}: not a JSON object: {e}") from e
    return records


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes one JSON object per line (the answer-file format of the LLaVA evaluation scripts)."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------- normalisation

_PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# The reference writes "(?!<=\d)" (a lookahead, not the intended lookbehind), so every '.' not followed by a
# digit goes, including the one in "1." -- and it passes re.UNICODE as `count`, so at most 32 are removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")

# Contractions as written in answers; the lookup keys are the apostrophe-less spellings annotators type. A
# form with one apostrophe is keyed by dropping it ("isnt" -> "isn't"); a form with several by dropping any
# ONE of them ("couldnt've", "couldn'tve" -> "couldn't've"), which is exactly the official table's key set.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've
needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've
somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll
that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've
why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're
you've
""".split()  # noqa: SIM905 -- a word list reads better than quoted strings


def _contraction_table() -> dict[str, str]:
    table = {}
    for word in _CONTRACTIONS:
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        if len(cuts) == 1:
            table[word.replace("'", "")] = word
        else:
            for i in cuts:
                table[word[:i] + word[i + 1 :]] = word
    # Kept from the official table because it changes scores: this entry maps the wrong way round. (Its
    # entries with capitals such as "Im" never fire because words are lower-cased first, and "let's"/"she's"
    # map to themselves, so those are left out.)
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()


def process_punctuation(text: str) -> str:
    """Official punctuation rule: a mark touching a space (or any text with a digit,digit comma) is deleted,
    otherwise it becomes a space ("black-and-white" -> "black and white"); then periods not before a digit
    are removed.
    """
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-cases, maps number words to digits ("two" -> "2"), drops articles, restores contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """Full normalisation of a model's answer: "Two" -> "2", "the dog." -> "dog", "isnt" -> "isn't"."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def evalai_normalize(answer: str) -> str:
    """The EvalAI answer processor (TextVQA's and VizWiz's servers, LLaVA's submission converters): lower-case,
    drop every ',' and '?', split off "'s", then the VQA normalisation. Unlike `normalize_vqa_answer` it is
    applied to the human answers too, so "Coca-Cola's" and "coca cola 's" agree."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(answer)


def _answer_text(answer: str | Mapping[str, Any]) -> str:
    return answer if isinstance(answer, str) else str(answer["answer"])


def vqa_accuracy(prediction: str, answers: Sequence[str | Mapping[str, Any]]) -> float:
    """VQAv2 accuracy in [0, 1] of one prediction against the human answers (usually 10).

    ``min(#other annotators who gave the answer / 3, 1)`` averaged over the leave-one-out subsets (10 choose
    9). As in the reference, human answers only get the punctuation rule, and only when annotators disagree.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    gts = [_answer_text(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [process_punctuation(g) for g in gts]
    matches = sum(g == pred for g in gts)
    # leaving out annotator i removes one match exactly when i itself matched
    per_subset = [min(1.0, (matches - (g == pred)) / 3.0) for g in gts]
    return sum(per_subset) / len(per_subset)


def _mean_pct(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def score_vqa(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores records ``{"question_id", "prediction", "answers": [str | {"answer": str}, ...]}``.

    Optional ``answer_type`` / ``question_type`` fields give the official breakdowns. Returns
    ``{"accuracy", "count", "per_answer_type", "per_question_type"}`` in percent.
    """
    scores, by_answer_type, by_question_type = [], defaultdict(list), defaultdict(list)
    for r in records:
        acc = vqa_accuracy(r["prediction"], r["answers"])
        scores.append(acc)
        if "answer_type" in r:
            by_answer_type[r["answer_type"]].append(acc)
        if "question_type" in r:
            by_question_type[r["question_type"]].append(acc)
    return {
        "accuracy": _mean_pct(scores),
        "count": len(scores),
        "per_answer_type": {k: _mean_pct(v) for k, v in sorted(by_answer_type.items())},
        "per_question_type": {k: _mean_pct(v) for k, v in sorted(by_question_type.items())},
    }


def score_vqa_files(annotation_file: str | os.PathLike, result_file: str | os.PathLike) -> dict[str, Any]:
    """Scores an official results JSON ``[{"question_id", "answer"}]`` against official VQAv2 annotations
    (``{"annotations": [{"question_id", "answers", "answer_type", "question_type"}, ...]}``)."""
    with open(annotation_file, encoding="utf-8") as f:
        annotations = {a["question_id"]: a for a in json.load(f)["annotations"]}
    with open(result_file, encoding="utf-8") as f:
        results = json.load(f)
    records = []
    for res in results:
        qid = res["question_id"]
        if qid not in annotations:
            raise KeyError(f"{os.fspath(result_file)}: question_id {qid} not in {os.fspath(annotation_file)}")
        ann = annotations[qid]
        records.append({"question_id": qid, "prediction": res["answer"], "answers": ann["answers"],
                        "answer_type": ann.get("answer_type"), "question_type": ann.get("question_type")})
    return score_vqa(records)


def write_vqav2_submission(
    predictions: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    question_ids: Iterable[int] | None = None,
) -> int:
    """Writes the EvalAI VQAv2 submission ``[{"question_id", "answer"}]`` with normalised answers.

    ``predictions`` are ``{"question_id", "prediction"}`` (or ``"answer"``). When ``question_ids`` (the full
    test-dev / test split) is given, questions without a prediction get ``""`` as the server requires every
    one. Returns the number of such filled-in questions.
    """
    answers = {}
    for p in predictions:
        text = p["prediction"] if "prediction" in p else p["answer"]
        answers[p["question_id"]] = normalize_vqa_answer(text)
    ids = list(answers) if question_ids is None else list(question_ids)
    missing = sum(qid not in answers for qid in ids)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"question_id": qid, "answer": answers.get(qid, "")} for qid in ids], f)
    return missing


def write_evalai_submission(records: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                            id_key: str = "question_id") -> None:
    """An EvalAI server's answer file (TextVQA: `[{"question_id", "answer"}]`, VizWiz: `[{"image", "answer"}]`):
    each record's `question_id` under `id_key`, its prediction through the EvalAI answer processor."""
    rows = [{id_key: r["question_id"], "answer": evalai_normalize(r["prediction"])} for r in records]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)


# ----------------------------------------------------------------------------------------------- GQA


def normalize_gqa_answer(answer: str) -> str:
    """LLaVA's light GQA normalisation before exact match: strip, drop a final '.', lower-case."""
    return answer.strip().rstrip(".").strip().lower()


def score_gqa(records: Iterable[Mapping[str, Any]], group_key: str | None = None) -> dict[str, Any]:
    """Exact-match accuracy (percent) of ``{"prediction", "answer"}`` records, optionally per group."""
    hits, groups = [], defaultdict(list)
    for r in records:
        hit = float(normalize_gqa_answer(r["prediction"]) == normalize_gqa_answer(r["answer"]))
        hits.append(hit)
        if group_key is not None and group_key in r:
            groups[r[group_key]].append(hit)
    out: dict[str, Any] = {"accuracy": _mean_pct(hits), "count": len(hits)}
    if group_key is not None:
        out[f"per_{group_key}"] = {k: _mean_pct(v) for k, v in sorted(groups.items())}
    return out


def write_gqa_predictions(predictions: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes ``[{"questionId", "prediction"}]``, the predictions file of the official GQA ``eval.py``."""
    rows = [{"questionId": str(p["question_id"]), "prediction": normalize_gqa_answer(p["prediction"])}
            for p in predictions]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
