r"""`python -m mmjax.data.inspect`: look at a config's data through its task's own decode path before training.

    python -m mmjax.data.inspect --config configs/llava/llava15.py --config.data.train.json=/data/llava.json \
        --split train --num 64 --out /tmp/look

builds the config's task (`mmjax.train.tasks.make_task`), reads the first N records of the split from
`task.source(split)` and runs each through `task.preprocess(record, None)` (the evaluation path: no random
augmentation), exactly as training would, counting skipped records per reason as the training pipeline does
(`mmjax.data.pipeline.SkipCounter`: the exception's class name, "undecodable" for a record the source could not
read, "rejected" for a preprocess that returned None). It prints, per part (most tasks have one, "records"; Show-o
has its t2i / mmu / lm sources):
  - kept and skipped counts per reason, with the first message of each reason;
  - the sizes of the decoded source images (min / median / max of height and width) of records that have images;
  - text lengths in tokens (caption or conversation, as the task tokenizes it) where the task has text;
and writes DIR/inspect.png (a grid of the decoded source images, each with its text or skip reason under it) and
DIR/inspect.json (the numbers). Arguments and errors follow `mmjax.train` (`--config FILE[:arg]`,
`--config.field=value`, one `error:` line and exit 2 for a bad config or data; see `mmjax.cli`).

A task may define `inspect_parts(split) -> list[Part]` to say which records to read and how it processes each;
without it, the task's `source` and `preprocess` are read, except for Show-o, whose source yields bundle indices:
its parts' own sources and example builder are read instead (`_showo_parts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mmjax import cli
from mmjax.data.images import decode_image
from mmjax.data.pipeline import SkipCounter

TILE, TEXT_LINES, TEXT_WIDTH = 128, 4, 24   # grid cell: image side (px), caption lines and characters per line


@dataclasses.dataclass
class Part:
    """Records of one kind: where they come from and how the task turns one into model inputs."""

    name: str
    source: Any
    process: Callable[[dict[str, Any]], dict[str, np.ndarray] | None]


@dataclasses.dataclass
class Sample:
    """One record as inspected: its decoded source image, its text, its token count and its skip reason."""

    image: np.ndarray | None
    text: str
    tokens: int | None
    skipped: str | None


def task_parts(task: Any, split: str) -> list[Part]:
    """The parts of `task`'s data to read (see the module)."""
    if hasattr(task, "inspect_parts"):
        return task.inspect_parts(split)
    if task.config.task == "showo":
        return _showo_parts(task, split)
    return [Part("records", task.source(split), lambda record: task.preprocess(record, None))]


def _showo_parts(task: Any, split: str) -> list[Part]:
    """Show-o's t2i / mmu / lm sources and its example builder (a bundle mixes rows of several records)."""
    from mmjax.train.tasks.showo_batches import PARTS, open_source
    from mmjax.train.tasks.showo_examples import ExampleBuilder

    data = task.config.data[split]
    builder = ExampleBuilder(data, task.text, task.vocab, task.s, task.seq_len, task.image_size, task.mmu_text_len,
                             task.clip)
    return [Part(part, open_source(data[part]["source"]), lambda record, part=part: builder.build(part, record))
            for part in PARTS if int(task.mix.get(part, 0)) and part in data]


def source_image(record: Mapping[str, Any]) -> np.ndarray | None:
    """The record's (first) image decoded to uint8 (H, W, 3), or None when it has none or it does not decode (its
    processing then says why). The one place this module decodes images."""
    value = record.get("image")
    if value is None:
        paths = record.get("image_paths") or list(record.get("images") or [])
        value = paths[0] if paths else None
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        try:
            return decode_image(value)
        except ValueError:
            return None
    image = np.asarray(value)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        return None
    if image.dtype != np.uint8:   # float images (digits: [0, 16]; tokenizer inputs: [-1, 1]): stretch for display
        lo, hi = float(image.min()), float(image.max())
        image = np.round((image - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def record_text(record: Mapping[str, Any]) -> str:
    """What a person reads under the image: the caption, the first question of a conversation, or the label."""
    if record.get("conversations"):
        conv = record["conversations"]
        conv = json.loads(conv) if isinstance(conv, str) else conv
        return str(conv[0].get("value", "")).replace("<image>", "").strip()
    for field in ("caption", "question", "text"):
        if record.get(field) is not None:
            value = record[field]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return f"label {int(record['label'])}" if record.get("label") is not None else ""


def token_count(out: Mapping[str, np.ndarray]) -> int | None:
    """Text tokens of a processed example: its `text_len` / `conv_len` (Show-o rows), its `mask` (LLaVA: the
    whole conversation with its image tokens), else None (a task without text)."""
    for field in ("text_len", "conv_len"):
        if field in out:
            return int(out[field])
    if "mask" in out and "ids" in out:
        return int(np.sum(out["mask"]))
    return None


def takes_image(out: Mapping[str, np.ndarray]) -> bool:
    """Whether a processed example holds an image (pixels or codes): a text-only part (Show-o's lm rows) does
    not show its records' images, nor count them in the sizes."""
    return any("image" in key or key in ("pixels", "codes") for key in out)


def inspect_part(part: Part, num: int) -> tuple[list[Sample], SkipCounter]:
    """The first `num` records of `part`, processed and counted as the training pipeline does."""
    counter, samples = SkipCounter(), []
    for index in range(min(num, len(part.source))):
        try:
            record = part.source[index]
        except Exception as e:  # a source that raises on a record: counted like a preprocess failure
            counter.add(type(e).__name__, f"record {index}: {e}"[:300])
            samples.append(Sample(None, "", None, type(e).__name__))
            continue
        if record is None:
            counter.add("undecodable", f"record {index}")
            samples.append(Sample(None, "", None, "undecodable"))
            continue
        try:
            out = part.process(record)
            reason, detail = (None, None) if out is not None else ("rejected", f"record {index}")
        except Exception as e:  # what training would skip, with the same reason
            out, reason, detail = None, type(e).__name__, f"record {index}: {e}"[:300]
        if reason is None:
            counter.keep()
        else:
            counter.add(reason, detail)
        image = source_image(record) if out is None or takes_image(out) else None
        samples.append(Sample(image, record_text(record), token_count(out) if out else None, reason))
    return samples, counter


def spread(values: list[int]) -> dict[str, float] | None:
    return {"min": min(values), "median": float(np.median(values)), "max": max(values)} if values else None


def part_stats(samples: list[Sample], counter: SkipCounter) -> dict[str, Any]:
    images = [s.image for s in samples if s.image is not None]
    return {"read": len(samples), "kept": counter.kept, "skipped": dict(sorted(counter.counts.items())),
            "skip_examples": dict(sorted(counter.examples.items())), "images": len(images),
            "height": spread([im.shape[0] for im in images]), "width": spread([im.shape[1] for im in images]),
            "text_tokens": spread([s.tokens for s in samples if s.tokens is not None])}


def grid_png(samples: list[tuple[str, Sample]], path: str, columns: int = 8) -> None:
    """A grid of the samples' images (fit into TILE x TILE) with their part and text, or skip reason, under each."""
    from PIL import Image, ImageDraw

    line_h = 11
    cell_w, cell_h = TILE + 8, TILE + 8 + line_h * (TEXT_LINES + 1)
    rows = max(1, -(-len(samples) // columns))
    canvas = Image.new("RGB", (cell_w * min(columns, max(1, len(samples))), cell_h * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (part, sample) in enumerate(samples):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
        if sample.image is not None:
            tile = Image.fromarray(sample.image)
            tile.thumbnail((TILE, TILE), Image.Resampling.BICUBIC)   # only ever shrinks
            scale = TILE // max(tile.size)
            if scale > 1:   # tiny images (8 px digits) shown big, pixels kept sharp
                tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (x, y))
        else:
            draw.rectangle([x, y, x + TILE - 1, y + TILE - 1], fill=(225, 225, 225))
            draw.text((x + 4, y + TILE // 2 - 5), "(no image)", fill=(90, 90, 90))
        head = f"[{part}] " + (f"SKIPPED: {sample.skipped}" if sample.skipped else
                               f"{sample.tokens} tokens" if sample.tokens is not None else "")
        lines = [head, *textwrap.wrap(sample.text, TEXT_WIDTH)[:TEXT_LINES]]
        for k, line in enumerate(lines):
            draw.text((x, y + TILE + 2 + k * line_h), line, fill=(200, 0, 0) if sample.skipped and not k else 0)
    canvas.save(path)


def inspect(config: Any, split: str, num: int, out_dir: str) -> dict[str, Any]:
    """Reads `num` records of each part of `config`'s `split`; writes inspect.png and inspect.json; the numbers."""
    from mmjax.configlib import ConfigError
    from mmjax.train.tasks import make_task

    if split not in config.data:
        raise ConfigError(f"config.data has no split {split!r}; has {sorted(config.data.keys())}")
    task = make_task(config)
    report: dict[str, Any] = {"task": config.task, "split": split, "parts": {}}
    shown: list[tuple[str, Sample]] = []
    for part in task_parts(task, split):
        samples, counter = inspect_part(part, num)
        report["parts"][part.name] = part_stats(samples, counter)
        shown += [(part.name, s) for s in samples]
    os.makedirs(out_dir, exist_ok=True)
    grid_png(shown, os.path.join(out_dir, "inspect.png"))
    with open(os.path.join(out_dir, "inspect.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as the console shows it."""
    lines = []
    fmt = lambda s: f"{s['min']} / {s['median']:g} / {s['max']}" if s else "-"
    for name, p in report["parts"].items():
        skipped = ", ".join(f"{k} x{n}" for k, n in p["skipped"].items()) or "none"
        lines.append(f"{name}: read {p['read']}, kept {p['kept']}, skipped: {skipped}")
        lines += [f"  e.g. {reason}: {example}" for reason, example in p["skip_examples"].items()]
        lines.append(f"  images {p['images']}: height min/median/max {fmt(p['height'])}, width {fmt(p['width'])}")
        lines.append(f"  text tokens min/median/max {fmt(p['text_tokens'])}")
    return lines


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(prog="python -m mmjax.data.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file, optionally with :arg variants")
    parser.add_argument("--split", default="train", help="the config.data split to read")
    parser.add_argument("--num", type=cli.int_at_least(1), default=32, help="records to read (per part)")
    parser.add_argument("--out", required=True, help="folder for inspect.png and inspect.json")
    return parser.parse_with_overrides(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    cli.setup_logging()

    def run() -> int:
        from mmjax import configlib

        config = configlib.apply_overrides(configlib.load_config_file(args.config), overrides)
        report = inspect(config, args.split, args.num, args.out)
        print("\n".join(summary_lines(report)))
        print(f"wrote {os.path.join(args.out, 'inspect.png')} and inspect.json")
        return 0

    return cli.run_main(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
