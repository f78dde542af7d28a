"""Synthetic shapes: procedural images of coloured shapes with captions and question/answer pairs.

This is mmjax's embedded default data set for multimodal models: it needs no download, every record is a pure
function of (seed, index), and since the scene is known exactly, generated images can be judged by analysing their
pixels (`mmjax.eval.shapes_check`) and answers to questions can be scored exactly. Options control the resolution,
number of objects, the shape and colour vocabularies, and whether positions are part of captions and questions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 90, 230), "yellow": (235, 215, 40),
    "purple": (150, 60, 210), "white": (235, 235, 235), "orange": (245, 140, 30), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
BACKGROUND = (0, 0, 0)
_SUPERSAMPLE = 4


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) with half-size r; None for a circle."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Any) -> None:
    poly = shape_polygon(shape, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What scenes look like. Positions are cells of a 3x3 grid (one object per cell)."""

    resolution: int = 32
    min_objects: int = 1
    max_objects: int = 1
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
    with_positions: bool = False
    size_range: tuple[float, float] = (0.55, 0.8)  # object diameter relative to one grid cell (or the image)

    def __post_init__(self):
        for c in self.colours:
            if c not in COLOURS:
                raise ValueError(f"unknown colour {c!r}; known: {sorted(COLOURS)}")
        for s in self.shapes:
            shape_polygon(s, 0, 0, 1)
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {self.min_objects}, {self.max_objects}")


def sample_scene(cfg: ShapesConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Objects as dicts {shape, colour, cell (0..8), cx, cy, r} in pixel units of the final resolution."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    res = cfg.resolution
    multi = cfg.max_objects > 1 or cfg.with_positions
    cells = rng.choice(9, size=n, replace=False) if multi else np.array([4])
    objects = []
    for cell in cells:
        lo, hi = cfg.size_range
        if multi:
            cell_size = res / 3
            r = cell_size * rng.uniform(lo, hi) / 2
            jitter = (cell_size / 2 - r) * 0.8
            cx = (cell % 3 + 0.5) * cell_size + rng.uniform(-jitter, jitter)
            cy = (cell // 3 + 0.5) * cell_size + rng.uniform(-jitter, jitter)
        else:
            r = res * rng.uniform(lo, hi) / 2
            jitter = (res / 2 - r) * 0.5
            cx, cy = res / 2 + rng.uniform(-jitter, jitter), res / 2 + rng.uniform(-jitter, jitter)
        objects.append(dict(shape=str(rng.choice(cfg.shapes)), colour=str(rng.choice(cfg.colours)),
                            cell=int(cell), cx=float(cx), cy=float(cy), r=float(r)))
    return objects


def render(objects: list[dict[str, Any]], resolution: int) -> np.ndarray:
    """Draws the scene (supersampled, then box-filtered: soft edges like a photo) as uint8 (H, W, 3)."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in objects:
        s = _SUPERSAMPLE
        draw_shape(draw, o["shape"], o["cx"] * s, o["cy"] * s, o["r"] * s, COLOURS[o["colour"]])
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX), dtype=np.uint8)


def describe(o: dict[str, Any], with_position: bool) -> str:
    text = f"a {o['colour']} {o['shape']}"
    return f"{text} at the {POSITIONS[o['cell']]}" if with_position else text


def caption(objects: list[dict[str, Any]], with_positions: bool) -> str:
    parts = [describe(o, with_positions) for o in objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def questions(objects: list[dict[str, Any]], cfg: ShapesConfig, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Question/answer pairs whose answers are single words, so scoring is exact."""
    first = objects[0]
    qa = []
    if len(objects) == 1:
        qa += [("What color is the shape?", first["colour"]), ("What shape is it?", first["shape"])]
    else:
        qa.append(("How many shapes are there?", NUMBER_WORDS[len(objects)]))
    other_colour = str(rng.choice(cfg.colours))
    present = any(o["colour"] == other_colour and o["shape"] == first["shape"] for o in objects)
    qa.append((f"Is there a {other_colour} {first['shape']}?", "yes" if present else "no"))
    if cfg.with_positions:
        qa.append((f"Where is the {first['colour']} {first['shape']}?", POSITIONS[first["cell"]]))
    return qa


class ShapesSource:
    """A grain random-access source of synthetic scenes: record i is a pure function of (seed, i).

    Records: {"image": uint8 (H, W, 3), "caption": str, "question": str, "answer": str, "shape": int,
    "colour": int, "count": int, "index": int}; one question per record, chosen deterministically. Train and
    eval splits use different seeds, so held-out scenes and prompts are genuinely unseen combinations of draws.
    """

    def __init__(self, config: ShapesConfig | None = None, *, num_records: int = 10_000, seed: int = 0):
        self.config = config or ShapesConfig()
        self.num_records = int(num_records)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"shapes record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, int(index)])
        objects = sample_scene(self.config, rng)
        qa = questions(objects, self.config, rng)
        question, answer = qa[int(rng.integers(len(qa)))]
        first = objects[0]
        return {
            "image": render(objects, self.config.resolution),
            "caption": caption(objects, self.config.with_positions),
            "question": question,
            "answer": answer,
            "shape": self.config.shapes.index(first["shape"]),
            "colour": self.config.colours.index(first["colour"]),
            "count": len(objects),
            "index": int(index),
        }

    def scene(self, index: int) -> list[dict[str, Any]]:
        """The object list behind record `index` (for evaluators that need the ground truth)."""
        return sample_scene(self.config, np.random.default_rng([self.seed, int(index)]))
