"""GenEval-style checks of generated synthetic-shapes images by pixel analysis: is there an object, what colour,
what shape, how many.

GenEval judges a text-to-image model by detecting objects in its samples and checking them against the prompt
(object present, count, colour, position). On `mmjax.data.shapes` scenes the same questions have exact answers
without a detector, because the renderer is known: objects are flat-coloured shapes on a black background.
So a sample is judged by
  1. foreground = pixels whose brightest channel exceeds `threshold` (shape edges are anti-aliased, so this is
     roughly "more than half covered"), split into 8-connected components; specks below `min_area` are noise;
  2. colour = the palette colour nearest (RGB distance) to the median of the component's core pixels (its
     brightest half, away from the blended edges);
  3. shape = the shape whose ideal mask, drawn into the component's bounding box exactly as the renderer draws it
     (every shape of `shapes.py` spans a 2r x 2r box), overlaps the component best (IoU).
Blank or noise-only images have no component and never match. This is what `t2i_match` in the Show-o task
reports: the fraction of samples whose largest object has the prompt's colour AND shape.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmjax.data.shapes import COLOURS, SHAPES, draw_shape

DEFAULT_THRESHOLD = 100
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Detection:
    """One object found in an image: its colour and shape names, area (pixels), bbox (y0, x0, y1, x1), the IoU
    of the best ideal shape mask and the margin to the runner-up shape (how sure the shape call is)."""

    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]
    iou: float
    margin: float


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:  # floats in [0, 1]
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return image


def components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """8-connected components of a boolean mask with at least `min_area` pixels, largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    return [labels == i for i in order]


def nearest_colour(rgb: Sequence[float], colours: Sequence[str]) -> str:
    """The palette colour name closest to `rgb` (Euclidean distance in RGB)."""
    palette = np.asarray([COLOURS[c] for c in colours], np.float32)
    return colours[int(np.argmin(np.sum((palette - np.asarray(rgb, np.float32)) ** 2, axis=1)))]


def ideal_mask(shape: str, bbox: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The renderer's `shape` stretched to fill the pixel box (y0, x0, y1, x1) (inclusive), at half coverage."""
    y0, x0, y1, x1 = bbox
    s = _SUPERSAMPLE
    h, w = size
    canvas = Image.new("L", (w * s, h * s), 0)
    cx, cy = (x0 + x1 + 1) / 2 * s, (y0 + y1 + 1) / 2 * s
    rx, ry = (x1 + 1 - x0) / 2 * s, (y1 + 1 - y0) / 2 * s
    # Draw with radius ry and stretch x afterwards: every shape of shapes.py is symmetric in its 2r x 2r box.
    stretch = rx / max(ry, 1e-6)
    unit = Image.new("L", (int(np.ceil(2 * ry)) + 2, int(np.ceil(2 * ry)) + 2), 0)
    draw_shape(ImageDraw.Draw(unit), shape, unit.width / 2, unit.height / 2, ry, 255)
    unit = unit.resize((max(1, round(unit.width * stretch)), unit.height), Image.Resampling.BILINEAR)
    canvas.paste(unit, (round(cx - unit.width / 2), round(cy - unit.height / 2)))
    small = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32)
    return small >= 127.5


def classify_shape(blob: np.ndarray, shapes: Sequence[str] = SHAPES) -> tuple[str, float, float]:
    """(best shape, its IoU, IoU margin over the runner-up) for a boolean component mask."""
    ys, xs = np.nonzero(blob)
    bbox = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
    ious = []
    for shape in shapes:
        ideal = ideal_mask(shape, bbox, blob.shape)
        union = np.logical_or(ideal, blob).sum()
        ious.append(float(np.logical_and(ideal, blob).sum() / max(union, 1)))
    order = np.argsort(ious)[::-1]
    margin = ious[order[0]] - (ious[order[1]] if len(ious) > 1 else 0.0)
    return shapes[order[0]], ious[order[0]], margin


def detect(image: np.ndarray, *, colours: Sequence[str] = tuple(COLOURS), shapes: Sequence[str] = SHAPES,
           threshold: int = DEFAULT_THRESHOLD, min_area: int | None = None) -> list[Detection]:
    """Objects in an RGB image (uint8, or float in [0, 1]), largest first. `min_area` defaults to 1.5% of the
    image (about 15 pixels at 32x32), far below any object the renderer draws."""
    image = _as_uint8(image)
    min_area = max(4, int(0.015 * image.shape[0] * image.shape[1])) if min_area is None else min_area
    brightness = image.max(axis=-1)
    found = []
    for blob in components(brightness > threshold, min_area):
        core = blob & (brightness >= np.median(brightness[blob]))
        colour = nearest_colour(np.median(image[core].astype(np.float32), axis=0), colours)
        shape, iou, margin = classify_shape(blob, shapes)
        ys, xs = np.nonzero(blob)
        found.append(Detection(colour, shape, int(blob.sum()), (int(ys.min()), int(xs.min()), int(ys.max()),
                                                                 int(xs.max())), iou, margin))
    return found


def parse_prompt(prompt: str, colours: Sequence[str] = tuple(COLOURS),
                 shapes: Sequence[str] = SHAPES) -> list[tuple[str, str]]:
    """(colour, shape) pairs named in a shapes caption such as "a red circle and a blue square"."""
    words = re.findall(r"[a-z]+", prompt.lower())
    pairs = []
    for a, b in itertools.pairwise(words):
        if a in colours and b in shapes:
            pairs.append((a, b))
    return pairs


def matches(image: np.ndarray, colour: str, shape: str, **kw) -> bool:
    """Whether the image's largest object has this colour and shape (False for a blank image)."""
    found = detect(image, **kw)
    return bool(found) and found[0].colour == colour and found[0].shape == shape


def count_objects(image: np.ndarray, **kw) -> int:
    """GenEval's counting check: the number of objects detected."""
    return len(detect(image, **kw))


def score_prompts(images: Sequence[np.ndarray], prompts: Sequence[str], **kw) -> dict[str, float]:
    """Fractions over samples of single-object prompts: `t2i_match` (colour and shape), `t2i_colour`,
    `t2i_shape`, and `t2i_found` (any object at all). Prompts naming no (colour, shape) pair are refused."""
    totals = dict(t2i_match=0.0, t2i_colour=0.0, t2i_shape=0.0, t2i_found=0.0)
    for image, prompt in zip(images, prompts, strict=True):
        wanted = parse_prompt(prompt, kw.get("colours", tuple(COLOURS)), kw.get("shapes", SHAPES))
        if not wanted:
            raise ValueError(f"prompt {prompt!r} names no colour + shape of the shapes palette")
        colour, shape = wanted[0]
        found = detect(image, **kw)
        if not found:
            continue
        top = found[0]
        totals["t2i_found"] += 1
        totals["t2i_colour"] += top.colour == colour
        totals["t2i_shape"] += top.shape == shape
        totals["t2i_match"] += top.colour == colour and top.shape == shape
    n = max(len(prompts), 1)
    return {k: v / n for k, v in totals.items()}
