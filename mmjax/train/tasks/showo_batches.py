"""Show-o's input side: the frozen image tokenizer, the text tokenizer and vocabulary, and mixed T2I/LM/MMU bundles.

A Show-o step trains on three sub-batches at once, in the order [t2i; lm; mmu], with per-device sizes set by the
recipe (15/4/10 in pre-training stage 1). The trainer batches ONE source, so the unit here is a *bundle*: one
record of the bundle source holds `mix.t2i` T2I examples, `mix.lm` text examples and `mix.mmu` MMU examples,
drawn (with replacement, from the record's own seeded generator, so resumption is exact) from three separate
sources. `config.batch_size` counts bundles; with one bundle per device the step sees exactly the reference's
per-GPU mix. Examples (`showo_examples.ExampleBuilder`) are fixed-size numpy arrays (token ids padded, plus
lengths); sequence layouts, masking, condition dropout and attention masks are built from them inside the jitted
step (mmjax.models.showo_layout).

Images reach the step either as pixels (tokenized on device by the frozen tokenizer held in `model_state`; for
the CLIP-ViT variant's MMU rows, CLIP pixels read by the frozen tower) or, with `tokenizer.pretokenize=True`, as
codes: read from the records of sources pre-tokenized by `python -m mmjax.tokenize_images` (records with an `ids`
field; any size), or computed once at task start for the whole of a small raw source (and CLIP features): the
fastest path for the tiny CPU configs, where re-encoding the same few thousand images every step would cost
more than the transformer.

Sources are read through `make_source`; a corpus sharded over hosts gives each host its own shards
(`mmjax.data.sharded.host_local`), from which that host's bundles draw. Bad records: a record without an image
drawn for an image part (LLaVA's text-only conversations, an expected part of such data) is replaced by another
draw, logged and counted in `ShowoBatches.skipped`; any other fault (an undecodable record or image, a missing
field, an unusable conversation) fails the bundle, which the pipeline skips and counts under the exception's
class name (`skipped/ImageDecodeError`, `skipped/UndecodableRecord`, ... in metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data import images as image_ops
from mmjax.data.sharded import host_local
from mmjax.data.sources import NoImageError, make_source
from mmjax.data.text import Tokenizer, make_tokenizer
from mmjax.models.showo_layout import SHOWO_SPECIAL_TOKENS, ShowoVocab
from mmjax.models.vq import VQConfig, VQModel, encode_to_ids
from mmjax.train import sharding

if TYPE_CHECKING:  # showo_examples imports this module's helpers
    from mmjax.train.tasks.showo_examples import ExampleBuilder

log = logging.getLogger(__name__)
PARTS = ("t2i", "lm", "mmu")
PART_FIELDS = ("source", "text_field", "class_names", "format")


# ----------------------------------------------------------------------------------------- image tokenizer
def tokenizer_config(cfg: ml_collections.ConfigDict) -> tuple[VQConfig, str]:
    """The tokenizer's VQConfig and which params to load. `config.tokenizer.model` when set (released weights;
    and every run records its tokenizer's fields there, so sampling needs only the run), else the tokenizer
    run's `config.json` (`model` section; EMA params when that run kept them)."""
    fields = configlib.to_dict(cfg.model) if "model" in cfg else {}
    key = "params"
    if cfg.workdir and os.path.isfile(os.path.join(cfg.workdir, "config.json")):
        with open(os.path.join(cfg.workdir, "config.json")) as f:
            run = json.load(f)
        key = "ema_params" if run.get("ema_decay") else "params"
        if fields and VQConfig.from_dict(fields) != VQConfig.from_dict(run["model"]):
            raise configlib.ConfigError(f"config.tokenizer.model differs from {cfg.workdir}/config.json's model")
        fields = fields or run["model"]
    elif cfg.workdir and not fields:
        raise FileNotFoundError(f"config.tokenizer.workdir={cfg.workdir!r} has no config.json (train one with "
                                "python -m mmjax.train --config configs/vq/tiny.py --workdir ...)")
    return (VQConfig.from_dict(fields) if fields else VQConfig()), key


def vq_fields(vq_config: VQConfig) -> dict[str, Any]:
    """VQConfig as plain config values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(vq_config).items()}


def load_tokenizer_variables(cfg: ml_collections.ConfigDict, vq_config: VQConfig, key: str) -> dict[str, Any]:
    """The frozen tokenizer's variables as numpy ({"params": ...} [+ "vq_stats"]): from a tokenizer run's newest
    checkpoint, or from Show-o's released MAGVIT-v2 weights converted to safetensors."""
    if cfg.workdir:
        from mmjax.train.checkpoint import load_params

        params = jax.tree.map(np.asarray, load_params(cfg.workdir, key=key))
        variables = {"params": {k: v for k, v in params.items() if k != "discriminator"}}
        if vq_config.quantizer == "vq":
            variables["vq_stats"] = jax.tree.map(np.asarray, load_params(cfg.workdir, key="model_state")["vq_stats"])
        return variables
    if cfg.converted:
        from mmjax.convert.magvitv2 import load_magvitv2

        return {"params": load_magvitv2(cfg.converted, vq_config)}
    raise configlib.ConfigError("config.tokenizer: set workdir (a tokenizer run) or converted (released weights)")


# ---------------------------------------------------------------------------------------------- vocabulary
def text_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer:
    """The text tokenizer of `config.text` (byte-level needs no file; Phi-1.5's is an HF tokenizer.json)."""
    return make_tokenizer(cfg.kind, cfg.path or None, bos=cfg.bos or None, eos=cfg.eos or None)


def make_vocab(cfg: ml_collections.ConfigDict, codebook_size: int, tokenizer: Tokenizer | None) -> ShowoVocab:
    """Show-o's id layout. Text size / bos / eos are the config's when set (the Phi-1.5 configs state 50295 /
    50256 so no file is read to build the model), else the text tokenizer's."""
    def pick(value: int, fallback: Any, name: str) -> int:
        if value >= 0:
            return int(value)
        if tokenizer is None:
            raise configlib.ConfigError(f"config.vocab.{name} is unset and no text tokenizer was given")
        return int(fallback())
    return ShowoVocab(text_vocab_size=pick(cfg.text_vocab_size, lambda: tokenizer.vocab_size, "text_vocab_size"),
                      special_tokens=tuple(cfg.special_tokens or SHOWO_SPECIAL_TOKENS),
                      codebook_size=int(cfg.codebook_size or codebook_size),
                      bos_id=pick(cfg.bos_id, lambda: tokenizer.bos_id, "bos_id"),
                      eos_id=pick(cfg.eos_id, lambda: tokenizer.eos_id, "eos_id"))


# ------------------------------------------------------------------------------------------------- examples
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


# Pixel fields of examples and what pretokenization stores instead: tokenizer pixels -> codes, CLIP pixels ->
# the frozen tower's features.
ENCODED = {"image": "codes", "clip_image": "clip"}


def pretokenize(source: Any, builder: ExampleBuilder, parts: list[str], encoders: Mapping[str, Any], batch: int = 256
               ) -> dict[str, dict[str, np.ndarray]]:
    """Every example of a (small) source for each of `parts`, built once, pixel fields replaced by their encodings
    (`encoders`: {"image": pixels -> codes, "clip_image": pixels -> features}): {part: {field: (n, ...)}}. Each
    record is read (rendered, decoded) and each of its images encoded once, however many parts share it."""
    n = len(source)
    if n > 200_000:
        raise configlib.ConfigError(f"pretokenize is for small sources; {parts} have {n} records "
                                    "(set tokenizer.pretokenize=False to tokenize on device)")
    columns: dict[str, dict[str, list[np.ndarray]]] = {p: {} for p in parts}
    pixels: dict[str, list[np.ndarray]] = {}
    reads: dict[str, set[str]] = {p: set() for p in parts}  # the pixel fields each part uses
    for i in range(n):
        record = source[i]
        if record is None:
            raise ValueError(f"pretokenize: record {i} of the {parts} source is undecodable")
        for part in parts:
            for k, val in builder.build(part, record).items():
                if k not in ENCODED:
                    columns[part].setdefault(k, []).append(val)
                    continue
                reads[part].add(k)
                if len(pixels.setdefault(k, [])) == i:
                    pixels[k].append(val)
    encoded = {}
    for k, images in pixels.items():
        chunks = [sharding.to_host(encoders[k](np.stack(images[i:i + batch]))) for i in range(0, n, batch)]
        encoded[k] = np.concatenate(chunks)
    if "image" in encoded:
        encoded["image"] = encoded["image"].reshape(n, -1).astype(np.int32)
    out = {}
    for part in parts:
        out[part] = {k: np.stack(v) for k, v in columns[part].items()}
        out[part].update({ENCODED[k]: encoded[k] for k in reads[part]})
    log.info("pretokenized %d examples for %s", n, "/".join(parts))
    return out


class UndecodableRecord(ValueError):
    """A part's source returned None for a drawn record (its reason was logged where it was read)."""


def carries_codes(source: Any, part: str, num_image_tokens: int, probe: int = 16) -> bool:
    """Whether a source's records carry pre-computed codes (`ids`), judged by its first readable record among
    the first `probe`; codes of another grid than the task's (another tokenizer resolution) are refused."""
    for i in range(min(probe, len(source))):
        record = source[i]
        if record is None:
            continue
        if "ids" not in record:
            return False
        size = int(np.size(record["ids"]))
        if size != num_image_tokens:
            raise configlib.ConfigError(f"the {part} source's records carry {size} codes per image but the task's "
                                        f"rows hold {num_image_tokens} (tokenized at another image size?)")
        return True
    return False


class BundleSource:
    """Record i of the bundle source is just {"index": i}; `ShowoBatches.bundle` draws the examples."""

    def __init__(self, length: int):
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": int(index)}


class ShowoBatches:
    """The sources of one split and the bundle maker: `bundle(i, rng)` -> {"t2i_text": (mix.t2i, S), ...}."""

    def __init__(self, parts: Mapping[str, Any], mix: Mapping[str, int], builder: ExampleBuilder,
                 encoders: Mapping[str, Any] | None):
        self.mix = {p: int(mix.get(p, 0)) for p in PARTS}
        self.builder = builder
        self.sources: dict[str, Any] = {}
        self.cache: dict[str, dict[str, np.ndarray]] = {}
        self._keys: dict[str, str] = {}
        by_key: dict[str, Any] = {}
        for part in PARTS:
            if not self.mix[part]:
                continue
            if part not in parts:
                raise configlib.ConfigError(f"mix.{part} > 0 but the split has no {part} data section")
            configlib.check_known(parts[part], PART_FIELDS, f"data.*.{part}")
            key = json.dumps(configlib.to_dict(parts[part]["source"]), sort_keys=True)
            if key not in by_key:  # T2I / LM / MMU often share one source (tiny configs): open it once
                by_key[key] = open_source(parts[part]["source"])
            self.sources[part], self._keys[part] = by_key[key], key
        image_tokens = builder.seq_len - builder.s - 3   # a row is [pad|text S][soi][N codes][eoi]
        for key, source in by_key.items():
            parts_here = [p for p in self.sources if self._keys[p] == key]
            image_parts = [p for p in parts_here if p != "lm"]
            if image_parts and carries_codes(source, image_parts[0], image_tokens):
                if encoders is None:
                    raise configlib.ConfigError(f"the {'/'.join(image_parts)} source holds pre-tokenized records "
                                                "(`ids`); set tokenizer.pretokenize=True to train on their codes")
            elif encoders is not None:
                self.cache.update(pretokenize(source, builder, parts_here, encoders))
        self.skipped = 0

    def __len__(self) -> int:
        return max(len(self.sources[p]) // self.mix[p] for p in self.sources)

    def size(self, part: str) -> int:
        return len(next(iter(self.cache[part].values()))) if part in self.cache else len(self.sources[part])

    def bundle(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in self.sources:
            count, n = self.mix[part], self.size(part)
            rows = rng.integers(n, size=count) if rng is not None else (index * count + np.arange(count)) % n
            if part in self.cache:
                fields = {k: v[rows] for k, v in self.cache[part].items()}
            else:
                examples = [self._example(part, int(r), rng) for r in rows]
                fields = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            out.update({f"{part}_{k}": v for k, v in fields.items()})
        return out


    def _example(self, part: str, row: int, rng: np.random.Generator | None, tries: int = 16
                 ) -> dict[str, np.ndarray]:
        """One example; a record without an image for an image part is logged, counted in `skipped` and replaced
        by another draw; any other fault propagates (the pipeline skips the bundle and counts the reason)."""
        source = self.sources[part]
        for _ in range(tries):
            record = source[row]
            if record is None:
                raise UndecodableRecord(f"{part} record {row} could not be read (see the warning before)")
            try:
                return self.builder.build(part, record)
            except NoImageError as e:
                self.skipped += 1
                if self.skipped <= 5:
                    log.warning("skipping %s record %d (%s: %s)", part, row, type(e).__name__, e)
                row = int(rng.integers(len(source))) if rng is not None else (row + 1) % len(source)
        raise NoImageError(f"{tries} consecutive {part} records without an image; last index {row}")


def open_source(cfg: Any) -> Any:
    """The records this host draws from: `make_source` (LLaVA JSON included), a sharded corpus' own shards."""
    return host_local(make_source(cfg))


def bundle_spec(mix: Mapping[str, int], s: int, seq_len: int, image_size: int, num_image_tokens: int,
                pretokenized: bool, mmu_text_len: int | None = None, clip: Any = None
                ) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shapes and dtypes of one bundle, without touching any data (abstract init, compile-only checks). With a
    `clip` tower (`showo_clip.ClipTower`) MMU rows carry CLIP pixels or, pretokenized, its features."""
    image = ((num_image_tokens,), np.int32) if pretokenized else ((image_size, image_size, 3), np.float32)
    image_key = "codes" if pretokenized else "image"
    if clip is None:
        mmu_image = {image_key: image}
    elif pretokenized:
        mmu_image = {"clip": ((clip.num_features, clip.width), np.float32)}
    else:
        mmu_image = {"clip_image": ((clip.image_size, clip.image_size, 3), np.float32)}
    t = s if mmu_text_len is None else mmu_text_len
    fields = {"t2i": {"text": ((s,), np.int32), "text_len": ((), np.int32), image_key: image},
              "lm": {"text": ((seq_len,), np.int32), "text_len": ((), np.int32)},
              "mmu": {"conv": ((t,), np.int32), "target": ((t,), np.bool_), "conv_len": ((), np.int32),
                      **mmu_image}}
    return {f"{p}_{k}": ((int(mix[p]), *shape), dtype) for p in PARTS if mix.get(p, 0)
            for k, (shape, dtype) in fields[p].items()}


def encoder_fn(vq_model: VQModel, variables: Any):
    """A host-callable images -> codes (B, h, w) for pretokenization and evaluation."""
    return lambda images: encode_to_ids(vq_model, variables, images)
