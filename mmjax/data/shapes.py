"""Synthetic shapes: procedural images of coloured shapes with captions and question/answer pairs.

This is mmjax's embedded default data set for multimodal models: it needs no download, every record is a pure
function of (seed, index), and since the scene is known exactly, generated images can be judged by analysing their
pixels (`mmjax.eval.shapes_check`) and answers to questions can be scored exactly. Options control the resolution,
number of objects, the shape and colour vocabularies, and whether positions are part of captions and questions.

Held-out compositions: `holdout_combos` ("red triangle", ...) and `holdout_questions` ("shape:green circle": the
question kind "shape" asked about a green circle) name combinations that a training split (`holdout_split="seen"`)
never contains: a record whose scene shows a held-out combo is redrawn, and so is a question about a held-out
combination or one that names a held-out combo ("Is there a red triangle?"). Redrawing continues the record's
own generator, so records stay pure functions of (seed, index). An evaluation split (`holdout_split="all"`, the default)
draws everything and marks each record `caption_unseen` / `qa_unseen`, so scores can be reported separately on
seen and unseen compositions.
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
QUESTION_KINDS = ("color", "shape", "exists", "count", "where")
HOLDOUT_SPLITS = ("all", "seen")
MAX_REDRAWS = 1000
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
    holdout_combos: tuple[str, ...] = ()  # "colour shape" pairs a "seen" split never shows or names
    holdout_questions: tuple[str, ...] = ()  # "kind:colour shape": a question kind never asked about that object
    holdout_split: str = "all"  # all: every draw, marked seen / unseen | seen: held-out ones redrawn (training)

    def __post_init__(self):
        for c in self.colours:
            if c not in COLOURS:
                raise ValueError(f"unknown colour {c!r}; known: {sorted(COLOURS)}")
        for s in self.shapes:
            shape_polygon(s, 0, 0, 1)
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {self.min_objects}, {self.max_objects}")
        if self.holdout_split not in HOLDOUT_SPLITS:
            raise ValueError(f"shapes holdout_split {self.holdout_split!r}; known: {HOLDOUT_SPLITS}")
        for combo in self.holdout_combos:
            self._check_combo(combo, "holdout_combos")
        for item in self.holdout_questions:
            kind, _, combo = item.partition(":")
            if kind not in QUESTION_KINDS:
                raise ValueError(f"holdout_questions entry {item!r}: kind {kind!r} is not one of {QUESTION_KINDS}")
            self._check_combo(combo, "holdout_questions")
        if len(set(self.holdout_combos)) >= len(self.colours) * len(self.shapes):
            raise ValueError("holdout_combos holds out every colour x shape combination: nothing left to train on")

    def _check_combo(self, combo: str, field: str) -> None:
        colour, _, shape = combo.partition(" ")
        if colour not in self.colours or shape not in self.shapes:
            raise ValueError(f"{field} entry {combo!r} is not '<colour> <shape>' of colours {self.colours} and "
                             f"shapes {self.shapes}")


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


def questions(objects: list[dict[str, Any]], cfg: ShapesConfig, rng: np.random.Generator
              ) -> list[tuple[str, str, str]]:
    """(kind, question, answer) triples whose answers are single words, so scoring is exact; kinds are
    QUESTION_KINDS."""
    first = objects[0]
    qa = []
    if len(objects) == 1:
        qa += [("color", "What color is the shape?", first["colour"]), ("shape", "What shape is it?", first["shape"])]
    else:
        qa.append(("count", "How many shapes are there?", NUMBER_WORDS[len(objects)]))
    other_colour = str(rng.choice(cfg.colours))
    present = any(o["colour"] == other_colour and o["shape"] == first["shape"] for o in objects)
    qa.append(("exists", f"Is there a {other_colour} {first['shape']}?", "yes" if present else "no"))
    if cfg.with_positions:
        qa.append(("where", f"Where is the {first['colour']} {first['shape']}?", POSITIONS[first["cell"]]))
    return qa


def combo(o: dict[str, Any]) -> str:
    """An object's "colour shape", the unit of `holdout_combos`."""
    return f"{o['colour']} {o['shape']}"


def scene_unseen(objects: list[dict[str, Any]], cfg: ShapesConfig) -> bool:
    """Whether the scene shows a held-out colour x shape combination (so its caption names one)."""
    return any(combo(o) in cfg.holdout_combos for o in objects)


def question_unseen(objects: list[dict[str, Any]], kind: str, question: str, cfg: ShapesConfig) -> bool:
    """Whether a question about this scene is a held-out composition: the scene itself is held out, the question
    names a held-out combo, or its (kind, first object) pair is in `holdout_questions`."""
    return (scene_unseen(objects, cfg) or any(c in question for c in cfg.holdout_combos)
            or f"{kind}:{combo(objects[0])}" in cfg.holdout_questions)


class ShapesSource:
    """A grain random-access source of synthetic scenes: record i is a pure function of (seed, i, config).

    Records: {"image": uint8 (H, W, 3), "caption": str, "question": str, "answer": str, "question_kind": str,
    "shape": int, "colour": int, "count": int, "index": int, "caption_unseen": bool, "qa_unseen": bool}; one
    question per record, chosen deterministically. Train and eval splits use different seeds, so held-out
    scenes are new draws; compositions never trained on are set by `holdout_combos` / `holdout_questions` (see
    the module docstring).
    """

    def __init__(self, config: ShapesConfig | None = None, *, num_records: int = 10_000, seed: int = 0):
        self.config = config or ShapesConfig()
        self.num_records = int(num_records)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_records

    def _draw(self, index: int) -> tuple[list[dict[str, Any]], tuple[str, str, str]]:
        """(objects, (kind, question, answer)) of record `index`; a "seen" split redraws held-out scenes, then
        held-out questions about the scene it kept."""
        cfg, rng = self.config, np.random.default_rng([self.seed, int(index)])
        seen_only = cfg.holdout_split == "seen"
        for _ in range(MAX_REDRAWS):
            objects = sample_scene(cfg, rng)
            if not (seen_only and scene_unseen(objects, cfg)):
                break
        else:
            raise ValueError(f"shapes record {index}: no seen scene in {MAX_REDRAWS} draws (holdout_combos too wide)")
        for _ in range(MAX_REDRAWS):
            qa = questions(objects, cfg, rng)
            kind, question, answer = qa[int(rng.integers(len(qa)))]
            if not (seen_only and question_unseen(objects, kind, question, cfg)):
                return objects, (kind, question, answer)
        raise ValueError(f"shapes record {index}: no seen question in {MAX_REDRAWS} draws (holdout_questions too "
                         "wide)")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"shapes record {index} out of range [0, {self.num_records})")
        objects, (kind, question, answer) = self._draw(index)
        first = objects[0]
        return {
            "image": render(objects, self.config.resolution),
            "caption": caption(objects, self.config.with_positions),
            "question": question,
            "answer": answer,
            "question_kind": kind,
            "shape": self.config.shapes.index(first["shape"]),
            "colour": self.config.colours.index(first["colour"]),
            "count": len(objects),
            "index": int(index),
            "caption_unseen": scene_unseen(objects, self.config),
            "qa_unseen": question_unseen(objects, kind, question, self.config),
        }

    def scene(self, index: int) -> list[dict[str, Any]]:
        """The object list behind record `index` (for evaluators that need the ground truth)."""
        return self._draw(index)[0]
