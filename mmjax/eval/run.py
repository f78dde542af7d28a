"""`python -m mmjax.eval --workdir RUN --benchmark B --questions FILE --images DIR --out OUT`: LLaVA benchmarks.

Loads a training run (its resolved `config.json` and newest checkpoint), answers every question with batched
greedy KV-cache generation, and writes the files each benchmark's official tooling expects, plus `scores.json`
when the questions carry ground truth:

  vqav2    answers.jsonl (LLaVA answer file) + submission.json (EvalAI [{question_id, answer}], normalised);
           scored when records have `answers` or `--annotations` gives the official annotation file
  gqa      answers.jsonl + predictions.json ([{questionId, prediction}] for the official eval.py); `answer`
  pope     answers.jsonl ({question_id, prompt, text}); scored from `label` (+ `category`)
  mme      results/<category>.txt (image, question, answer, prediction: the official calculation.py input)
  choices  answers.jsonl (+ mmbench.tsv when records have `index`); scored from `answer` and `options`
  shapes   the run's own held-out synthetic-shapes questions (no files needed) or a question file; exact match

Question files are LLaVA's JSONL (or a JSON list): `{"question_id", "image": path under --images, "text"}` (+ the
ground-truth fields above; `choices` records have `question` and `options`). Prompts get LLaVA's response-format
suffix ("Answer the question using a single word or phrase." / "Answer with the option's letter from the given
choices directly.") unless the text already ends with it. Records whose image is missing or undecodable are
skipped, counted, and reported in scores.json. RUN may be relative; errors in the arguments, the run or the files
are one `error:` line with exit status 2 (`--debug` for the traceback; see `mmjax.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mmjax import cli

BENCHMARKS = ("vqav2", "gqa", "pope", "mme", "choices", "shapes")
log = logging.getLogger(__name__)


def read_questions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """JSONL (one record a line) or a JSON list; a malformed file is a DataError naming it."""
    from mmjax.data.sources import DataError
    from mmjax.eval.vqa import read_jsonl

    text = Path(path).read_text(encoding="utf-8").lstrip()
    try:
        return json.loads(text) if text.startswith("[") else read_jsonl(path)
    except ValueError as e:
        raise DataError(f"question file {os.fspath(path)}: {e}") from e


def _with_suffix(text: str, suffix: str) -> str:
    text = text.rstrip()
    return text if text.endswith(suffix) else f"{text}\n{suffix}"


def prompt_text(record: dict[str, Any], benchmark: str) -> str:
    """The question with LLaVA's response-format prompt for the benchmark (options listed for `choices`)."""
    from mmjax.data.conversation import OPTION_LETTER_PROMPT, SHORT_ANSWER_PROMPT
    from mmjax.eval.choices import LETTERS

    if benchmark == "choices":
        question = record.get("question", record.get("text", ""))
        options = "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(record.get("options", [])))
        return _with_suffix(f"{question}\n{options}" if options else question, OPTION_LETTER_PROMPT)
    return _with_suffix(record.get("text", record.get("question", "")), SHORT_ANSWER_PROMPT)


def load_run(workdir: str, overrides: list[str] = ()) -> tuple[Any, Any]:
    """(LlavaTask, params) of a training run: its resolved config.json (plus `field=value` overrides) and the
    newest checkpoint's parameters."""
    import ml_collections

    from mmjax import configlib
    from mmjax.train.checkpoint import load_params
    from mmjax.train.tasks.llava import LlavaTask

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{workdir}: no config.json (is it a training run directory?)")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config = configlib.apply_overrides(config, list(overrides))
    if config.task != "llava":
        raise configlib.ConfigError(f"{config_path}: task is {config.task!r}, not 'llava'")
    return LlavaTask(config), load_params(workdir)


def _images(record: dict[str, Any], image_dir: str, counter: dict[str, int]) -> list[np.ndarray] | None:
    """The record's images decoded (None after counting the failure)."""
    from mmjax.data.llava_data import load_images

    names = record.get("image")
    names = [] if names is None else [names] if isinstance(names, str) else list(names)
    try:
        return load_images({"id": record.get("question_id"), "image_paths": [os.path.join(image_dir, n)
                                                                            for n in names]})
    except ValueError as e:  # MissingImageError / ImageDecodeError
        counter[type(e).__name__] = counter.get(type(e).__name__, 0) + 1
        if counter[type(e).__name__] <= 3:
            log.warning("skipping question %s: %s", record.get("question_id"), e)
        return None


def _shapes_records(task: Any, limit: int | None) -> list[dict[str, Any]]:
    source = task.source("eval")
    n = min(limit or len(source), len(source))
    out = []
    for i in range(n):
        conv, images, answer = task.qa_prompt(source[i])
        out.append({"question_id": i, "prompt_conv": conv, "images": images, "answer": answer,
                    "text": conv[0]["value"]})
    return out


def score_and_write(benchmark: str, records: list[dict[str, Any]], out: Path, model_id: str,
                    annotations: str | None = None) -> dict[str, Any]:
    """Writes the benchmark's files for records carrying `prediction`; returns scores (empty without truth)."""
    from mmjax.eval import choices, mme, pope, vqa

    answers = [{"question_id": r["question_id"], "prompt": r["prompt"], "text": r["prediction"],
                "model_id": model_id} for r in records]
    if benchmark != "mme":
        vqa.write_jsonl(answers, out / "answers.jsonl")
    scores: dict[str, Any] = {}
    if benchmark == "vqav2":
        vqa.write_vqav2_submission(records, out / "submission.json")
        if annotations:
            scores = vqa.score_vqa_files(annotations, out / "submission.json")
        elif records and all("answers" in r for r in records):
            scores = vqa.score_vqa(records)
    elif benchmark == "gqa":
        vqa.write_gqa_predictions(records, out / "predictions.json")
        if records and all("answer" in r for r in records):
            scores = vqa.score_gqa(records)
    elif benchmark == "pope":
        pope.write_pope_answers(records, out / "answers.jsonl")
        if records and all("label" in r for r in records):
            scores = pope.score_pope(records)
    elif benchmark == "mme":
        mme.write_mme_results([{**r, "question": r.get("question", r["text"])} for r in records], out / "results")
        scores = mme.score_mme(records) if records and all("answer" in r for r in records) else {}
    elif benchmark == "choices":
        if records and all("index" in r for r in records):
            choices.write_mmbench_predictions(records, out / "mmbench.tsv")
        if records and all("answer" in r for r in records):
            scores = choices.score_choices(records)
    elif benchmark == "shapes":
        hits = [vqa.normalize_gqa_answer(r["prediction"]) == vqa.normalize_gqa_answer(r["answer"]) for r in records]
        scores = {"vqa_accuracy": float(np.mean(hits)) if hits else 0.0, "count": len(hits)}
    return scores


def evaluate(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    task, params = load_run(args.workdir, overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, int] = {}
    if args.benchmark == "shapes" and not args.questions:
        records = _shapes_records(task, args.limit)
    else:
        records = read_questions(args.questions)[: args.limit or None]
        kept = []
        for r in records:
            images = _images(r, args.images or "", skipped)
            if images is not None:
                text = task.format_question(r["text"]) if args.benchmark == "shapes" else prompt_text(r, args.benchmark)
                kept.append({**r, "images": images, "text": text,
                             "prompt_conv": [{"from": "human", "value": "<image>\n" * len(images) + text}]})
        records = kept
    batch = args.batch_size or task.config.eval_batch_size or task.config.batch_size
    predictions = task.answer(params, [(r["prompt_conv"], r["images"]) for r in records], batch_size=batch,
                              max_new_tokens=args.max_new_tokens)
    records = [{k: v for k, v in r.items() if k not in ("images", "prompt_conv")} | {"prediction": p,
                                                                                      "prompt": r["text"]}
               for r, p in zip(records, predictions)]
    scores = score_and_write(args.benchmark, records, out, Path(os.path.abspath(args.workdir)).name, args.annotations)
    scores = {"benchmark": args.benchmark, "answered": len(records), "skipped": skipped, **scores}
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = cli.ArgumentParser(prog="python -m mmjax.eval", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training run directory (config.json + checkpoints/)")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--questions", help="question file (JSONL or JSON list); optional for shapes")
    p.add_argument("--images", help="folder the records' `image` paths are relative to")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--annotations", help="VQAv2 official annotation file, to score a val split")
    p.add_argument("--batch-size", type=cli.int_at_least(0), default=0,
                   help="generation batch (default: the run's eval batch)")
    p.add_argument("--max-new-tokens", type=cli.int_at_least(1), default=16)
    p.add_argument("--limit", type=cli.int_at_least(0), default=0, help="only the first N questions (0: all)")
    args, rest = p.parse_known_args(argv)
    bad = [x for x in rest if not x.startswith("--config.")]
    if bad:
        p.error(f"unrecognised arguments {bad} (config overrides look like --config.field=value)")
    if args.benchmark != "shapes" and not args.questions:
        p.error(f"--benchmark {args.benchmark} needs --questions FILE")
    return args, [x[len("--config."):] for x in rest]


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    scores = evaluate(args, overrides)
    print(json.dumps({k: v for k, v in scores.items() if not isinstance(v, dict) or k == "skipped"}))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    return cli.run_main(lambda: _evaluate(args, overrides), debug=args.debug)
