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
(`mmjax.data.sharded.host_local`), from which that host's bundles draw. Bad records cost only themselves: a drawn
record that cannot be used (unreadable, null / URL / corrupt image, missing or non-UTF-8 text, a text-only LLaVA
record drawn for an image part, an unusable conversation) is replaced by another draw, and the bundle reports
it to the pipeline (`pipeline.RECORDS_KEY`), which counts records, not bundles, per reason (the exception's class
name: `skipped/ImageDecodeError`, `skipped/NoImageError`, ... in metrics.jsonl), each logged with the part, the
shard / file and the row or key. Pre-tokenizing a small source leaves its bad records out in the same way; those
counts go out with the first bundle built in the process that pre-tokenized (with `data_workers` > 0 the worker
processes build the bundles, and those counts are only logged, at start). Only `REDRAWS` failures in a row for
one example fail its bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data.sharded import host_local
from mmjax.data.sources import make_source
from mmjax.data.text import Tokenizer, make_tokenizer
from mmjax.models.showo_layout import SHOWO_SPECIAL_TOKENS, ShowoVocab
from mmjax.models.vq import VQConfig, VQModel, encode_to_ids
from mmjax.train import sharding
from mmjax.train.tasks.showo_examples import ExampleBuilder

log = logging.getLogger(__name__)
PARTS = ("t2i", "lm", "mmu")
PART_FIELDS = ("source", "text_field", "class_names", "format", "questions", "recaption", "window")
REDRAWS = 16  # draws per example before its bundle is given up (each bad record is counted on its own)


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
# Pixel fields of examples and what pretokenization stores instead: tokenizer pixels -> codes, CLIP pixels ->
# the frozen tower's features.
ENCODED = {"image": "codes", "clip_image": "clip"}


def record_name(source: Any, index: int, record: Any = None) -> str:
    """Where a record lives, for skip messages: the source's own `where` (shard / file and row or offset) when it
    has one, else the record's key or id, else its index."""
    where = getattr(source, "where", None)
    if callable(where):
        try:
            return f"record {index} ({where(index)})"
        except Exception:  # a name for a message must never fail the read itself
            pass
    if isinstance(record, Mapping):
        for field in ("key", "id", "__key__"):
            if record.get(field) not in (None, ""):
                return f"record {index} ({field} {record[field]!r})"
    return f"record {index}"


def build_example(builder: ExampleBuilder, source: Any, part: str, index: int, rng: np.random.Generator | None
                  ) -> tuple[dict[str, np.ndarray] | None, tuple[str, str] | None]:
    """(example, None) or (None, (reason, detail)) for record `index` of a part's source. Reasons are the
    exception's class name ("undecodable" for a record the source could not read); the detail names the part and
    the record (`record_name`). Config errors are not the record's fault: they propagate."""
    record = source[index]
    if record is None:
        return None, ("undecodable", f"{part} {record_name(source, index)}: the source could not read it")
    try:
        return builder.build(part, record, rng), None
    except configlib.ConfigError:
        raise
    except Exception as e:  # one bad record costs only itself: counted, named, replaced by the caller
        return None, (type(e).__name__, f"{part} {record_name(source, index, record)}: {e}"[:400])


def pretokenize(source: Any, builder: ExampleBuilder, parts: list[str], encoders: Mapping[str, Any], batch: int = 256
               ) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[str, str]]]:
    """Every usable example of a (small) source for each of `parts`, built once, pixel fields replaced by their
    encodings (`encoders`: {"image": pixels -> codes, "clip_image": pixels -> features}): ({part: {field: (n_part,
    ...)}}, skips). A record that fails for a part (unreadable, no image, bad text, corrupt image) is left out of
    that part only and listed in `skips` as (reason, detail); each record's images are encoded once, however many
    parts share it."""
    n = len(source)
    if n > 200_000:
        raise configlib.ConfigError(f"pretokenize is for small sources; {parts} have {n} records "
                                    "(set tokenizer.pretokenize=False to tokenize on device)")
    columns: dict[str, dict[str, list[np.ndarray]]] = {p: {} for p in parts}
    pixels: dict[str, list[np.ndarray]] = {}
    rows: dict[str, dict[str, list[int]]] = {p: {} for p in parts}   # part -> pixel field -> rows of pixels[field]
    skips: list[tuple[str, str]] = []
    for i in range(n):
        seen: dict[str, int] = {}   # pixel field -> its row in pixels[field] for this record
        for part in parts:
            example, why = build_example(builder, source, part, i, None)
            if example is None:
                skips.append(why)
                continue
            for k, val in example.items():
                if k not in ENCODED:
                    columns[part].setdefault(k, []).append(val)
                    continue
                if k not in seen:
                    seen[k] = len(pixels.setdefault(k, []))
                    pixels[k].append(val)
                rows[part].setdefault(k, []).append(seen[k])
    encoded = {}
    for k, images in pixels.items():
        chunks = [sharding.to_host(encoders[k](np.stack(images[j:j + batch])))
                  for j in range(0, len(images), batch)]
        encoded[k] = np.concatenate(chunks)
    if "image" in encoded:
        encoded["image"] = encoded["image"].reshape(len(encoded["image"]), -1).astype(np.int32)
    out = {}
    for part in parts:
        if not columns[part]:
            reasons = sorted({r for r, _ in skips})
            raise configlib.ConfigError(f"pretokenize: none of the {n} records of the {part} source is usable "
                                        f"(reasons: {', '.join(reasons)}; e.g. {skips[0][1] if skips else '-'})")
        out[part] = {k: np.stack(v) for k, v in columns[part].items()}
        out[part].update({ENCODED[k]: encoded[k][np.asarray(r)] for k, r in rows[part].items()})
    for reason, detail in skips[:5]:
        log.warning("pretokenize: skipping %s: %s", reason, detail)
    if skips:
        counts: dict[str, int] = {}
        for reason, _ in skips:
            counts[reason] = counts.get(reason, 0) + 1
        log.warning("pretokenize: %d examples of %d records skipped (%s); the first training bundle carries "
                    "these counts", len(skips), n, ", ".join(f"{r} x{c}" for r, c in sorted(counts.items())))
    log.info("pretokenized %s examples for %s", "/".join(str(len(next(iter(out[p].values())))) for p in parts),
             "/".join(parts))
    return out, skips


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
        self.pending: list[tuple[str, str]] = []   # skips found while pre-tokenizing, reported by the next bundle
        image_tokens = builder.seq_len - builder.s - 3   # a row is [pad|text S][soi][N codes][eoi]
        for key, source in by_key.items():
            parts_here = [p for p in self.sources if self._keys[p] == key]
            image_parts = [p for p in parts_here if p != "lm"]
            if image_parts and carries_codes(source, image_parts[0], image_tokens):
                if encoders is None:
                    raise configlib.ConfigError(f"the {'/'.join(image_parts)} source holds pre-tokenized records "
                                                "(`ids`); set tokenizer.pretokenize=True to train on their codes")
            elif encoders is not None:
                cache, skips = pretokenize(source, builder, parts_here, encoders)
                self.cache.update(cache)
                self.pending.extend(skips)

    def __len__(self) -> int:
        return max(len(self.sources[p]) // self.mix[p] for p in self.sources)

    def __getstate__(self) -> dict[str, Any]:
        # grain worker processes get copies: only the process that pre-tokenized reports the start-up skips
        return {**self.__dict__, "pending": []}

    def size(self, part: str) -> int:
        return len(next(iter(self.cache[part].values()))) if part in self.cache else len(self.sources[part])

    def bundle(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """The arrays of bundle `index` (its record counts dropped; see `counted_bundle`)."""
        return self.counted_bundle(index, rng)[0]

    def counted_bundle(self, index: int, rng: np.random.Generator | None
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The bundle's arrays and its record counts {"kept": records used, "skipped": [(reason, detail), ...]}
        (the pipeline counts them as records, per reason: `pipeline.RECORDS_KEY`). A drawn record that cannot be
        used is replaced by another draw (`REDRAWS` in a row at most, then the bundle fails and the pipeline
        counts that)."""
        out: dict[str, np.ndarray] = {}
        skipped, self.pending = self.pending, []
        kept = 0
        for part in self.sources:
            count, n = self.mix[part], self.size(part)
            rows = rng.integers(n, size=count) if rng is not None else (index * count + np.arange(count)) % n
            if part in self.cache:
                fields = {k: v[rows] for k, v in self.cache[part].items()}
            else:
                examples = [self._example(part, int(r), rng, skipped) for r in rows]
                fields = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            kept += count
            out.update({f"{part}_{k}": v for k, v in fields.items()})
        return out, {"kept": kept, "skipped": skipped}

    def _example(self, part: str, row: int, rng: np.random.Generator | None, skipped: list[tuple[str, str]]
                 ) -> dict[str, np.ndarray]:
        """The example of record `row`, or of the next draws while records fail; each failure is appended to
        `skipped` as (reason, detail naming the record)."""
        source = self.sources[part]
        for _ in range(REDRAWS):
            example, why = build_example(self.builder, source, part, row, rng)
            if example is not None:
                return example
            skipped.append(why)
            row = int(rng.integers(len(source))) if rng is not None else (row + 1) % len(source)
        raise DrawsExhausted(f"{REDRAWS} {part} records in a row could not be used; the last: {why[0]}: {why[1]}")


class DrawsExhausted(ValueError):
    """Every one of `REDRAWS` draws for one example failed: the bundle is skipped (and its records counted)."""


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
