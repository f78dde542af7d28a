"""Show-o training: masked-token prediction on images (MTP) + next-token prediction on text and on answers
about images (NTP), in one batch [t2i; lm; mmu] through one transformer.

    loss = t2i_coeff * MTP(t2i rows) + lm_coeff * NTP(lm rows) + mmu_coeff * NTP(mmu rows)      (1.0 / 0.1 / 1.0)

MTP (showo.md): each T2I image gets t ~ U(0,1), k = max(1, round(N cos(pi t / 2))) of its N tokens masked
(`maskgit.training_mask(rule="showo")`); the loss is cross-entropy over the whole vocabulary on
`logits[:, S+1:]` against labels at the SAME position (no shift), counting only masked image positions plus
`<|soi|>`/`<|eoi|>`, averaged over the T2I sub-batch. Captions are dropped with probability
`cond_dropout_prob` (CFG training). NTP: `logits[:, :-1]` against `labels[:, 1:]`. All layouts and the omni-attention
mask are built from ids inside the jitted step; images are tokenized there too, by the frozen tokenizer held in
`model_state["tokenizer"]` (or come pre-tokenized, see showo_batches).

Metrics: t2i_loss / lm_loss / mmu_loss, `t2i_masked_acc` (argmax accuracy on masked image tokens),
`mmu_token_acc` and `lm_token_acc`. Evaluation (`evaluate`): eval losses, then T2I samples for held-out prompts
(MaskGIT decoding, CFG) judged by `mmjax.eval.shapes_check` when the prompts are synthetic shapes -> `t2i_match`
(colour AND shape right), and greedy MMU answers to held-out questions -> `mmu_accuracy` (exact match after VQA
normalisation). Samples go to `workdir/samples/t2i_<step>.png` and `answers_<step>.jsonl`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mmjax import configlib, paths
from mmjax.diffusion import maskgit
from mmjax.models import showo as showo_model
from mmjax.models import showo_layout as layout
from mmjax.models.lm import LMConfig, get_config
from mmjax.models.vq import VQModel, decode_ids
from mmjax.nn.block_mask import showo_block_mask
from mmjax.train.tasks import showo_batches as sb
from mmjax.train.tasks.base import EvalContext, Metrics, Task

log = logging.getLogger(__name__)
SHOWO_FIELDS = ("max_text_len", "mix", "t2i_coeff", "lm_coeff", "mmu_coeff", "cond_dropout_prob",
                "min_masking_rate", "mask_schedule", "label_smoothing")
EVAL_FIELDS = ("num_t2i", "num_mmu", "t2i_steps", "guidance_scale", "temperature", "max_new_tokens", "loss_batches",
               "batch", "seed")
MODEL_EXTRA = ("preset", "w_clip_vit")


def lm_config_from(model: ml_collections.ConfigDict, vocab_size: int) -> LMConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in configlib.to_dict(model).items()
              if k not in MODEL_EXTRA}
    return get_config(model.preset, **{**fields, "vocab_size": vocab_size})


def _ce(logits: jax.Array, labels: jax.Array, smoothing: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed CE, summed correct, count) over positions whose label is not -100, in float32."""
    valid = labels != layout.ShowoVocab.ignore_id
    safe = jnp.where(valid, labels, 0)
    logits = logits.astype(jnp.float32)
    if smoothing:
        target = optax.smooth_labels(jax.nn.one_hot(safe, logits.shape[-1]), smoothing)
        nll = optax.softmax_cross_entropy(logits, target)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    correct = jnp.argmax(logits, -1) == safe
    return jnp.sum(nll * valid), jnp.sum(correct * valid), jnp.sum(valid).astype(jnp.float32)


def mtp_sums(logits: jax.Array, labels: jax.Array, max_text_len: int, vocab: layout.ShowoVocab,
             smoothing: float = 0.0) -> dict[str, jax.Array]:
    """MTP sums of T2I rows: CE from `<|soi|>` (index S+1) on, NO shift; the labels are -100 except at masked image
    positions and soi/eoi. Also the argmax hits on masked image tokens alone (`t2i_correct` / `t2i_masked`)."""
    lg, lab = logits[:, max_text_len + 1:], labels[:, max_text_len + 1:]
    nll, _, count = _ce(lg, lab, smoothing)
    _, correct, masked = _ce(lg, jnp.where(vocab.is_image_token(lab), lab, vocab.ignore_id), 0.0)
    return {"t2i_nll": nll, "t2i_count": count, "t2i_correct": correct, "t2i_masked": masked}


def ntp_sums(logits: jax.Array, labels: jax.Array, part: str, smoothing: float = 0.0) -> dict[str, jax.Array]:
    """NTP sums: `logits[:, :-1]` against `labels[:, 1:]`."""
    nll, correct, count = _ce(logits[:, :-1], labels[:, 1:], smoothing)
    return {f"{part}_nll": nll, f"{part}_correct": correct, f"{part}_count": count}


class ShowoTask(Task):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        configlib.check_known(config.showo, SHOWO_FIELDS, "showo")
        configlib.check_known(config.eval, EVAL_FIELDS, "eval")
        self.s = int(config.showo.max_text_len)
        self.mix = {p: int(config.showo.mix.get(p, 0)) for p in sb.PARTS}
        self.vq_config, self._tokenizer_key = sb.tokenizer_config(config.tokenizer)
        with config.unlocked():  # the resolved config.json then names the tokenizer: sampling needs only the run
            config.tokenizer.model = ml_collections.ConfigDict(sb.vq_fields(self.vq_config))
        self.vq_model = VQModel(self.vq_config)
        self.image_size = int(config.tokenizer.image_size)
        f = self.vq_config.downsample_factor
        if self.image_size % f:
            raise configlib.ConfigError(f"tokenizer.image_size {self.image_size} is not a multiple of the "
                                        f"tokenizer's downsampling factor {f}")
        self.grid = self.image_size // f
        self.n = self.grid * self.grid
        self.seq_len = self.s + self.n + 3
        needs_text = config.vocab.text_vocab_size < 0 or config.vocab.bos_id < 0 or config.vocab.eos_id < 0
        self._text_tok = sb.text_tokenizer(config.text) if needs_text else None
        self.vocab = sb.make_vocab(config.vocab, self.vq_config.num_codes, self._text_tok)
        if self.vocab.codebook_size != self.vq_config.num_codes:
            raise configlib.ConfigError(f"vocab.codebook_size {self.vocab.codebook_size} != the tokenizer's "
                                        f"{self.vq_config.num_codes} codes")
        self.lm_config = lm_config_from(config.model, self.vocab.vocab_size)
        self.model = showo_model.Showo(self.lm_config, self.vocab, w_clip_vit=bool(config.model.w_clip_vit))
        self.pretokenized = bool(config.tokenizer.pretokenize)
        self._splits: dict[str, sb.ShowoBatches] = {}
        self._tok_vars: Any = None

    # -- data ---------------------------------------------------------------------------------------------------
    @property
    def text(self):
        if self._text_tok is None:
            self._text_tok = sb.text_tokenizer(self.config.text)
        if self._text_tok.vocab_size != self.vocab.text_vocab_size:
            raise configlib.ConfigError(f"the text tokenizer has {self._text_tok.vocab_size} ids but "
                                        f"config.vocab.text_vocab_size is {self.vocab.text_vocab_size}")
        return self._text_tok

    def tokenizer_variables(self) -> Any:
        if self._tok_vars is None:
            self._tok_vars = sb.load_tokenizer_variables(self.config.tokenizer, self.vq_config, self._tokenizer_key)
        return self._tok_vars

    def batches(self, split: str) -> sb.ShowoBatches:
        if split not in self._splits:
            builder = sb.ExampleBuilder(self.config.data[split], self.text, self.vocab, self.s, self.seq_len,
                                        self.image_size)
            encode = sb.encoder_fn(self.vq_model, self.tokenizer_variables()) if self.pretokenized else None
            self._splits[split] = sb.ShowoBatches(self.config.data[split], self.mix, builder, encode)
        return self._splits[split]

    def source(self, split: str) -> Any:
        return sb.BundleSource(len(self.batches(split)))

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        return self.batches("train" if rng is not None else "eval").bundle(record["index"], rng)

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        spec = sb.bundle_spec(self.mix, self.s, self.seq_len, self.image_size, self.n, self.pretokenized)
        return {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in spec.items()}

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        lm_rng, tok_rng = jax.random.split(rng)
        params = self.model.init(lm_rng, jnp.zeros((1, self.seq_len), jnp.int32))["params"]
        images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        return {"params": params, "tokenizer": self.vq_model.init(tok_rng, images)}

    def pretrained_variables(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {"tokenizer": self.tokenizer_variables()}
        init = self.config.init
        if init.showo:
            from mmjax.convert.showo import load_showo_params

            out["params"] = load_showo_params(init.showo, self.lm_config, w_clip_vit=bool(self.config.model.w_clip_vit))
        elif init.run:
            from mmjax.train.checkpoint import load_params

            run_config = json.loads(epath.Path(init.run, "config.json").read_text())  # the run may be in gs://
            key = "ema_params" if run_config.get("ema_decay") else "params"
            out["params"] = jax.tree.map(np.asarray, load_params(init.run, key=key))
        elif init.lm:
            from mmjax.convert.showo import phi_to_showo_params

            out["params"] = {"lm": phi_to_showo_params(init.lm, self.lm_config, self.vocab, seed=self.config.seed)}
        return out

    # -- the step -----------------------------------------------------------------------------------------------
    def _codes(self, model_state: Any, batch: dict[str, jax.Array], part: str) -> jax.Array:
        flat = lambda x: x.reshape((-1, *x.shape[2:]))
        if f"{part}_codes" in batch:
            return flat(batch[f"{part}_codes"]).astype(jnp.int32)
        images = flat(batch[f"{part}_image"])
        ids = self.vq_model.apply(model_state["tokenizer"], images, method=VQModel.encode)[1]
        return jax.lax.stop_gradient(ids.reshape(ids.shape[0], -1)).astype(jnp.int32)

    def build_rows(self, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[jax.Array, jax.Array, dict[str, int]]:
        """(ids, labels, rows per bundle) of the [t2i; lm; mmu] rows of each bundle in turn, all of length S + N + 3.

        Bundle-major, so the rows of a bundle stay on the chip that holds the bundle: the row types are split
        again (attention groups, per-part losses) by position within the bundle, without moving data."""
        cfg, v, s = self.config.showo, self.vocab, self.s
        flat = lambda x: x.reshape((-1, *x.shape[2:]))
        rows, labels, sizes = [], [], {}
        if self.mix["t2i"]:
            mask_rng, drop_rng = jax.random.split(rng)
            codes = self._codes(model_state, batch, "t2i")
            _, mask, _ = maskgit.training_mask(mask_rng, codes, mask_id=v.codebook_size, rule="showo",
                                               schedule=cfg.mask_schedule, min_masking_rate=cfg.min_masking_rate)
            drop = layout.sample_condition_dropout(drop_rng, codes.shape[0], cfg.cond_dropout_prob)
            ids, lab = layout.t2i_layout(flat(batch["t2i_text"]), flat(batch["t2i_text_len"]), v.image_token(codes),
                                         v, s, image_mask=mask, drop=drop)
            rows.append(ids), labels.append(lab)
            sizes["t2i"] = self.mix["t2i"]
        if self.mix["lm"]:
            ids, lab = layout.lm_layout(flat(batch["lm_text"]), flat(batch["lm_text_len"]), v, self.seq_len)
            rows.append(ids), labels.append(lab)
            sizes["lm"] = self.mix["lm"]
        if self.mix["mmu"]:
            codes = self._codes(model_state, batch, "mmu")
            ids, lab = layout.mmu_instruct_layout(v.image_token(codes), flat(batch["mmu_conv"]),
                                                  flat(batch["mmu_target"]), flat(batch["mmu_conv_len"]), v, s)
            rows.append(ids), labels.append(lab)
            sizes["mmu"] = self.mix["mmu"]
        bundles = next(iter(batch.values())).shape[0]
        by_bundle = lambda parts: jnp.concatenate([p.reshape(bundles, -1, p.shape[-1]) for p in parts], axis=1)
        return by_bundle(rows).reshape(-1, self.seq_len), by_bundle(labels).reshape(-1, self.seq_len), sizes

    def losses(self, params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
        """Per-part sums and counts: {part}_nll, {part}_correct, {part}_count (t2i: masked image tokens only for
        the accuracy; the loss also counts soi/eoi, as the reference)."""
        ids, labels, sizes = self.build_rows(model_state, batch, rng)
        # The omni-attention mask as a static pattern per row type (splash on TPU; its dense form elsewhere).
        mask = showo_block_mask(ids, sizes, max_text_len=self.s, num_image_tokens=self.n, pad_id=self.vocab.pad_id)
        logits = self.model.apply({"params": params}, ids, mask=mask)
        smoothing = self.config.showo.label_smoothing
        out: dict[str, jax.Array] = {}
        period = sum(sizes.values())
        start = 0
        for part in sb.PARTS:
            if part not in sizes:
                continue
            lg, lab = (x.reshape(-1, period, *x.shape[1:])[:, start:start + sizes[part]].reshape(-1, *x.shape[1:])
                       for x in (logits, labels))
            start += sizes[part]
            if part == "t2i":
                out.update(mtp_sums(lg, lab, self.s, self.vocab, smoothing))
            else:
                out.update(ntp_sums(lg, lab, part, smoothing))
        return out

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        sums = self.losses(params, model_state, batch, rng)
        cfg = self.config.showo
        total, metrics = jnp.zeros((), jnp.float32), {}
        for part in sb.PARTS:
            if f"{part}_nll" not in sums:
                continue
            loss = sums[f"{part}_nll"] / jnp.maximum(sums[f"{part}_count"], 1.0)
            total = total + getattr(cfg, f"{part}_coeff") * loss
            metrics[f"{part}_loss"] = loss
        if "t2i_correct" in sums:
            metrics["t2i_masked_acc"] = sums["t2i_correct"] / jnp.maximum(sums["t2i_masked"], 1.0)
        for part in ("lm", "mmu"):
            if f"{part}_correct" in sums:
                metrics[f"{part}_token_acc"] = sums[f"{part}_correct"] / jnp.maximum(sums[f"{part}_count"], 1.0)
        return total, (metrics, model_state)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        """Eval losses on `eval.loss_batches` bundles, then T2I samples and MMU answers (see the module doc)."""
        ev, out = self.config.eval, {}
        if ev.loss_batches:
            sums: dict[str, float] = {}
            source = sb.BundleSource(len(self.batches("eval")))
            for i, batch in enumerate(ctx.batches(source, self.preprocess, limit=ev.loss_batches * ctx.batch_size)):
                batch.pop("valid")
                for k, val in self._eval_losses(params, model_state, batch, jax.random.key(ev.seed + i)).items():
                    sums[k] = sums.get(k, 0.0) + float(val)
            for part in sb.PARTS:
                if f"{part}_nll" in sums:
                    out[f"{part}_loss"] = sums[f"{part}_nll"] / max(sums[f"{part}_count"], 1.0)
            if "t2i_masked" in sums:
                out["t2i_masked_acc"] = sums["t2i_correct"] / max(sums["t2i_masked"], 1.0)
        samples = os.path.join(ctx.workdir, "samples")
        if ev.num_t2i and self.mix["t2i"]:
            out.update(self._eval_t2i(params, model_state, os.path.join(samples, f"t2i_{ctx.step}.png")))
        if ev.num_mmu and self.mix["mmu"]:
            out.update(self._eval_mmu(params, model_state, os.path.join(samples, f"answers_{ctx.step}.jsonl")))
        return out

    @functools.cached_property
    def _eval_losses(self):
        return jax.jit(self.losses)

    def generate_images(self, params: Any, model_state: Any, prompts: list[str], rng: jax.Array,
                        canvas: np.ndarray | None = None) -> np.ndarray:
        """uint8 images (len(prompts), H, W, 3) for the prompts, `eval.batch` at a time (fixed shapes)."""
        ev, b = self.config.eval, int(self.config.eval.batch)
        images = []
        for start in range(0, len(prompts), b):
            chunk = prompts[start:start + b]
            chunk = chunk + [chunk[-1]] * (b - len(chunk))
            text, lens = self.text_batch(chunk, self.s)
            init = showo_model.blank_canvas(b, self.n, self.vocab) if canvas is None else canvas[start:start + b]
            codes = showo_model.t2i_generate(self.model, params, text, lens, init, jax.random.fold_in(rng, start),
                                             max_text_len=self.s, num_steps=ev.t2i_steps,
                                             guidance_scale=float(ev.guidance_scale),
                                             temperature=float(ev.temperature)).tokens
            images.append(self.decode_codes(model_state, codes)[: len(prompts) - start])
        return np.concatenate(images)

    def answer(self, params: Any, model_state: Any, codes: jax.Array, questions: list[str]) -> list[str]:
        """Greedy answers to questions about tokenized images, `eval.batch` at a time."""
        b, answers = int(self.config.eval.batch), []
        width = max(len(self.text.encode(layout.mmu_question_text(q))) for q in questions)
        for start in range(0, len(questions), b):
            qs = questions[start:start + b]
            qs = qs + [qs[-1]] * (b - len(qs))
            c = codes[start:start + b]
            c = jnp.concatenate([c, jnp.repeat(c[-1:], b - c.shape[0], 0)]) if c.shape[0] < b else c
            qids, qlen = self.text_batch([layout.mmu_question_text(q) for q in qs], width)
            out = showo_model.mmu_generate(self.model, params, c, qids, qlen,
                                           max_new_tokens=int(self.config.eval.max_new_tokens))
            for row, n in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
                ids = [int(t) for t in row[:n] if t < self.vocab.text_vocab_size and t != self.vocab.eos_id]
                answers.append(self.text.decode(ids, skip_special_tokens=True).strip())
        return answers[: len(questions)]

    def _eval_t2i(self, params: Any, model_state: Any, grid_path: str) -> dict[str, float]:
        from mmjax.data.shapes import ShapesSource
        from mmjax.eval import geneval, shapes_check

        data = self.batches("eval")
        source = data.sources["t2i"]
        n = min(int(self.config.eval.num_t2i), len(source))
        prompts = [data.builder.caption("t2i", source[i]) for i in range(n)]
        images = self.generate_images(params, model_state, prompts, jax.random.key(self.config.eval.seed))
        paths.make_dirs(os.path.dirname(grid_path))
        with epath.Path(grid_path).open("wb") as f:
            geneval.save_png(geneval.image_grid(list(images), cols=8), f)
        if not isinstance(source, ShapesSource):
            return {}
        kw = dict(colours=source.config.colours, shapes=source.config.shapes)
        return shapes_check.score_prompts(list(images), prompts, **kw)

    def _eval_mmu(self, params: Any, model_state: Any, answers_path: str) -> dict[str, float]:
        from mmjax.eval.vqa import normalize_vqa_answer

        source = self.batches("eval").sources["mmu"]
        records = [source[i] for i in range(min(int(self.config.eval.num_mmu), len(source)))]
        if not records or not {"question", "answer"} <= set(records[0]):
            return {}
        pixels = np.stack([sb.load_image(r["image"], self.image_size, "mmu eval image") for r in records])
        codes = self.encode_images(model_state, pixels)
        answers = self.answer(params, model_state, codes, [str(r["question"]) for r in records])
        rows = [{"index": i, "question": str(r["question"]), "answer": str(r["answer"]), "prediction": a,
                 "correct": normalize_vqa_answer(a) == normalize_vqa_answer(str(r["answer"]))}
                for i, (r, a) in enumerate(zip(records, answers))]
        paths.make_dirs(os.path.dirname(answers_path))
        with epath.Path(answers_path).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return {"mmu_accuracy": float(np.mean([r["correct"] for r in rows]))}

    # -- helpers shared with sampling ---------------------------------------------------------------------------
    def decode_codes(self, model_state: Any, codes: jax.Array) -> np.ndarray:
        """Codes (B, N) -> uint8 images (B, H, W, 3) through the frozen tokenizer's decoder."""
        pixels = decode_ids(self.vq_model, model_state["tokenizer"], jnp.reshape(codes, (-1, self.grid, self.grid)))
        return np.asarray(jnp.round((jnp.asarray(pixels) + 1.0) * 127.5).clip(0, 255)).astype(np.uint8)

    def encode_images(self, model_state: Any, images: np.ndarray) -> jax.Array:
        """Float images in [-1, 1] (B, H, W, 3) -> codes (B, N)."""
        codes = sb.encoder_fn(self.vq_model, model_state["tokenizer"])(jnp.asarray(images))
        return jnp.reshape(codes, (codes.shape[0], -1))

    def text_batch(self, texts: list[str], width: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenized, 0-padded texts (B, width) and their lengths."""
        ids = [self.text.encode(t)[:width] for t in texts]
        return np.stack([sb.pad_ids(i, width) for i in ids]), np.asarray([len(i) for i in ids], np.int32)
