"""Text pre-training of a decoder-only LM (`mmjax.models.lm`) on packed documents: next-token cross-entropy.

Data: `config.data.<split>` names a text source (`mmjax.data.packing.make_document_source`: shapes_captions |
jsonl | arrayrecord | parquet, e.g. RefinedWeb's `content` column); one record is a group of
`packing.docs_per_group` documents, which `preprocess` tokenizes (`config.tokenizer`, byte-level by default;
bos/eos added per `packing.add_bos/add_eos`) and packs into a (`packing.rows`, `packing.seq_len`) block. A batch is
(batch_size, rows, seq_len); the loss reshapes it to rows.

Inside jit the block-diagonal causal mask is given as `segment_ids` (a causal `BlockMask`: splash on TPU, its dense
form elsewhere) and `positions` restart per document, so
a packed row computes exactly what each document would alone (tests/train/test_lm_task.py checks the logits).
Logits and the loss are float32. Metrics: loss (nats per predicted token), perplexity, token accuracy, and the
packing bookkeeping (fill, documents, split / short / bad documents, overflow tokens) so nothing vanishes
silently. The final evaluation also reports `unigram_entropy` (nats/token of the training corpus' unigram
distribution, same tokenization, same predicted tokens) and `unigram_cross_entropy` (the eval targets under that
distribution): the loss of the best model that ignores context, which a trained LM must beat by a wide margin.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax import configlib
from mmjax.data.packing import document_groups, make_document_source, pack_documents
from mmjax.data.sharded import host_local
from mmjax.data.text import Tokenizer, make_tokenizer
from mmjax.models.lm import LM, LMConfig, get_config
from mmjax.nn.block_mask import CAUSAL, BlockMask
from mmjax.train.tasks.base import EvalContext, Metrics, Task

TOKENIZER_FIELDS = ("kind", "path", "special_tokens", "bos", "eos", "pad")
PACKING_FIELDS = ("seq_len", "rows", "docs_per_group", "add_bos", "add_eos")
EVALUATION_FIELDS = ("groups", "unigram_docs")
# Per-example bookkeeping that preprocess emits next to the packed arrays; summed into the metrics.
COUNTS = ("documents", "bad_documents", "short_documents", "split_documents", "overflow_tokens")


def default_config() -> dict[str, ml_collections.ConfigDict]:
    """The task's config sections with their defaults (a config file updates them)."""
    return dict(
        tokenizer=ml_collections.ConfigDict(dict(kind="byte", path="", special_tokens=(), bos="", eos="", pad="")),
        packing=ml_collections.ConfigDict(dict(seq_len=128, rows=4, docs_per_group=8, add_bos=True,
                                               add_eos=True)),
        evaluation=ml_collections.ConfigDict(dict(groups=0, unigram_docs=-1)),
        init_from="",
    )


def tokenizer_from_config(cfg: ml_collections.ConfigDict) -> Tokenizer:
    """`config.tokenizer`: kind byte | sentencepiece | hf, path to the file ("" for byte), token overrides."""
    configlib.check_known(cfg, TOKENIZER_FIELDS, "tokenizer")
    return make_tokenizer(cfg.kind, cfg.path or None, tuple(cfg.special_tokens), bos=cfg.bos or None,
                          eos=cfg.eos or None, pad=cfg.pad or None)


def lm_config_from(model: ml_collections.ConfigDict | dict, vocab_size: int) -> LMConfig:
    """`config.model` = {preset, any LMConfig field}. Without vocab_size the preset's stands (Phi-1.5's 51200
    rows hold its 50295-id tokenizer); vocab_size 0 takes the tokenizer's size exactly (tiny byte models)."""
    fields = dict(model)
    preset = fields.pop("preset", None)
    if not preset:
        raise configlib.ConfigError("config.model.preset is required (a name in mmjax.models.lm.PRESETS)")
    if fields.get("vocab_size") == 0:
        fields["vocab_size"] = vocab_size
    cfg = get_config(preset, **fields)
    if cfg.vocab_size < vocab_size:
        raise configlib.ConfigError(f"config.model.vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
                                    f"vocabulary ({vocab_size} ids)")
    return cfg


class LMTask(Task):
    """Next-token pre-training on packed text; `config.task = "lm"` (sections: see `default_config`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        configlib.check_known(config.packing, PACKING_FIELDS, "packing")
        configlib.check_known(config.evaluation, EVALUATION_FIELDS, "evaluation")
        configlib.check_known(config.tokenizer, TOKENIZER_FIELDS, "tokenizer")
        # The tokenizer is read here when the model's vocabulary is the tokenizer's (vocab_size 0) or it needs no
        # file; a file-based one with a given vocabulary is read with the first text, so compile-only checks of
        # released configs need no tokenizer file. Either way `special_ids` checks it against the config.
        eager = dict(config.model).get("vocab_size") == 0 or config.tokenizer.kind == "byte"
        self.lm_config = lm_config_from(config.model, self.tokenizer.vocab_size if eager else 0)
        self.model = LM(self.lm_config)
        pack = config.packing
        self.seq_len, self.rows = int(pack.seq_len), int(pack.rows)
        if eager:
            _ = self.special_ids  # a misconfigured tokenizer is refused at construction
        self._documents: dict[str, Any] = {}
        self._unigram: dict[str, float] | None = None

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_config(self.config.tokenizer)

    @functools.cached_property
    def special_ids(self) -> tuple[list[int], list[int], int]:
        """(ids before each document, ids after it, pad id), the tokenizer checked against the config."""
        if self.lm_config.vocab_size < self.tokenizer.vocab_size:
            raise configlib.ConfigError(f"config.model.vocab_size {self.lm_config.vocab_size} is smaller than the "
                                        f"tokenizer's vocabulary ({self.tokenizer.vocab_size} ids)")
        pack, pad = self.config.packing, self.tokenizer.pad_id
        return self._special(pack.add_bos, "bos"), self._special(pack.add_eos, "eos"), 0 if pad is None else pad

    @property
    def pad_id(self) -> int:
        return self.special_ids[2]

    def _special(self, wanted: bool, name: str) -> list[int]:
        if not wanted:
            return []
        token_id = getattr(self.tokenizer, f"{name}_id")
        if token_id is None:
            raise configlib.ConfigError(f"config.packing.add_{name}=True but {self.tokenizer!r} has no {name} "
                                        f"token; set config.tokenizer.{name} or add_{name}=False")
        return [token_id]

    # -- data ---------------------------------------------------------------------------------------------------
    def documents(self, split: str) -> Any:
        """The split's text source (record -> str | None), opened once (a JSONL index is built only once)."""
        if split not in self.config.data:
            raise KeyError(f"config.data has no split {split!r}; has {sorted(self.config.data.keys())}")
        if split not in self._documents:
            self._documents[split] = make_document_source(self.config.data[split])
        return self._documents[split]

    def source(self, split: str) -> Any:
        return document_groups(self.documents(split), self.config.packing.docs_per_group)

    def encode(self, text: str) -> list[int]:
        """One document's token ids, with bos/eos as configured."""
        prefix, suffix, _ = self.special_ids
        return [*prefix, *self.tokenizer.encode(text), *suffix]

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """Tokenizes a group and packs it; training shuffles the group's documents so each epoch packs anew."""
        texts = record["texts"]
        docs = [self.encode(t) for t in texts if t is not None]
        if rng is not None:
            docs = [docs[i] for i in rng.permutation(len(docs))]
        packed = pack_documents(docs, self.seq_len, self.rows, self.pad_id)
        counts = dict(vars(packed.stats), bad_documents=sum(t is None for t in texts))
        return {**packed.arrays(), **{k: np.int32(counts[k]) for k in COUNTS}}

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Shapes and dtypes of a packed block, from an empty pack: no data or tokenizer is read."""
        example = {**pack_documents([], self.seq_len, self.rows).arrays(), **{k: np.int32(0) for k in COUNTS}}
        return {k: np.zeros((batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in example.items()}

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        rows = lambda x: x.reshape(-1, x.shape[-1])[:1]
        return self.model.init(rng, rows(batch["tokens"]), positions=rows(batch["positions"]),
                               mask=BlockMask.uniform(CAUSAL, rows(batch["segment_ids"])))

    def pretrained_variables(self) -> dict[str, Any] | None:
        """`config.init_from`: a HF checkpoint directory (or .safetensors) of the same architecture."""
        if not self.config.init_from:
            return None
        from mmjax.convert.hf_lm import load_hf_lm

        _, params = load_hf_lm(self.config.init_from, self.lm_config)
        return {"params": params}

    def token_losses(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(nll, correct, weights), each shaped like batch["tokens"]: float32 per-slot losses of the packed rows."""
        shape = batch["tokens"].shape
        rows = lambda x: x.reshape(-1, shape[-1])
        segment_ids = rows(batch["segment_ids"])
        logits = self.model.apply({"params": params}, rows(batch["tokens"]), positions=rows(batch["positions"]),
                                  mask=BlockMask.uniform(CAUSAL, segment_ids), is_causal=True)
        targets = rows(batch["targets"])
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        # Packing already zeroes pads and never pairs a slot with another document's token; the segment
        # test keeps that true for any producer of these batches.
        weights = rows(batch["weights"]).astype(jnp.float32) * (segment_ids != 0)
        return nll.reshape(shape), correct.reshape(shape), weights.reshape(shape)

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        nll, correct, weights = self.token_losses(params, batch)
        tokens = jnp.sum(weights)
        loss = jnp.sum(nll * weights) / jnp.maximum(tokens, 1.0)
        metrics = {"perplexity": jnp.exp(loss), "accuracy": jnp.sum(correct * weights) / jnp.maximum(tokens, 1.0),
                   "tokens": tokens, "fill": tokens / weights.size,
                   **{k: jnp.sum(batch[k]).astype(jnp.float32) for k in COUNTS}}
        return loss, (metrics, model_state)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def eval_step(self, params, model_state, batch) -> Metrics:
        """Sums over the valid groups of an eval batch: nll, correct predictions, tokens and the counts."""
        nll, correct, weights = self.token_losses(params, batch)
        valid = batch["valid"].astype(jnp.float32)
        weights = weights * valid[:, None, None]
        return {"nll": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights), "tokens": jnp.sum(weights),
                **{k: jnp.sum(batch[k] * valid) for k in COUNTS}}

    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        """Token-weighted eval loss (nats/token), perplexity and accuracy, plus the unigram baseline."""
        groups = int(self.config.evaluation.groups) or None
        totals: dict[str, float] = {}
        for batch in ctx.batches(self.source("eval"), self.preprocess, limit=groups):
            for k, v in self.jitted_eval_step(params, model_state, batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        tokens = totals.get("tokens", 0.0)
        if not tokens:
            raise ValueError("LM evaluation saw no token (empty or fully skipped eval split)")
        loss = totals["nll"] / tokens
        out = {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "accuracy": totals["correct"] / tokens,
               "tokens": tokens, **{k: totals[k] for k in COUNTS}}
        return {**out, **self.unigram_baseline()}

    def _target_counts(self, documents: Any, count: int) -> np.ndarray:
        """How often each id is a prediction target (every token but a document's first) in documents[:count]."""
        counts = np.zeros(self.lm_config.vocab_size, np.int64)
        for start in range(0, count, 4096):
            ids = [self.encode(t)[1:] for t in (documents[i] for i in range(start, min(start + 4096, count)))
                   if t is not None]
            flat = np.fromiter((i for doc in ids for i in doc), np.int64)
            counts += np.bincount(flat, minlength=counts.size)
        return counts

    def unigram_baseline(self) -> dict[str, float]:
        """`unigram_entropy` of the training corpus' target ids (first `evaluation.unigram_docs` documents, -1 =
        all, 0 = skip) and `unigram_cross_entropy` of the evaluated eval documents under it (add-1/2 smoothed)."""
        limit = int(self.config.evaluation.unigram_docs)
        if limit == 0:
            return {}
        if self._unigram is None:
            train = host_local(self.documents("train"))  # this host's documents (all of them on one host)
            counts = self._target_counts(train, len(train) if limit < 0 else min(limit, len(train)))
            p = counts[counts > 0] / counts.sum()
            evaluated = host_local(self.documents("eval"))
            groups = int(self.config.evaluation.groups)
            n_eval = len(evaluated) if not groups else min(len(evaluated), groups * self.config.packing.docs_per_group)
            q = self._target_counts(evaluated, n_eval)
            smoothed = (counts + 0.5) / (counts.sum() + 0.5 * counts.size)
            self._unigram = {"unigram_entropy": float(-(p * np.log(p)).sum()),
                             "unigram_cross_entropy": float(-(q * np.log(smoothed)).sum() / max(q.sum(), 1))}
        return self._unigram
