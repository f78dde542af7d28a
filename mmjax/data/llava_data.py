"""LLaVA data: the JSON / JSONL + image-folder source, and one sample -> fixed-shape model arrays.

Source. LLaVA's data files (`blip_laion_cc_sbu_558k.json`, `llava_v1_5_mix665k.json`, ...) are JSON lists of
`{"id", "image"?: "rel/path.jpg" | [paths], "conversations": [{"from", "value"}, ...]}` with the images under
one folder; OneVision-style data also comes as JSONL, one record per line. `LlavaJsonSource` reads either
(cheap: records are parsed when read) and returns records with resolved image paths and `where` (file and
record index / line number, for error messages).

Bad input is skipped and counted by `mmjax.data.pipeline` under the name of the exception preprocessing
raises, so each fault has its own class: a missing file (`MissingImageError`), undecodable or truncated image
data (`ImageDecodeError`), an image over the pixel limit (`ImageTooLargeError`), a conversation that cannot be
rendered (`ConversationError`, `EmptyConversationError`), an image no placeholder refers to
(`UnusedImageError`), a placeholder without an image (`UnmatchedPlaceholderError`), more images than image slots
(`TooManyImagesError`), an image needing more tiles than the config allows (`TooManyTilesError`), a sample with
no supervised token left after truncation (`NoSupervisedTokensError`). Errors raised inside `record_context`
name the record's file and index / line. Records the source cannot parse (a malformed JSONL line, a record
that is not an object with a `conversations` list) come back as None and are counted as "undecodable" after a
warning that names the file and line.

Sample. `LlavaProcessor` turns (conversation, images) into the arrays `mmjax.models.llava.Llava` takes: labels
from `mmjax.data.conversation`, each `<image>` expanded to exactly the number of tokens its token map realises
(`mmjax.layout.token_maps`, counts from `mmjax.layout.anyres.anyres_token_layout`), the uint8 tiles in (slots, tiles)
order, and the per-position gather map. Training samples are right-padded to `max_len`; generation prompts
are left-padded per batch by `collate_prompts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mmjax.data import images as im
from mmjax.data.conversation import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    build_prompt,
    move_image_first,
    tokenize_conversation,
)
from mmjax.data.errors import DataError
from mmjax.data.text import Tokenizer
from mmjax.layout.anyres import CLIP_MEAN_RGB, AnyResLayout, anyres_token_layout, grid_pinpoints
from mmjax.layout.token_maps import TokenMap, anyres_map, base_map, place_maps, video_map

log = logging.getLogger(__name__)
RECORD_FIELDS = ("id", "image", "conversations")
FIELD_CHECK_RECORDS = 100   # records whose field names are checked when a LLaVA JSON opens
IMAGE_MODES = ("llava1", "pad", "squash", "anyres")


class MissingImageError(im.ImageDecodeError):
    """A record names an image file that does not exist."""


class ImageCountError(ValueError):
    """A record's `<image>` placeholders do not match its images, or its images do not fit the model."""


class UnusedImageError(ImageCountError):
    """A record has more images than `<image>` placeholders (the reference would silently drop the image)."""


class UnmatchedPlaceholderError(ImageCountError):
    """A record has more `<image>` placeholders than images."""


class TooManyImagesError(ImageCountError):
    """A record has more images than the model has image slots (`image.max_images`)."""


class TooManyTilesError(ImageCountError):
    """An image needs more tiles than the config allows (`image.max_tiles`)."""


class NoSupervisedTokensError(ValueError):
    """A sample keeps no supervised token (e.g. its answer was truncated away): it would teach nothing."""


class LlavaJsonSource:
    """Random access over a LLaVA JSON list or JSONL file; records {"id", "conversations", "image_paths",
    "where"}, or None for a record that cannot be parsed (logged with its file and line)."""

    def __init__(self, json_path: str | os.PathLike, image_folder: str | os.PathLike = ""):
        self.json_path, self.image_folder = os.fspath(json_path), os.fspath(image_folder)
        self.jsonl = self.json_path.endswith(".jsonl")
        try:
            with open(self.json_path, encoding="utf-8") as f:
                if self.jsonl:  # (line number, text) of every non-blank line, parsed when read
                    self.records: list[Any] = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
                else:
                    self.records = json.load(f)
        except (OSError, ValueError) as e:
            reason = "no such file" if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"
            raise DataError(f"cannot read LLaVA JSON {self.json_path!r}: {reason}") from None
        if not isinstance(self.records, list):
            raise DataError(f"{self.json_path}: expected a JSON list of records, got {type(self.records).__name__}")
        self._check_field_names()

    def _check_field_names(self) -> None:
        """Refuses a file whose first records spell a field like one LLaVA reads but not as it (`imges`,
        `conversation`): read as they are, such records would train on text alone or be skipped one by one.
        Other extra fields (a `source`, a `model`) are allowed, as in LLaVA's own data."""
        for index in range(min(len(self.records), FIELD_CHECK_RECORDS)):
            r = self.records[index]
            where = f"{self.json_path} record {index}"
            if self.jsonl:
                where = f"{self.json_path} line {r[0]}"
                try:
                    r = json.loads(r[1])
                except ValueError:
                    continue
            if not isinstance(r, dict):
                continue
            for key in r:
                close = difflib.get_close_matches(key, RECORD_FIELDS[1:], 1, 0.75)   # an `idx` is no misspelt `id`
                if key not in RECORD_FIELDS and close and close[0] not in r:
                    raise DataError(f"{where} has a field {key!r}: did you mean {close[0]!r}? LLaVA records have "
                                    f"{list(RECORD_FIELDS)}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        r = self.records[index]
        where = f"{self.json_path} record {index}"
        if self.jsonl:
            line_number, line = r
            where = f"{self.json_path} line {line_number}"
            try:
                r = json.loads(line)
            except ValueError as e:
                log.warning("%s: malformed JSON (%s); skipped", where, e)
                return None
        conv = r.get("conversations") if isinstance(r, dict) else None
        image = r.get("image", []) if isinstance(r, dict) else None
        paths = [image] if isinstance(image, str) else image
        if not isinstance(conv, list) or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            log.warning("%s is malformed (needs a 'conversations' list and an optional 'image' path or list of "
                        "paths); skipped", where)
            return None
        record_id = str(r.get("id", index))
        return {"id": record_id, "conversations": conv, "where": f"{where} (id {record_id!r})",
                "image_paths": [os.path.join(self.image_folder, p) for p in paths]}


@contextlib.contextmanager
def record_context(record: Mapping[str, Any]) -> Iterator[None]:
    """Prefixes the message of a ValueError raised inside with where the record comes from (its `where`: file
    and index / line, else its id), keeping the error's class, which is what the pipeline counts skips by."""
    where = record.get("where") or (f"record {record['id']!r}" if "id" in record else "")
    try:
        yield
    except ValueError as e:
        if where and len(e.args) == 1 and isinstance(e.args[0], str) and not e.args[0].startswith(where):
            e.args = (f"{where}: {e.args[0]}",)
        raise


def load_images(record: Mapping[str, Any], max_pixels: int = im.MAX_IMAGE_PIXELS) -> list[np.ndarray]:
    """Decodes a source record's images; MissingImageError / ImageDecodeError / ImageTooLargeError name the
    record and the file."""
    out = []
    with record_context(record):
        for path in record.get("image_paths", []):
            if not os.path.isfile(path):
                raise MissingImageError(f"image file {path!r} does not exist")
            out.append(im.decode_image(path, max_pixels=max_pixels))
    return out


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How images become tiles and tokens (the model-side counterpart is the token map).

    mode: llava1 (short side + centre crop), pad (LLaVA-1.5: mean-colour square), squash (plain resize),
    anyres (base view + tiles on the best of `pinpoints`, (w, h)). `anyres_max`: OneVision's anyres_max_N
    (0 = off). `multi_image`: "same" treats each image of a multi-image sample like a single one; "base" keeps
    only its base view + newline, padded to a square with `fill` like the reference's multi-image 'pad'
    (OneVision). `max_tiles` 0 = enough for the largest pinpoint. `taps`: gather taps per token (4 when
    bilinear resizing happens: anyres_max, video). `fill`: the pad colour, `images.pad_fill(image_mean)` of the
    tower. `max_pixels`: larger images are refused (`ImageTooLargeError`) before decoding.
    """

    mode: str = "pad"
    size: int = 336
    patch_size: int = 14
    pinpoints: tuple[tuple[int, int], ...] = ()
    anyres_max: int = 0
    newline: bool = False
    multi_image: str = "same"
    max_images: int = 1
    max_tiles: int = 0
    taps: int = 1
    fill: tuple[int, int, int] = CLIP_MEAN_RGB
    max_pixels: int = im.MAX_IMAGE_PIXELS

    def __post_init__(self):
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"image mode {self.mode!r} not in {IMAGE_MODES}")
        if self.mode == "anyres" and not self.pinpoints:
            raise ValueError("image mode 'anyres' needs pinpoints")
        if self.multi_image not in ("same", "base"):
            raise ValueError(f"multi_image {self.multi_image!r} not in ('same', 'base')")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageConfig:
        d = dict(d)
        if isinstance(d.get("pinpoints"), str):
            d["pinpoints"] = grid_pinpoints(d["pinpoints"], d.get("size", 336))
        d["pinpoints"] = tuple((int(w), int(h)) for w, h in d.get("pinpoints", ()))
        if "fill" in d:
            d["fill"] = tuple(int(c) for c in d["fill"])
        return cls(**d)

    @property
    def side(self) -> int:
        """Patches per tile side (SigLIP 384/14: 27, the conv drops the last 6 pixels)."""
        return self.size // self.patch_size

    @property
    def tiles(self) -> int:
        """Tiles per image slot."""
        if self.max_tiles:
            return self.max_tiles
        if self.mode != "anyres":
            return 1
        return 1 + max((w // self.size) * (h // self.size) for w, h in self.pinpoints)

    @property
    def usable_pinpoints(self) -> tuple[tuple[int, int], ...]:
        """The pinpoints whose grid (plus the base view) fits `max_tiles` (all of them when it is 0).

        Shapes are fixed in JAX, so every sample pays for `tiles` tower passes whether it uses them or not: a
        OneVision config sized for its largest 6x6 grid would encode 37 tiles for every image (a 768 px image
        needs 5). Capping the tiles makes an image bigger than the cap take the best grid within it, instead of
        being refused; docs/llava.md lists this as a difference from the reference.
        """
        if not self.max_tiles:
            return self.pinpoints
        fits = tuple((w, h) for w, h in self.pinpoints if 1 + (w // self.size) * (h // self.size) <= self.max_tiles)
        if not fits:
            raise ValueError(f"image.max_tiles={self.max_tiles} admits none of the pinpoints {self.pinpoints}")
        return fits

    def layout(self, width: int, height: int) -> AnyResLayout:
        return anyres_token_layout((width, height), self.usable_pinpoints, self.size, self.patch_size,
                                      max_tiles=self.anyres_max or None, newline=self.newline)


def process_media(item: np.ndarray, cfg: ImageConfig, alone: bool = True) -> tuple[np.ndarray, TokenMap]:
    """One image (H, W, 3) or video (F, H, W, 3), uint8 -> (tiles (n, size, size, 3), its token map)."""
    item = np.asarray(item)
    if item.ndim == 4:  # video frames: squash each frame to the tile size, 2x2 bilinear pooling in the model
        frames = np.stack([im.resize(f, cfg.size, cfg.size) for f in item])
        return frames, video_map(len(frames), cfg.side, newline=True)
    if cfg.mode == "anyres" and alone:
        layout = cfg.layout(item.shape[1], item.shape[0])
        return im.anyres_tiles(item, cfg.usable_pinpoints, cfg.size), anyres_map(layout)
    if cfg.mode == "pad" or not alone:  # the reference pads every image of a multi-image sample
        tile = im.llava15_image(item, cfg.size, fill=cfg.fill)
    elif cfg.mode == "llava1":
        tile = im.llava1_image(item, cfg.size)
    else:
        tile = im.resize(item, cfg.size, cfg.size)
    return tile[None], base_map(cfg.side, newline=cfg.newline and not alone)


class LlavaProcessor:
    """(conversation, images) -> model arrays; see the module docstring."""

    def __init__(self, image_cfg: ImageConfig, tokenizer: Tokenizer, template: str, max_len: int,
                 image_token_id: int, *, image_first: bool = False):
        self.cfg, self.tokenizer, self.template = image_cfg, tokenizer, template
        self.max_len, self.image_token_id, self.image_first = max_len, image_token_id, image_first
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    # -- media -------------------------------------------------------------------------------------------------
    def media(self, items: Sequence[np.ndarray]) -> tuple[np.ndarray, list[TokenMap]]:
        """Tiles of all images in slot order (max_images, tiles, size, size, 3) uint8, and their token maps."""
        cfg = self.cfg
        if len(items) > cfg.max_images:
            raise TooManyImagesError(f"{len(items)} images but the model has {cfg.max_images} image slots "
                                     "(image.max_images)")
        pixels = np.zeros((cfg.max_images, cfg.tiles, cfg.size, cfg.size, 3), np.uint8)
        alone = cfg.multi_image == "same" or len(items) == 1
        maps = []
        for slot, item in enumerate(items):
            tiles, tmap = process_media(item, cfg, alone)
            if len(tiles) > cfg.tiles:
                raise TooManyTilesError(f"image {slot} needs {len(tiles)} tiles, the config allows {cfg.tiles}")
            pixels[slot, : len(tiles)] = tiles
            maps.append(tmap)
        return pixels, maps

    def _expand(self, ids: np.ndarray, labels: np.ndarray, maps: list[TokenMap]):
        """Each image id -> its map's token count (labels IGNORE_INDEX). Returns ids, labels, spans
        (start, slot, map) and the expanded position of every input token."""
        where = np.flatnonzero(ids == self.image_token_id)
        if len(where) < len(maps):
            raise UnusedImageError(f"{len(maps)} images but only {len(where)} {IMAGE_PLACEHOLDER} placeholders")
        if len(where) > len(maps):
            raise UnmatchedPlaceholderError(f"{len(where)} {IMAGE_PLACEHOLDER} placeholders but only "
                                            f"{len(maps)} images")
        width = np.ones(len(ids), np.int64)
        width[where] = [tmap.num_tokens for tmap in maps]
        start = np.cumsum(width) - width
        length = int(width.sum())
        text = width == 1
        text[where] = False
        out_ids = np.full(length, self.image_token_id, np.int32)
        out_labels = np.full(length, IGNORE_INDEX, np.int32)
        out_ids[start[text]], out_labels[start[text]] = ids[text], labels[text]
        spans = [(int(start[at]), slot, tmap) for slot, (at, tmap) in enumerate(zip(where, maps))]
        return out_ids, out_labels, spans, start

    def _conversation(self, conv: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return move_image_first(conv) if self.image_first else list(conv)

    # -- training samples ----------------------------------------------------------------------------------------
    def training_example(self, conv: Sequence[Mapping[str, Any]], items: Sequence[np.ndarray]
                         ) -> dict[str, np.ndarray]:
        """Right-padded (max_len) ids, labels, mask, pixels, image_index, image_weight, num_images."""
        pixels, maps = self.media(items)
        tok = tokenize_conversation(self._conversation(conv), self.template, self.tokenizer, 1 << 30,
                                    self.image_token_id)
        ids, labels, spans, positions = self._expand(tok.input_ids, tok.labels, maps)
        cut = min(len(ids), self.max_len)
        for start, _, tmap in spans:  # never cut through an image: drop it (and what follows) whole
            if start < cut < start + tmap.num_tokens:
                cut = start
        spans = [s for s in spans if s[0] + s[2].num_tokens <= cut]
        if not np.any(positions[tok.answer_mask] < cut):
            raise NoSupervisedTokensError(f"no answer token left within max_len={self.max_len} "
                                          f"(sequence of {len(ids)} positions)")
        n = self.max_len
        out_ids = np.full(n, self.pad_id, np.int32)
        out_labels = np.full(n, IGNORE_INDEX, np.int32)
        out_ids[:cut], out_labels[:cut] = ids[:cut], labels[:cut]
        index, weight = self._maps(n, spans)
        return {"ids": out_ids, "labels": out_labels, "mask": np.arange(n) < cut, "pixels": pixels,
                "image_index": index, "image_weight": weight, "num_images": np.int32(len(spans))}

    def _maps(self, length: int, spans: list[tuple[int, int, TokenMap]]) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        return place_maps(length, spans, tiles_per_slot=cfg.tiles, patches_per_tile=cfg.side ** 2,
                          max_images=cfg.max_images, taps=cfg.taps)

    def example_shapes(self) -> dict[str, np.ndarray]:
        """Zeros of a training sample's shapes and dtypes (for abstract init)."""
        cfg, n = self.cfg, self.max_len
        return {"ids": np.zeros(n, np.int32), "labels": np.zeros(n, np.int32), "mask": np.zeros(n, bool),
                "pixels": np.zeros((cfg.max_images, cfg.tiles, cfg.size, cfg.size, 3), np.uint8),
                "image_index": np.zeros((n, cfg.taps), np.int32),
                "image_weight": np.zeros((n, cfg.taps), np.float32), "num_images": np.int32(0)}

    # -- generation prompts ------------------------------------------------------------------------------------
    def prompt_example(self, conv: str | Sequence[Mapping[str, Any]], items: Sequence[np.ndarray]
                       ) -> dict[str, Any]:
        """An unpadded inference prompt: ids ending with the assistant prefix, its pixels and image spans. A bare
        question gets one `<image>` line per image in front (LLaVA's evaluation prompts)."""
        if isinstance(conv, str):
            text = conv if IMAGE_PLACEHOLDER in conv else f"{IMAGE_PLACEHOLDER}\n" * len(items) + conv
            conv = [{"from": "human", "value": text}]
        pixels, maps = self.media(items)
        ids = build_prompt(self._conversation(conv), self.template, self.tokenizer, self.image_token_id)
        ids, _, spans, _ = self._expand(ids, np.zeros_like(ids), maps)
        return {"ids": ids, "pixels": pixels, "spans": spans}


def collate_prompts(examples: Sequence[Mapping[str, Any]], processor: LlavaProcessor, *, bucket: int = 64,
                    batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Left-pads prompts to a common length (rounded up to `bucket`, to bound recompilation) and fills the batch
    up to `batch_size` with copies of the last prompt (`valid` = 0)."""
    n = len(examples)
    batch_size = batch_size or n
    examples = list(examples) + [examples[-1]] * (batch_size - n)
    length = bucket * math.ceil(max(len(e["ids"]) for e in examples) / bucket)
    ids = np.full((batch_size, length), processor.pad_id, np.int32)
    prompt_valid = np.zeros((batch_size, length), bool)
    index, weight = [], []
    for row, e in enumerate(examples):
        shift = length - len(e["ids"])
        ids[row, shift:] = e["ids"]
        prompt_valid[row, shift:] = True
        i, w = processor._maps(length, [(s + shift, slot, m) for s, slot, m in e["spans"]])
        index.append(i)
        weight.append(w)
    return {"ids": ids, "prompt_valid": prompt_valid, "pixels": np.stack([e["pixels"] for e in examples]),
            "image_index": np.stack(index), "image_weight": np.stack(weight),
            "valid": (np.arange(batch_size) < n).astype(np.float32)}
