"""One record of a part's source -> that part's fixed-size arrays (text ids padded with 0 plus a length; images as
pixels), in the text formats of Show-o's two variants.

MMU formats (`config.data.<split>.mmu.format`):
  qa            shapes questions in the variant's inference format, the answer + eos supervised, so a model is
                evaluated on exactly what it trained on: `<bos> USER: \\n q ASSISTANT: a<eos>` (discrete tokens;
                the reference's `inference_mmu.py`) or `USER: q ASSISTANT: a<eos>` (CLIP-ViT: its phi1.5 prompt)
  caption       caption pre-training, all supervised (pre-training stages 1-3): `<bos> caption <eos>`, or with
                the part's `questions` (a JSON list; the paper configs name the reference's `training/questions.json`,
                its `add_caption_prompt: True`) `<bos> USER: \\n{q} ASSISTANT: {caption}<eos>`, q drawn at random
                per example, question included in the supervision, as the reference's `mmu_prompt`
  plain         LLaVA-Pretrain in Show-o-with-CLIP's `plain` format (`llava/llava_pretrain_data.py`): the human turn
                is dropped, `caption \\n <eos>` with no bos, all supervised (CLIP-ViT instruction tuning stage 1)
  conversation  LLaVA JSON with the phi1.5 template "USER: q ASSISTANT: a<|endoftext|>...", answers supervised,
                after Show-o's `preprocess_multimodal`: every `<image>` placeholder is removed from the text and
                the turn stripped, so the newline LLaVA puts after it goes too (the image is in the prefix).
                The discrete variant uses it for both tuning stages (its `llava_data_vq_unified.py` renders
                LLaVA-Pretrain with the same template), the CLIP-ViT variant in stage 2.
Text longer than the MMU text budget is cut at the budget (no eos added), as the reference's collate does.

Text preparation of the reference's loaders, switched on per part (each draw gets its own choice from the
bundle's seeded generator; without one, as in evaluation and pre-tokenized caches, the first choice is taken):
  t2i.recaption     recaptioned pairs (SA-1B / CC12M / LAION, `training/data.py`): the caption up to its first
                    "." half of the time, then the recaptioner's openings ("The image features ", ...) removed
  any list caption  JourneyDB-style records holding several captions: one of them at random, used as it is
  lm.window         RefinedWeb (`parquet/refinedweb_dataset.py`): every "\\n" removed, then a random window of
                    `window` characters (8000 in the reference) of longer documents
  class_names       ImageNet prompts: one name per line (first comma-separated name) or the reference's
                    `imagenet_label_mapping` lines `0: tench` (the whole name after the colon)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmjax import configlib
from mmjax.data import images as image_ops
from mmjax.data.conversation import IGNORE_INDEX, IMAGE_PLACEHOLDER, tokenize_conversation
from mmjax.data.sources import NoImageError
from mmjax.data.text import Tokenizer
from mmjax.models.showo_layout import ShowoVocab, mmu_question_text
from mmjax.models.showo_vit_layout import mmu_vit_question_text
from mmjax.train.tasks.showo_clip import ClipTower

MMU_FORMATS = ("qa", "caption", "plain", "conversation")
# The openings the reference's `remove_prefix` (training/data.py) deletes from recaptions, in its order; each is
# removed wherever it occurs, as its chained str.replace does.
RECAPTION_PREFIXES = ("The image features ", "The image presents ", "The image you've sent is, ",
                      "In the center of the image, ", "The image showcases ", "The image is ", "The image captures ",
                      "In the given image ", "The image portrays ", "In the image, ", "In this image, we see ",
                      "The image depicts ", "This is ", "In this image, ", "This image captures ")
_LABEL_MAPPING_LINE = re.compile(r"^\s*(\d+)\s*:(.*)$")


def pad_ids(ids: list[int] | np.ndarray, width: int, fill: int = 0) -> np.ndarray:
    out = np.full((width,), fill, np.int32)
    ids = np.asarray(ids, np.int32)[:width]
    out[: len(ids)] = ids
    return out


def decode_rgb(value: Any, where: str) -> np.ndarray:
    """An image record field (array, encoded bytes or a path) -> uint8 (H, W, 3)."""
    image = value if isinstance(value, np.ndarray) else image_ops.decode_image(value, name=where)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return image[..., :3]


def load_image(value: Any, size: int, where: str) -> np.ndarray:
    """An image record field -> float32 (size, size, 3) in [-1, 1]: bicubic shortest edge to `size` and a centre
    crop, as the reference's transform."""
    image = decode_rgb(value, where)
    if image.shape[:2] != (size, size):
        image = image_ops.center_crop(image_ops.resize_shortest_edge(image, size, method="bicubic"), size, size)
    return image.astype(np.float32) / 127.5 - 1.0


def text_value(value: Any, field: str) -> str:
    """A text field as str; bytes must be UTF-8 (a record with anything else is skipped, naming the field)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"field {field!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if value is None:
        raise ValueError(f"field {field!r} is null")
    return str(value)


def pick(rng: np.random.Generator | None, options: Sequence[Any]) -> Any:
    """One of `options` at random, or the first without a generator."""
    return options[int(rng.integers(len(options)))] if rng is not None else options[0]


def recaption(caption: str, rng: np.random.Generator | None) -> str:
    """The reference's T2I text of a recaptioned pair: the part before the first "." half of the time (never
    without a generator), then `RECAPTION_PREFIXES` removed."""
    if rng is not None and rng.random() < 0.5:
        caption = caption.split(".")[0]
    for prefix in RECAPTION_PREFIXES:
        caption = caption.replace(prefix, "")
    return caption


def text_window(text: str, width: int, rng: np.random.Generator | None) -> str:
    """RefinedWeb's rule: every newline removed; a document longer than `width` characters gives the window
    starting at a uniform offset in [0, len - width - 1] (the reference's inclusive `randint(0, len - width - 1)`;
    offset 0 without a generator)."""
    text = text.replace("\n", "")
    if width <= 0 or len(text) <= width:
        return text
    start = int(rng.integers(0, len(text) - width)) if rng is not None else 0
    return text[start:start + width]


def read_class_names(path: str) -> dict[int, str]:
    """Label -> prompt from a class-names file: the reference's `imagenet_label_mapping` (`0: tench`) or one name
    per line in label order (the first of comma-separated synonyms)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    mapped = [_LABEL_MAPPING_LINE.match(line) for line in lines]
    if mapped and all(mapped):
        return {int(m.group(1)): m.group(2).strip() for m in mapped}
    return {i: line.split(",")[0].strip() for i, line in enumerate(lines)}


def read_questions(value: Any) -> tuple[str, ...]:
    """Caption-prompt questions: a list in the config, or the path of a JSON list (the reference's
    `training/questions.json`)."""
    if isinstance(value, str):
        with open(value, encoding="utf-8") as f:
            value = json.load(f)
    questions = tuple(str(q) for q in value)
    if not questions or not all(questions):
        raise configlib.ConfigError(f"mmu.questions: expected a non-empty list of questions, got {value!r:.80}")
    return questions


def strip_image_placeholders(conv: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show-o's `preprocess_multimodal`: in every turn holding `<image>`, the placeholders are removed and the
    text stripped (the reference moves the placeholder to the front with a newline, then deletes it and
    strips again: what is left is the bare text)."""
    out = []
    for turn in conv:
        turn = dict(turn)
        value = turn.get("value")
        if isinstance(value, str) and IMAGE_PLACEHOLDER in value:
            turn["value"] = value.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append(turn)
    return out


def _conversation(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    conv = record["conversations"]
    return json.loads(conv) if isinstance(conv, str | bytes) else list(conv)


class ExampleBuilder:
    """Builds the examples of each part. `text_field` of a part's config names the record field holding the text;
    `mmu_text_len` is the MMU rows' text budget (S for the discrete variant; S + N - F - len(system) with CLIP
    features, so every row has the T2I rows' length); with a `clip` tower MMU examples carry CLIP pixels
    (`clip_image`) instead of tokenizer pixels (`image`)."""

    def __init__(self, parts: Mapping[str, Any], tokenizer: Tokenizer, vocab: ShowoVocab, max_text_len: int,
                 seq_len: int, image_size: int, mmu_text_len: int | None = None, clip: ClipTower | None = None):
        self.parts, self.tok, self.vocab = parts, tokenizer, vocab
        self.s, self.seq_len, self.image_size = max_text_len, seq_len, image_size
        self.mmu_text_len = max_text_len if mmu_text_len is None else mmu_text_len
        self.clip = clip
        self._class_names: dict[str, dict[int, str]] = {}
        questions = (parts.get("mmu") or {}).get("questions")
        self.questions = read_questions(questions) if questions else ()

    def caption(self, part: str, record: Mapping[str, Any], rng: np.random.Generator | None = None) -> str:
        """The part's text of a record: its `text_field` (one at random when it holds a list, as JourneyDB's
        captions), or the class name of its label."""
        cfg = self.parts[part]
        field = cfg.get("text_field") or "caption"
        if field in record:
            value = record[field]
            if isinstance(value, list | tuple):
                if not value:
                    raise ValueError(f"field {field!r} is an empty list")
                value = pick(rng, value)
            return text_value(value, field)
        if "label" in record and cfg.get("class_names"):  # ImageNet: the class name is the prompt
            names = self._names(cfg["class_names"])
            label = int(record["label"])
            if label not in names:
                raise ValueError(f"label {label} is not in {cfg['class_names']}")
            return names[label]
        raise KeyError(f"{part} record has no {field!r} field (has {sorted(record)})")

    def _names(self, path: str) -> dict[int, str]:
        if path not in self._class_names:
            self._class_names[path] = read_class_names(path)
        return self._class_names[path]

    def _image_value(self, record: Mapping[str, Any], part: str) -> tuple[Any, str]:
        """The record's image (`image`: array / bytes / path, or the first of LLaVA's `image_paths`) and a name
        for error messages."""
        if "image" in record:
            return record["image"], f"{part} image"
        paths = record.get("image_paths") or []
        if not paths:
            raise NoImageError(f"{part} record {record.get('id', '')!r} has no image (text-only records are "
                               "skipped)")
        return paths[0], paths[0]

    def image(self, record: Mapping[str, Any], part: str) -> np.ndarray:
        """Tokenizer pixels: float32 (image_size, image_size, 3) in [-1, 1]."""
        value, where = self._image_value(record, part)
        return load_image(value, self.image_size, where)

    def image_fields(self, record: Mapping[str, Any], part: str) -> dict[str, np.ndarray]:
        """The image as the step reads it: the codes a pre-tokenized record carries (`ids`, written by
        `python -m mmjax.tokenize_images`), flattened, else tokenizer pixels."""
        if "ids" in record:
            return {"codes": np.asarray(record["ids"], np.int32).reshape(-1)}
        return {"image": self.image(record, part)}

    def clip_image(self, record: Mapping[str, Any], part: str) -> np.ndarray:
        """CLIP pixels: float32 (vision.image_size, ..., 3), CLIP-normalised."""
        value, where = self._image_value(record, part)
        return self.clip.pixels(decode_rgb(value, where))

    def t2i(self, record: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        text = self.caption("t2i", record, rng)
        field = self.parts["t2i"].get("text_field") or "caption"
        if self.parts["t2i"].get("recaption") and not isinstance(record.get(field), list | tuple):
            text = recaption(text, rng)   # JourneyDB's caption lists are used as they are, as the reference does
        ids = self.tok.encode(text)
        return {"text": pad_ids(ids, self.s), "text_len": np.int32(min(len(ids), self.s)),
                **self.image_fields(record, "t2i")}

    def lm(self, record: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        text = self.caption("lm", record, rng)
        if self.parts["lm"].get("window"):
            text = text_window(text, int(self.parts["lm"]["window"]), rng)
        ids = self.tok.encode(text)
        return {"text": pad_ids(ids, self.seq_len), "text_len": np.int32(min(len(ids), self.seq_len))}

    def mmu_text(self, record: Mapping[str, Any], rng: np.random.Generator | None = None
                 ) -> tuple[list[int], list[bool]]:
        """(ids, supervised flags) of the record's MMU text in the configured format (module docstring)."""
        fmt, v, budget = self.parts["mmu"].get("format") or "qa", self.vocab, self.mmu_text_len
        if fmt == "qa":
            if self.clip is None:
                prompt = [v.bos_id, *self.tok.encode(mmu_question_text(text_value(record["question"], "question")))]
            else:
                prompt = self.tok.encode(mmu_vit_question_text(text_value(record["question"], "question")))
            answer = [*self.tok.encode(" " + text_value(record["answer"], "answer")), v.eos_id]
            return prompt + answer, [False] * len(prompt) + [True] * len(answer)
        if fmt == "caption":
            text = self.caption("mmu", record, rng)
            if self.questions:  # the reference: prompt + " " + caption, prompt = "USER: \n" + q + " ASSISTANT:"
                text = f"{mmu_question_text(pick(rng, self.questions))} {text}"
            ids = [v.bos_id, *self.tok.encode(text)[: budget - 2], v.eos_id]
            return ids, [True] * len(ids)
        if fmt == "plain":
            if "conversations" in record:
                turns = _conversation(record)
                if len(turns) != 2:
                    raise ValueError(f"plain format: record {record.get('id', '')!r} has {len(turns)} turns, "
                                     "LLaVA-Pretrain records have 2 (image, caption)")
                text = text_value(turns[1]["value"], "conversations")
            else:
                text = self.caption("mmu", record, rng)
            ids = [*self.tok.encode(text + "\n"), v.eos_id]
            return ids, [True] * len(ids)
        if fmt == "conversation":
            conv = strip_image_placeholders(_conversation(record))
            out = tokenize_conversation(conv, "phi1.5", self.tok, budget, None)
            if not out.num_supervised and not out.masked:
                raise ValueError("conversation has no supervised token within the MMU text budget")
            return list(out.input_ids), list(out.labels != IGNORE_INDEX)
        raise configlib.ConfigError(f"config.data.*.mmu.format={fmt!r}; known: {MMU_FORMATS}")

    def mmu(self, record: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """MMU text as (conversation ids, target flags, length), the input of the MMU row layouts, plus the image
        as the variant reads it."""
        ids, target = self.mmu_text(record, rng)
        budget = self.mmu_text_len
        out = {"conv": pad_ids(ids, budget), "target": pad_ids(target, budget).astype(bool),
               "conv_len": np.int32(min(len(ids), budget))}
        if self.clip is None:
            out.update(self.image_fields(record, "mmu"))
        else:
            out["clip_image"] = self.clip_image(record, "mmu")
        return out

    def build(self, part: str, record: Mapping[str, Any], rng: np.random.Generator | None = None
              ) -> dict[str, np.ndarray]:
        return getattr(self, part)(record, rng)
