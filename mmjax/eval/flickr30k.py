"""Flickr30k captioning, scored by CIDEr-D (Show-o's understanding table reports it as "Flickr30k").

Layout: Karpathy's split file `dataset_flickr30k.json` (`{"images": [{"filename", "split", "sentences":
[{"raw"}, ...]}]}`, five references per image; from the "deep visual-semantic alignments" release) and the
`flickr30k-images/` folder as `--images`. The 1,000 images of the Karpathy `test` split are captioned; the
split is a record filter, so a file holding other splits needs no editing.

Prompt: "Provide a one-sentence caption for the provided image." (the short-caption prompt of LLaVA's data and
of lmms-eval's flickr30k task). Writes answers.jsonl and captions.json (`[{"image_id", "caption"}]`, the COCO
caption results format pycocoevalcap reads) and scores CIDEr-D (`mmjax.eval.cider`, in percent as tables
print it: 62.5 means 0.625).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmjax.eval.benchmark import Benchmark, Record, has_truth
from mmjax.eval.cider import cider_d
from mmjax.eval.llava_files import answers_file

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
SPLIT = "test"


def read_flickr30k(path: str, image_dir: str) -> list[Record]:
    """The Karpathy split file's `test` images as records with their reference captions."""
    with open(path, encoding="utf-8") as f:
        images = json.load(f)["images"]
    return [{"question_id": os.path.splitext(im["filename"])[0], "references": [s["raw"] for s in im["sentences"]],
             "images": [os.path.join(image_dir, im["filename"])]} for im in images if im.get("split") == SPLIT]


def score_captions(records: list[Record]) -> dict[str, Any]:
    """`{"cider" (x100), "count"}` of records `{"question_id", "prediction", "references"}`."""
    corpus, _ = cider_d({r["question_id"]: r["references"] for r in records},
                        {r["question_id"]: r["prediction"] for r in records})
    return {"cider": 100.0 * corpus, "count": len(records)}


def _write_and_score(records: list[Record], out: Path, annotations: str | None) -> dict[str, Any]:
    answers_file(records, out)
    rows = [{"image_id": r["question_id"], "caption": r["prediction"]} for r in records]
    (out / "captions.json").write_text(json.dumps(rows), encoding="utf-8")
    return score_captions(records) if has_truth(records, "references") else {}


BENCHMARKS = {"flickr30k": Benchmark(read_flickr30k, lambda r: CAPTION_PROMPT, _write_and_score, max_new_tokens=64)}
