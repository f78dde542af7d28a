"""One record of a part's source -> that part's fixed-size arrays (text ids padded with 0 plus a length; images as
pixels), in the text formats of Show-o's two variants.

MMU formats (`config.data.<split>.mmu.format`):
  qa            shapes questions in the variant's inference format, the answer + eos supervised, so a model is
                evaluated on exactly what it trained on: `<bos> USER: \\n q ASSISTANT: a<eos>` (discrete tokens;
                the reference's `inference_mmu.py`) or `USER: q ASSISTANT: a<eos>` (CLIP-ViT: its phi1.5 prompt)
  caption       caption pre-training `<bos> caption <eos>`, all supervised (pre-training stages 1-3)
  plain         LLaVA-Pretrain in Show-o-with-CLIP's `plain` format (`llava/llava_pretrain_data.py`): the human turn
                is dropped, `caption \\n <eos>` with no bos, all supervised (CLIP-ViT instruction tuning stage 1)
  conversation  LLaVA JSON with the phi1.5 template "USER: q ASSISTANT: a<|endoftext|>...", answers supervised,
                after Show-o's `preprocess_multimodal`: every `<image>` placeholder is removed from the text and
                the turn stripped, so the newline LLaVA puts after it goes too (the image is in the prefix).
                The discrete variant uses it for both tuning stages (its `llava_data_vq_unified.py` renders
                LLaVA-Pretrain with the same template), the CLIP-ViT variant in stage 2.
Text longer than the MMU text budget is cut at the budget (no eos added), as the reference's collate does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmjax import configlib
from mmjax.data.conversation import IGNORE_INDEX, IMAGE_PLACEHOLDER, tokenize_conversation
from mmjax.data.sources import NoImageError
from mmjax.data.text import Tokenizer
from mmjax.models.showo_layout import ShowoVocab, mmu_question_text
from mmjax.models.showo_vit_layout import mmu_vit_question_text
from mmjax.train.tasks.showo_batches import decode_rgb, load_image, pad_ids
from mmjax.train.tasks.showo_clip import ClipTower

MMU_FORMATS = ("qa", "caption", "plain", "conversation")


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
        self._class_names: dict[str, list[str]] = {}

    def caption(self, part: str, record: Mapping[str, Any]) -> str:
        cfg = self.parts[part]
        field = cfg.get("text_field") or "caption"
        if field in record:
            text = record[field]
            return text.decode() if isinstance(text, bytes) else str(text)
        if "label" in record and cfg.get("class_names"):  # ImageNet: the class name is the prompt
            names = self._names(cfg["class_names"])
            return names[int(record["label"])]
        raise KeyError(f"{part} record has no {field!r} field (has {sorted(record)})")

    def _names(self, path: str) -> list[str]:
        if path not in self._class_names:
            with open(path) as f:
                self._class_names[path] = [line.strip().split(",")[0] for line in f if line.strip()]
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

    def t2i(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ids = self.tok.encode(self.caption("t2i", record))
        return {"text": pad_ids(ids, self.s), "text_len": np.int32(min(len(ids), self.s)),
                **self.image_fields(record, "t2i")}

    def lm(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ids = self.tok.encode(self.caption("lm", record))
        return {"text": pad_ids(ids, self.seq_len), "text_len": np.int32(min(len(ids), self.seq_len))}

    def mmu_text(self, record: Mapping[str, Any]) -> tuple[list[int], list[bool]]:
        """(ids, supervised flags) of the record's MMU text in the configured format (module docstring)."""
        fmt, v, budget = self.parts["mmu"].get("format") or "qa", self.vocab, self.mmu_text_len
        if fmt == "qa":
            if self.clip is None:
                prompt = [v.bos_id, *self.tok.encode(mmu_question_text(str(record["question"])))]
            else:
                prompt = self.tok.encode(mmu_vit_question_text(str(record["question"])))
            answer = [*self.tok.encode(" " + str(record["answer"])), v.eos_id]
            return prompt + answer, [False] * len(prompt) + [True] * len(answer)
        if fmt == "caption":
            ids = [v.bos_id, *self.tok.encode(self.caption("mmu", record))[: budget - 2], v.eos_id]
            return ids, [True] * len(ids)
        if fmt == "plain":
            if "conversations" in record:
                turns = _conversation(record)
                if len(turns) != 2:
                    raise ValueError(f"plain format: record {record.get('id', '')!r} has {len(turns)} turns, "
                                     "LLaVA-Pretrain records have 2 (image, caption)")
                text = str(turns[1]["value"])
            else:
                text = self.caption("mmu", record)
            ids = [*self.tok.encode(text + "\n"), v.eos_id]
            return ids, [True] * len(ids)
        if fmt == "conversation":
            conv = strip_image_placeholders(_conversation(record))
            out = tokenize_conversation(conv, "phi1.5", self.tok, budget, None)
            if not out.num_supervised:
                raise ValueError("conversation has no supervised token within the MMU text budget")
            return list(out.input_ids), list(out.labels != IGNORE_INDEX)
        raise configlib.ConfigError(f"config.data.*.mmu.format={fmt!r}; known: {MMU_FORMATS}")

    def mmu(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """MMU text as (conversation ids, target flags, length), the input of the MMU row layouts, plus the image
        as the variant reads it."""
        ids, target = self.mmu_text(record)
        budget = self.mmu_text_len
        out = {"conv": pad_ids(ids, budget), "target": pad_ids(target, budget).astype(bool),
               "conv_len": np.int32(min(len(ids), budget))}
        if self.clip is None:
            out.update(self.image_fields(record, "mmu"))
        else:
            out["clip_image"] = self.clip_image(record, "mmu")
        return out

    def build(self, part: str, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return getattr(self, part)(record)
