"""Writes text-to-image samples in the folder layout GenEval's scorer reads, and reads its prompt file.

GenEval (Ghosh et al. 2023) scores a model from a folder of samples, one sub-folder per prompt:

    <outdir>/<index:05d>/metadata.jsonl      the prompt's line of evaluation_metadata.jsonl (one JSON object)
    <outdir>/<index:05d>/grid.png            optional overview of the prompt's samples
    <outdir>/<index:05d>/samples/<i:04d>.png one PNG per sample

and its `evaluate_images.py <outdir> --outfile results.jsonl` + `summary_scores.py` produce the table (Show-o 512:
overall 0.68). Writing exactly this layout means our samples go through the official scorer unchanged; the
synthetic-shapes checks of `mmjax.eval.shapes_check` answer the same questions offline for the tiny configs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np


def read_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """GenEval's `evaluation_metadata.jsonl`: one prompt object per line (`prompt`, `tag`, `include`, ...)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}:{lineno}: not a JSON object: {e}") from e
            if "prompt" not in record:
                raise ValueError(f"{os.fspath(path)}:{lineno}: GenEval metadata needs a 'prompt' field")
            records.append(record)
    return records


def shapes_metadata(colour: str, shape: str) -> dict[str, Any]:
    """GenEval-style metadata for a single-object synthetic-shapes prompt ("a red circle")."""
    return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": colour}],
            "prompt": f"a {colour} {shape}"}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, or floats in [0, 1] -> uint8."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: Sequence[np.ndarray], cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles same-sized images (uint8 or [0, 1] floats) into one uint8 grid with `pad` pixels of grey."""
    if not len(images):
        raise ValueError("image_grid needs at least one image")
    images = [to_uint8(x) for x in images]
    h, w = images[0].shape[:2]
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 128, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike | BinaryIO) -> None:
    from PIL import Image

    Image.fromarray(to_uint8(image)).save(path, format="PNG")  # a file object has no suffix to say so


def write_prompt(outdir: str | os.PathLike, index: int, metadata: Mapping[str, Any],
                 images: Sequence[np.ndarray], grid: bool = True) -> str:
    """Writes one prompt's folder `<outdir>/<index:05d>/`; returns its path."""
    folder = os.path.join(os.fspath(outdir), f"{index:05d}")
    os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps(dict(metadata)) + "\n")
    for i, image in enumerate(images):
        save_png(image, os.path.join(folder, "samples", f"{i:04d}.png"))
    if grid:
        save_png(image_grid(images), os.path.join(folder, "grid.png"))
    return folder


def write_geneval(outdir: str | os.PathLike, metadata: Sequence[Mapping[str, Any]],
                  samples: Iterable[Sequence[np.ndarray]], grid: bool = True) -> list[str]:
    """Writes every prompt's folder: `samples` yields, per prompt in order, that prompt's images."""
    folders = []
    for index, (meta, images) in enumerate(zip(metadata, samples, strict=True)):
        folders.append(write_prompt(outdir, index, meta, images, grid=grid))
    return folders
