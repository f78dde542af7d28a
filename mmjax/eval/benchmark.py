"""The benchmark registry of `python -m mmjax.eval`: what a benchmark is, and where each one lives.

A benchmark is three functions, kept in its own module next to its scorer:

  read(questions, images) -> records    the official files -> records {"question_id", "images": [source, ...],
                                        ground-truth fields...}; a source is a file path, encoded bytes, or an
                                        array; `questions` is the file (or folder) the user names
  prompt(record) -> str                 the question as the reference prompts it (response-format suffix included)
  write_and_score(records, out, annotations) -> scores
                                        writes the answer / submission files for records that now carry
                                        `prediction`, and returns the scores (empty when the split has no truth)

`MODULES` maps a benchmark name to the module holding its `BENCHMARKS` entry; adding one is a module and a line
here. Modules are imported only when their benchmark is asked for.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Record = dict[str, Any]

MODULES = {
    "vqav2": "mmjax.eval.llava_files", "gqa": "mmjax.eval.llava_files", "pope": "mmjax.eval.llava_files",
    "mme": "mmjax.eval.llava_files", "choices": "mmjax.eval.llava_files",
    "textvqa": "mmjax.eval.textvqa", "vizwiz": "mmjax.eval.vizwiz", "flickr30k": "mmjax.eval.flickr30k",
    "mmmu": "mmjax.eval.mmmu", "mmbench": "mmjax.eval.mmbench", "mmbench_cn": "mmjax.eval.mmbench",
    "seed": "mmjax.eval.choice_sets", "scienceqa": "mmjax.eval.choice_sets", "ai2d": "mmjax.eval.choice_sets",
    "chartqa": "mmjax.eval.chartqa", "docvqa": "mmjax.eval.anls", "infovqa": "mmjax.eval.anls",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark's reader, prompt and writer/scorer (see the module doc); `max_new_tokens` is its default
    answer length (captions need more than a word or a letter)."""

    read: Callable[[str, str], list[Record]]
    prompt: Callable[[Record], str]
    write_and_score: Callable[[list[Record], Path, str | None], dict[str, Any]]
    max_new_tokens: int = 16


def read_records(name: str, questions: str, images: str) -> list[Record]:
    """The benchmark's reader on the user's files; a file not in the benchmark's layout (a missing key, an
    unparseable value) is one DataError naming the file, the benchmark and what was wrong."""
    from mmjax.data.sources import DataError

    try:
        return get(name).read(questions, images)
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"{questions}: not {name}'s official layout ({type(e).__name__}: {e}); "
                        f"see {MODULES[name]}") from e


def get(name: str) -> Benchmark:
    """The registered benchmark `name` (a KeyError lists the known ones)."""
    if name not in MODULES:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(MODULES))}")
    return importlib.import_module(MODULES[name]).BENCHMARKS[name]


def with_suffix(text: str, suffix: str) -> str:
    """`text` then `suffix` on its own line (unless the text already ends with it): LLaVA's prompt form."""
    text = text.rstrip()
    return text if not suffix or text.endswith(suffix) else f"{text}\n{suffix}"


def decode_images(record: Record) -> list[np.ndarray]:
    """The record's image sources as uint8 (H, W, 3) arrays. A missing or undecodable image raises the data
    layer's MissingImageError / ImageDecodeError naming the question."""
    from mmjax.data.images import decode_image
    from mmjax.data.llava_data import load_images

    qid, out = record.get("question_id"), []
    for i, source in enumerate(record.get("images", [])):
        if isinstance(source, np.ndarray):
            out.append(source)
        elif isinstance(source, bytes | bytearray):
            out.append(decode_image(bytes(source), name=f"question {qid} image {i}"))
        else:
            out.extend(load_images({"id": qid, "image_paths": [os.fspath(source)]}))
    return out


def percent(hits: list[bool] | list[float]) -> float:
    """The mean of per-question scores in [0, 1] as a percentage (0 for none), the unit of the paper tables."""
    return 100.0 * sum(hits) / len(hits) if hits else 0.0


def has_truth(records: list[Record], field: str) -> bool:
    """Whether every record carries the ground-truth `field` (a test split carries none)."""
    return bool(records) and all(r.get(field) is not None for r in records)


def parquet_rows(path: str) -> list[Record]:
    """The rows (dicts) of a parquet file, of every `*.parquet` under a folder, or of a glob's files: the layout
    of benchmarks released as Hugging Face datasets (images embedded as `{"bytes", "path"}`)."""
    import pyarrow.parquet as pq

    from mmjax.data.sources import DataError

    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not files:
        raise DataError(f"no parquet file at {path}")
    return [row for file in files for row in pq.read_table(file).to_pylist()]
