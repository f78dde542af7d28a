"""`python -m mmjax.eval --workdir RUN --benchmark B --questions FILE --images DIR --out OUT`: benchmark a run.

Loads a LLaVA-family or Show-o training run (its resolved `config.json` and newest checkpoint;
`mmjax.eval.answerers`), reads the benchmark's files in their official layout, answers every question with the
reference's prompt for that benchmark by batched greedy KV-cache generation, and writes the files each
benchmark's official tooling or server expects, plus `scores.json` when the questions carry ground truth.
Every benchmark's layout, prompt, outputs and metric are in its module (`mmjax.eval.benchmark.MODULES`) and in
docs/paper_tables.md:

  vqav2 gqa pope mme choices   LLaVA's question files (mmjax.eval.llava_files)
  textvqa vizwiz                VQA accuracy (mmjax.eval.textvqa, mmjax.eval.vizwiz)
  flickr30k                     CIDEr-D (mmjax.eval.flickr30k, mmjax.eval.cider)
  mmmu                          MMMU's answer parsing (mmjax.eval.mmmu)
  mmbench mmbench_cn            circular evaluation (mmjax.eval.mmbench)
  seed scienceqa ai2d           option-letter accuracy (mmjax.eval.choice_sets)
  chartqa                       relaxed accuracy (mmjax.eval.chartqa)
  docvqa infovqa                ANLS (mmjax.eval.anls)
  shapes                        a LLaVA run's own held-out synthetic-shapes questions (no files needed); exact match

Records whose image is missing or undecodable (or, for Show-o, absent) are skipped, counted, and reported in
scores.json. RUN may be relative; errors in the arguments, the run or the files are one `error:` line with exit
status 2 (`--debug` for the traceback; see `mmjax.cli`).
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
from mmjax.eval import benchmark as registry

BENCHMARKS = (*registry.MODULES, "shapes")
log = logging.getLogger(__name__)


def load_run(workdir: str, overrides: list[str] = ()) -> tuple[Any, Any]:
    """(LlavaTask, params) of a LLaVA training run: its resolved config.json (plus `field=value` overrides) and
    the newest checkpoint's parameters."""
    from mmjax import configlib
    from mmjax.eval.answerers import read_config
    from mmjax.train.checkpoint import load_params
    from mmjax.train.tasks.llava import LlavaTask

    config = read_config(workdir, overrides)
    if config.task != "llava":
        raise configlib.ConfigError(f"{workdir}: task is {config.task!r}, not 'llava'")
    return LlavaTask(config), load_params(workdir)


def _count(skipped: dict[str, int], reason: str, record: dict[str, Any], detail: Any) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
    if skipped[reason] <= 3:
        log.warning("skipping question %s: %s", record.get("question_id"), detail)


def prepare(records: list[dict[str, Any]], bench: registry.Benchmark, needs_image: bool
            ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records with decoded `images` and their `prompt`; the skipped ones counted per reason."""
    kept, skipped = [], {}
    for r in records:
        try:
            images = registry.decode_images(r)
        except ValueError as e:  # MissingImageError / ImageDecodeError / ImageTooLargeError
            _count(skipped, type(e).__name__, r, e)
            continue
        if needs_image and not images:
            _count(skipped, "NoImage", r, "the model answers about an image and the question has none")
            continue
        kept.append({**r, "images": images, "prompt": bench.prompt(r)})
    return kept, skipped


def _shapes(args: argparse.Namespace, overrides: list[str], out: Path) -> dict[str, Any]:
    """The LLaVA run's held-out synthetic-shapes questions (or a question file of them), exact match."""
    from mmjax.eval import llava_files, vqa

    task, params = load_run(args.workdir, overrides)
    skipped: dict[str, int] = {}
    if args.questions:
        records = []
        for r in llava_files.read_llava_questions(args.questions, args.images or "")[: args.limit or None]:
            try:
                images = registry.decode_images(r)
            except ValueError as e:
                _count(skipped, type(e).__name__, r, e)
                continue
            text = task.format_question(r["text"])
            conv = [{"from": "human", "value": "<image>\n" * len(images) + text}]
            records.append({**r, "prompt": text, "conv": conv, "images": images})
    else:
        source = task.source("eval")
        records = []
        for i in range(min(args.limit or len(source), len(source))):
            conv, images, answer = task.qa_prompt(source[i])
            records.append({"question_id": i, "conv": conv, "images": images, "answer": answer,
                            "prompt": conv[0]["value"]})
    batch = args.batch_size or task.config.eval_batch_size or task.config.batch_size
    predictions = task.answer(params, [(r["conv"], r["images"]) for r in records], batch_size=batch,
                              max_new_tokens=args.max_new_tokens or 16)
    records = [{"question_id": r["question_id"], "prompt": r["prompt"], "answer": r["answer"], "prediction": p}
               for r, p in zip(records, predictions)]
    llava_files.answers_file(records, out)
    hits = [vqa.normalize_gqa_answer(r["prediction"]) == vqa.normalize_gqa_answer(r["answer"]) for r in records]
    return {"answered": len(records), "skipped": skipped,
            "vqa_accuracy": float(np.mean(hits)) if hits else 0.0, "count": len(hits)}


def evaluate(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.benchmark == "shapes":
        scores = _shapes(args, overrides, out)
    else:
        from mmjax.eval.answerers import load_answerer

        bench = registry.get(args.benchmark)
        records = registry.read_records(args.benchmark, args.questions, args.images or "")  # before the weights
        max_new = args.max_new_tokens or bench.max_new_tokens
        answerer, batch = load_answerer(args.workdir, overrides, batch_size=args.batch_size,
                                        max_new_tokens=max_new)
        records, skipped = prepare(records[: args.limit or None], bench, answerer.needs_image)
        predictions = answerer.answer([(r["prompt"], r["images"]) for r in records], batch, max_new)
        model_id = Path(os.path.abspath(args.workdir)).name
        records = [{k: v for k, v in r.items() if k != "images"} | {"prediction": p, "model_id": model_id}
                   for r, p in zip(records, predictions)]
        scores = {"answered": len(records), "skipped": skipped,
                  **bench.write_and_score(records, out, args.annotations)}
    scores = {"benchmark": args.benchmark, **scores}
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = cli.ArgumentParser(prog="python -m mmjax.eval", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training run directory (config.json + checkpoints/)")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--questions", help="the benchmark's question file (or folder / glob, as its module says); "
                                       "optional for shapes")
    p.add_argument("--images", help="folder the benchmark's image names are relative to")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--annotations", help="official annotation file to score a val split against (vqav2, textvqa)")
    p.add_argument("--batch-size", type=cli.int_at_least(0), default=0,
                   help="generation batch (default: the run's eval batch)")
    p.add_argument("--max-new-tokens", type=cli.int_at_least(0), default=0,
                   help="answer length (default 0: the benchmark's, 16 tokens or 64 for captions)")
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
