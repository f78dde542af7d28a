"""LLaVA training: next-token loss on the supervised (assistant) tokens of image-grounded conversations.

Stages differ only in the config: stage 1 trains the projector alone (`optim.frozen` = everything else, as the
reference's `tune_mm_mlp_adapter` / `mm_tunable_parts=mm_mlp_adapter`), stage 2 the projector and LM (vision
frozen, or trained at its own rate through `optim.lr_mult`). Weights enter a fresh run
through `pretrained_variables` (`config.init`): a previous run's workdir (stage 2 from stage 1), a HF
LLaVA-family checkpoint, or a HF CLIP/SigLIP tower plus a HF LM (the start of stage 1).

Data: `config.data.<split>` is either `llava_json` (`json`, `images`: LLaVA's JSON / JSONL + image folder, see
`mmjax.data.llava_data`) or any mmjax source of records with `image` and `caption` / `question` + `answer`
(synthetic shapes): `config.text.shapes_task` = caption (stage 1, `plain` template) or qa. Bad records raise the
named errors of `mmjax.data.llava_data` (with the record's file and line), which the pipeline skips and counts.

Evaluation: teacher-forced loss and token accuracy on `config.eval.num_examples` records of the eval split and,
with `config.eval.generate`, greedy answers to its questions (batched KV-cache generation) scored by exact match
after light normalisation: `vqa_accuracy`, a fraction in [0, 1]; the answers go to `samples/answers_<step>.jsonl`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mmjax import paths
from mmjax.data import pipeline
from mmjax.data.conversation import IGNORE_INDEX, IMAGE_PLACEHOLDER, get_template, stop_token_ids
from mmjax.data.images import MAX_IMAGE_PIXELS, decode_image, pad_fill
from mmjax.data.llava_data import (
    ImageConfig,
    LlavaJsonSource,
    LlavaProcessor,
    collate_prompts,
    load_images,
    record_context,
)
from mmjax.data.sources import DataError, NoCaptionError
from mmjax.data.text import Tokenizer, make_tokenizer
from mmjax.eval.vqa import normalize_gqa_answer
from mmjax.models.generate import generate
from mmjax.models.llava import Llava, LlavaConfig
from mmjax.models.lm import LM
from mmjax.train import sharding
from mmjax.train.tasks.base import EvalContext, Metrics, Task

Conversation = list[dict[str, str]]


class LlavaTask(Task):
    """The model is built from the config alone: image positions carry the model's own marker id (-200, never a
    vocabulary id), and the tokenizer file is read only when text is (data, generation) unless the LM's
    vocabulary size is 0 (= the tokenizer's). So compile-only checks need no tokenizer file."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = config.model.to_dict()
        if not model["lm"].get("vocab_size", 1):  # 0: the tokenizer's vocabulary (tiny byte-level runs)
            model["lm"]["vocab_size"] = self.tokenizer.vocab_size
        self.model_cfg = LlavaConfig.from_dict(model)
        self.model = Llava(self.model_cfg)
        # pad-to-square fills with the tower's mean colour, as the reference does
        self.image_cfg = ImageConfig.from_dict({**config.image.to_dict(), "fill": pad_fill(self.model_cfg.image_mean)})
        if self.image_cfg.patch_size != self.model_cfg.patch_size:
            raise ValueError(f"config.image.patch_size {self.image_cfg.patch_size} != the tower's "
                             f"{self.model_cfg.patch_size}")
        train = config.data.get("train")
        if train is not None and train.get("name") == "llava_json" and not train.get("json"):
            self.source("train")   # refuses the missing file now, before the model is traced
        self._embed = jax.jit(lambda p, ids, pix, idx, w: self.model.apply(
            {"params": p}, ids, pix, idx, w, method=Llava.embed))

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        text = self.config.text
        specials = dict.fromkeys([IMAGE_PLACEHOLDER, *get_template(text.template).special_tokens,
                                  *text.special_tokens])
        return make_tokenizer(text.tokenizer, text.tokenizer_path or None, special_tokens=list(specials))

    @functools.cached_property
    def processor(self) -> LlavaProcessor:
        text = self.config.text
        return LlavaProcessor(self.image_cfg, self.tokenizer, text.template, text.max_len,
                              self.model_cfg.image_token_id, image_first=text.image_first)

    @functools.cached_property
    def stop_tokens(self) -> tuple[int, ...]:
        return tuple(stop_token_ids(get_template(self.config.text.template), self.tokenizer))

    # -- data ---------------------------------------------------------------------------------------------------
    def source(self, split: str) -> Any:
        cfg = self.config.data.get(split)
        if cfg is not None and cfg.get("name") == "llava_json":
            if not cfg.json and split == "eval":  # no held-out file given: evaluate on the training file's head
                cfg = self.config.data.train
            if not cfg.json:
                raise DataError(f"config.data.{split}.json is empty: pass --config.data.{split}.json=FILE "
                                f"(and --config.data.{split}.images=DIR)")
            source = LlavaJsonSource(cfg.json, cfg.get("images", ""))
            self.check_source(source, split)
            return source
        return super().source(split)

    @property
    def required_fields(self) -> tuple[tuple[str, ...], ...]:
        """LLaVA conversations, or image-text records as the configured `text.shapes_task` reads them."""
        text = ("caption",) if self.config.text.shapes_task == "caption" else ("question", "answer")
        return ("conversations",), ("image", *text)

    def conversation(self, record: Mapping[str, Any]) -> tuple[Conversation, list[np.ndarray]]:
        """A record as (LLaVA conversation, images): LLaVA JSON records as they are, shapes-like records as a
        caption (stage 1) or question/answer (stage 2) turn pair."""
        where, max_pixels = pipeline.record_where(record) or None, self.image_cfg.max_pixels
        if "conversations" in record:
            images = (load_images(record, max_pixels) if "image_paths" in record
                      else [decode_image(x, name=where, max_pixels=max_pixels) for x in record.get("images", [])])
            return list(record["conversations"]), images
        images = [decode_image(record["image"], name=where, max_pixels=max_pixels)] if "image" in record else []
        prefix = IMAGE_PLACEHOLDER + "\n" if images else ""
        if self.config.text.shapes_task == "caption":
            if not isinstance(record.get("caption"), str) or not record["caption"].strip():
                raise NoCaptionError(f"the record has no caption (fields: {sorted(record)})")
            return [{"from": "human", "value": IMAGE_PLACEHOLDER if images else ""},
                    {"from": "gpt", "value": record["caption"]}], images
        return [{"from": "human", "value": prefix + self.format_question(record["question"])},
                {"from": "gpt", "value": record["answer"]}], images

    def format_question(self, question: str) -> str:
        """A shapes question as the run trains on it (with `text.answer_prompt` when set)."""
        suffix = self.config.text.answer_prompt
        return f"{question}\n{suffix}" if suffix else question

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        with record_context(record):
            conv, images = self.conversation(record)
            return self.processor.training_example(conv, images)

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """`LlavaProcessor.example_shapes` from the config, without the processor (which needs the tokenizer)."""
        cfg, n = self.image_cfg, self.config.text.max_len
        return {"ids": np.zeros((batch_size, n), np.int32), "labels": np.zeros((batch_size, n), np.int32),
                "mask": np.zeros((batch_size, n), bool),
                "pixels": np.zeros((batch_size, cfg.max_images, cfg.tiles, cfg.size, cfg.size, 3), np.uint8),
                "image_index": np.zeros((batch_size, n, cfg.taps), np.int32),
                "image_weight": np.zeros((batch_size, n, cfg.taps), np.float32),
                "num_images": np.zeros((batch_size,), np.int32)}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """One conversation about one random image (two tiles wide and high under AnyRes: 768 px for a 384 px
        tower), its answer long enough to fill `text.max_len`, processed exactly like training data."""
        rng = np.random.default_rng(seed)
        side = self.image_cfg.size * (2 if self.image_cfg.mode == "anyres" else 1)
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        words = " ".join(rng.choice(["red", "blue", "circle", "square", "large", "small", "left", "right"],
                                    self.config.text.max_len))
        conv = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nDescribe the image."},
                {"from": "gpt", "value": words}]
        example = self.processor.training_example(conv, [image])
        return {k: np.repeat(np.asarray(v)[None], batch_size, axis=0) for k, v in example.items()}

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        return self.model.init(rng, batch["ids"], batch["pixels"], image_index=batch["image_index"],
                               image_weight=batch["image_weight"], mask=batch["mask"])

    def pretrained_variables(self) -> dict[str, Any] | None:
        init = self.config.init
        params: dict[str, Any] = {}
        if init.workdir:  # e.g. stage 2 from stage 1: every parameter of that run's newest checkpoint
            from mmjax.train.checkpoint import load_params

            params.update(jax.device_get(load_params(init.workdir)))
        if init.hf_llava:
            from mmjax.convert.hf_llava import hf_to_params
            from mmjax.convert.safetensors_io import load_safetensors

            loaded, _ = hf_to_params(load_safetensors(init.hf_llava), self.model_cfg, image_size=self.image_cfg.size,
                                     source=init.hf_llava)
            params.update(loaded)
        if init.hf_vision:
            from mmjax.convert.hf_llava import load_vision_tower

            params["vision_tower"] = load_vision_tower(init.hf_vision, self.model_cfg, self.image_cfg.size)
        if init.hf_lm:
            from mmjax.convert.hf_lm import load_hf_lm

            params["lm"] = load_hf_lm(init.hf_lm, self.model_cfg.lm)[1]
        return {"params": params} if params else None

    def logits(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.model.apply({"params": params}, batch["ids"], batch["pixels"], image_index=batch["image_index"],
                                image_weight=batch["image_weight"], mask=batch["mask"])

    def _token_stats(self, params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
        """Per-row sums of (cross-entropy, correct, supervised) over next-token predictions."""
        logits = self.logits(params, batch)[:, :-1]
        labels = batch["labels"][:, 1:]
        supervised = labels != IGNORE_INDEX
        safe = jnp.where(supervised, labels, 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
        correct = (jnp.argmax(logits, -1) == safe) & supervised
        w = supervised.astype(jnp.float32)
        return jnp.sum(ce * w, 1), jnp.sum(correct * w, 1), jnp.sum(w, 1)

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        """Mean cross-entropy over every supervised token of the batch (the reference's token-level mean)."""
        ce, correct, count = self._token_stats(params, batch)
        total = jnp.maximum(jnp.sum(count), 1.0)
        metrics = {"token_accuracy": jnp.sum(correct) / total, "supervised_tokens": jnp.sum(count),
                   "images_per_sample": jnp.mean(batch["num_images"].astype(jnp.float32))}
        return jnp.sum(ce) / total, (metrics, model_state)

    def eval_step(self, params, model_state, batch) -> Metrics:
        ce, correct, count = self._token_stats(params, batch)
        valid = batch["valid"]
        return {"loss": jnp.sum(ce * valid), "token_accuracy": jnp.sum(correct * valid),
                "count": jnp.sum(count * valid)}

    # -- generation and evaluation ------------------------------------------------------------------------------
    def answer(self, params: Any, prompts: Sequence[tuple[Conversation | str, Sequence[np.ndarray]]], *,
               batch_size: int, max_new_tokens: int, mesh: jax.sharding.Mesh | None = None) -> list[str]:
        """Greedy answers to (conversation or question, images) prompts, in batches of `batch_size`."""
        lm, answers = LM(self.model_cfg.lm), []
        for start in range(0, len(prompts), batch_size):
            chunk = [self.processor.prompt_example(conv, images) for conv, images in prompts[start:start + batch_size]]
            batch = collate_prompts(chunk, self.processor, batch_size=batch_size)
            if mesh is not None:   # every host holds the whole chunk; each contributes its rows of it
                rows = pipeline.local_batch_size(batch_size)
                mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
                batch = sharding.global_batch({k: v[mine] for k, v in batch.items()}, mesh)
            embeds = self._embed(params, batch["ids"], batch["pixels"], batch["image_index"], batch["image_weight"])
            out = generate(lm, params["lm"], batch["ids"], prompt_valid=batch["prompt_valid"], prompt_embeds=embeds,
                           max_new_tokens=max_new_tokens, stop_tokens=self.stop_tokens,
                           pad_id=self.processor.pad_id)
            tokens, lengths = sharding.to_host(out.tokens), sharding.to_host(out.lengths)
            for row in range(len(chunk)):
                ids = [t for t in tokens[row, : lengths[row]] if t not in self.stop_tokens]
                answers.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return answers

    def qa_prompt(self, record: Mapping[str, Any]) -> tuple[Conversation, list[np.ndarray], str]:
        """(prompt conversation, images, reference answer) of an eval record: its first question and answer."""
        conv, images = self.conversation(record)
        return conv[:1], images, conv[1]["value"]

    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config.eval
        source = self.source("eval")
        limit = min(cfg.num_examples or len(source), len(source))
        step = self.jitted_eval_step
        totals: dict[str, float] = {}
        for batch in ctx.batches(source, self.preprocess, limit=limit):
            for k, v in step(params, model_state, batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError("evaluation saw no supervised token (empty or fully skipped eval split)")
        metrics = {k: v / count for k, v in totals.items()}
        if cfg.generate:
            prompts = []
            for i in range(limit):
                try:
                    record = source[i]
                    if record is not None:
                        prompts.append(self.qa_prompt(record))
                except (ValueError, KeyError, IndexError) as e:  # a bad eval record is counted, not fatal
                    ctx.counter.add(type(e).__name__)
            answers = self.answer(params, [(c, im) for c, im, _ in prompts], batch_size=ctx.batch_size,
                                  max_new_tokens=cfg.max_new_tokens, mesh=ctx.mesh)
            hits = [normalize_gqa_answer(a) == normalize_gqa_answer(ref) for a, (_, _, ref) in zip(answers, prompts)]
            metrics["vqa_accuracy"] = float(np.mean(hits)) if hits else 0.0
            self._write_answers(ctx, prompts, answers, hits)
        return metrics

    def _write_answers(self, ctx: EvalContext, prompts, answers, hits) -> None:
        if jax.process_index() != 0:
            return
        paths.make_dirs(os.path.join(ctx.workdir, "samples"))  # the workdir may be in gs://
        with epath.Path(ctx.workdir, "samples", f"answers_{ctx.step}.jsonl").open("w") as f:
            for (conv, _, ref), answer, hit in zip(prompts, answers, hits):
                f.write(json.dumps({"question": conv[0]["value"], "answer": ref, "prediction": answer,
                                    "correct": bool(hit)}) + "\n")


def base_config(stage: int, **trainer_overrides: Any) -> ml_collections.ConfigDict:
    """Every field a LLaVA config may set (so a misspelt override fails), with stage-dependent freezing:
    stage 1 trains the projector only (not even `image_newline`: the reference's stage 1 tunes
    `mm_mlp_adapter` alone); stage 2 everything but the vision tower. Configs fill in the rest."""
    from mmjax.train.defaults import trainer_config

    c = trainer_config(task="llava", **trainer_overrides)
    c.stage = stage
    c.model = ml_collections.ConfigDict(dict(
        lm=dict(preset=""), vision=dict(preset="clip"), feature_layer=-2, drop_cls=True, projector="mlp2x_gelu",
        image_newline=False))
    c.image = ml_collections.ConfigDict(dict(mode="pad", size=336, patch_size=14, pinpoints=(), anyres_max=0,
                                             newline=False, multi_image="same", max_images=1, max_tiles=0, taps=1,
                                             max_pixels=MAX_IMAGE_PIXELS))
    c.text = ml_collections.ConfigDict(dict(
        tokenizer="byte", tokenizer_path="", special_tokens=(), template="plain" if stage == 1 else "vicuna_v1",
        max_len=2048, image_first=stage != 1, shapes_task="caption" if stage == 1 else "qa", answer_prompt=""))
    c.init = ml_collections.ConfigDict(dict(workdir="", hf_llava="", hf_vision="", hf_lm=""))
    c.eval = ml_collections.ConfigDict(dict(num_examples=256, generate=stage != 1, max_new_tokens=16))
    c.optim.update(schedule="cosine", weight_decay=0.0, clip_norm=1.0,
                   frozen=(r"^(?!projector/)",) if stage == 1 else (r"^vision_tower/",))
    return c


def warmup(total_steps: int, ratio: float = 0.03) -> int:
    """Warmup steps for the reference's `warmup_ratio` (0.03 of the run), rounded up as HF's Trainer does."""
    return max(1, math.ceil(ratio * total_steps))
