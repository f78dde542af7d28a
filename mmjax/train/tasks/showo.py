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

Show-o with CLIP-ViT (`model.w_clip_vit`, `config.vision`, see showo_clip): MMU rows read a frozen CLIP tower's
features through the trainable `mm_projector` instead of image tokens: `<|mmu|> system <|soi|> features <|eoi|>
text`, their embeddings spliced in the step, under the reference's CLIP mask (only the feature columns opened);
T2I and LM rows are unchanged. `showo.system_prompt` is the text between `<|mmu|>` and `<|soi|>` (the reference's
stage-2 system prompt), and the MMU text budget shrinks so all rows keep the length S + N + 3.

Metrics: t2i_loss / lm_loss / mmu_loss, `t2i_masked_acc` (argmax accuracy on masked image tokens),
`mmu_token_acc` and `lm_token_acc`. Evaluation: see showo_eval (T2I samples and MMU answers, seen vs unseen).
"""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from mmjax import configlib
from mmjax.data.pipeline import RECORDS_KEY
from mmjax.diffusion import maskgit
from mmjax.models import showo as showo_model
from mmjax.models import showo_layout as layout
from mmjax.models import showo_vit_layout as vit_layout
from mmjax.models.lm import LMConfig, get_config
from mmjax.models.vq import VQModel, decode_ids
from mmjax.nn.block_mask import showo_block_mask
from mmjax.nn.embedding import padded_size
from mmjax.train import sharding
from mmjax.train.tasks import showo_batches as sb
from mmjax.train.tasks import showo_eval
from mmjax.train.tasks.base import EvalContext, Metrics, Task
from mmjax.train.tasks.showo_clip import ClipTower
from mmjax.train.tasks.showo_examples import ExampleBuilder, pad_ids
from mmjax.train.tasks.showo_loss import LOSS_NORMALIZATIONS, grouped, mtp_sums, ntp_sums, weighted_total

SHOWO_FIELDS = ("max_text_len", "mix", "t2i_coeff", "lm_coeff", "mmu_coeff", "cond_dropout_prob",
                "min_masking_rate", "mask_schedule", "label_smoothing", "system_prompt", "seq_multiple",
                "loss_normalization")
EVAL_FIELDS = ("num_t2i", "num_mmu", "t2i_steps", "guidance_scale", "generation_temperature", "logit_temperature",
               "max_new_tokens", "loss_batches", "batch", "seed", "mmu_top_k", "mmu_temperature")
MODEL_EXTRA = ("preset", "w_clip_vit")


def lm_config_from(model: ml_collections.ConfigDict, vocab_size: int) -> LMConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in configlib.to_dict(model).items()
              if k not in MODEL_EXTRA}
    return get_config(model.preset, **{**fields, "vocab_size": vocab_size})


class Rows(NamedTuple):
    """The rows of a step, bundle by bundle, all of length S + N + 3; `sizes`: rows per bundle of each part.
    `mmu_features` (B_mmu, F, C) / `mmu_slots` (B_mmu, T), in bundle order, are set for the CLIP-ViT variant: the
    features to splice into the MMU rows' embeddings."""

    ids: jax.Array
    labels: jax.Array
    sizes: dict[str, int]
    mmu_features: jax.Array | None = None
    mmu_slots: jax.Array | None = None


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
        # rows as the step runs them: padded to a hardware-friendly multiple (showo.seq_multiple; 1 = as is)
        self.row_len = padded_size(self.seq_len, int(config.showo.get("seq_multiple", 1)))
        needs_text = config.vocab.text_vocab_size < 0 or config.vocab.bos_id < 0 or config.vocab.eos_id < 0
        self._text_tok = sb.text_tokenizer(config.text) if needs_text else None
        self.vocab = sb.make_vocab(config.vocab, self.vq_config.num_codes, self._text_tok)
        if self.vocab.codebook_size != self.vq_config.num_codes:
            raise configlib.ConfigError(f"vocab.codebook_size {self.vocab.codebook_size} != the tokenizer's "
                                        f"{self.vq_config.num_codes} codes")
        self.lm_config = lm_config_from(config.model, self.vocab.vocab_size)
        self.clip = ClipTower(config.vision) if config.model.w_clip_vit else None
        if self.clip is None and "vision" in config:
            raise configlib.ConfigError("config.vision is set but model.w_clip_vit is False")
        self.model = showo_model.Showo(self.lm_config, self.vocab, w_clip_vit=self.clip is not None,
                                       clip_hidden_size=self.clip.width if self.clip else 1024)
        self.pretokenized = bool(config.tokenizer.pretokenize)
        self.loss_normalization = str(config.showo.get("loss_normalization", "device"))
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise configlib.ConfigError(f"showo.loss_normalization={self.loss_normalization!r}; expected one of "
                                        f"{LOSS_NORMALIZATIONS}")
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

    @functools.cached_property
    def system_ids(self) -> tuple[int, ...]:
        """The tokenized `showo.system_prompt` between `<|mmu|>` and `<|soi|>` of CLIP-ViT MMU rows."""
        prompt = self.config.showo.system_prompt
        if prompt and self.clip is None:
            raise configlib.ConfigError("showo.system_prompt is only read by the CLIP-ViT variant (model.w_clip_vit)")
        return tuple(int(t) for t in self.text.encode(prompt)) if prompt else ()

    @functools.cached_property
    def mmu_text_len(self) -> int:
        """Text tokens of an MMU row: S, or with CLIP features S + N - F - len(system), so every row is S + N + 3
        long (the reference's `max_seq_length - (576 - num_vq_tokens)`, minus the system prompt in stage 2)."""
        if self.clip is None:
            return self.s
        budget = self.s + self.n - self.clip.num_features - len(self.system_ids)
        if budget < 8:
            raise configlib.ConfigError(f"showo.max_text_len={self.s} leaves {budget} MMU text tokens next to "
                                        f"{self.clip.num_features} CLIP features and a {len(self.system_ids)}-token "
                                        "system prompt; raise it")
        return budget

    def tokenizer_variables(self) -> Any:
        if self._tok_vars is None:
            self._tok_vars = sb.load_tokenizer_variables(self.config.tokenizer, self.vq_config, self._tokenizer_key)
        return self._tok_vars

    def batches(self, split: str) -> sb.ShowoBatches:
        if split not in self._splits:
            builder = ExampleBuilder(self.config.data[split], self.text, self.vocab, self.s, self.seq_len,
                                     self.image_size, self.mmu_text_len, self.clip)
            encoders = None
            if self.pretokenized:
                # loaded on first use: sources of pre-tokenized records never need the tokenizer's weights here
                encoders = {"image": lambda px: sb.encoder_fn(self.vq_model, self.tokenizer_variables())(px)}
                if self.clip is not None:
                    encoders["clip_image"] = lambda px: self.clip.features(self.clip.variables(), px)
            self._splits[split] = sb.ShowoBatches(self.config.data[split], self.mix, builder, encoders)
        return self._splits[split]

    def source(self, split: str) -> Any:
        return sb.BundleSource(len(self.batches(split)))

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """One bundle, with its record counts for the pipeline (`pipeline.RECORDS_KEY`: records, not bundles)."""
        arrays, counts = self.batches("train" if rng is not None else "eval").counted_bundle(record["index"], rng)
        return {**arrays, RECORDS_KEY: counts}

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        spec = sb.bundle_spec(self.mix, self.s, self.seq_len, self.image_size, self.n, self.pretokenized,
                              self.mmu_text_len, self.clip)
        return {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in spec.items()}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Bundles of random text ids (random lengths up to each row's limit), random image codes or pixels and
        answer spans, shaped like `example_batch`: the ids vary as real ones do, which matters for the step's
        gathers and scatters."""
        rng = np.random.default_rng(seed)
        out = {}
        for key, zeros in self.example_batch(batch_size).items():
            shape, field = zeros.shape, key.split("_", 1)[1]
            if field in ("text", "conv"):
                out[key] = rng.integers(0, self.vocab.text_vocab_size, shape, dtype=np.int32)
            elif field.endswith("_len"):
                width = self.example_batch(1)[key.replace("_len", "")].shape[-1]
                out[key] = rng.integers(width // 4, width + 1, shape, dtype=np.int32)
            elif field == "codes":
                out[key] = rng.integers(0, self.vocab.codebook_size, shape, dtype=np.int32)
            elif field == "target":
                out[key] = rng.random(shape) < 0.5
            else:  # pixels or CLIP features
                out[key] = rng.uniform(-1, 1, shape).astype(zeros.dtype)
        return out

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        lm_rng, tok_rng, clip_rng = jax.random.split(rng, 3)
        params = self.model.init(lm_rng, jnp.zeros((1, self.seq_len), jnp.int32))["params"]
        images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        out = {"params": params, "tokenizer": self.vq_model.init(tok_rng, images)}
        if self.clip is not None:
            out["vision_tower"] = self.clip.init(clip_rng)
        return out

    def pretrained_variables(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {"tokenizer": self.tokenizer_variables()}
        if self.clip is not None:
            out["vision_tower"] = self.clip.variables()
        init = self.config.init
        if init.showo:
            from mmjax.convert.showo import load_showo_params

            out["params"] = load_showo_params(init.showo, self.lm_config, w_clip_vit=self.clip is not None)
        elif init.run:
            from mmjax.train.checkpoint import load_params

            run_config = json.loads(epath.Path(init.run, "config.json").read_text())  # the run may be in gs://
            key = "ema_params" if run_config.get("ema_decay") else "params"
            # A run without mm_projector (the CLIP-ViT variant's stage 1 from pre-training) keeps the fresh one.
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

    def _clip_features(self, model_state: Any, batch: dict[str, jax.Array]) -> jax.Array:
        flat = lambda x: x.reshape((-1, *x.shape[2:]))
        if "mmu_clip" in batch:
            return flat(batch["mmu_clip"])
        return showo_model.clip_features(self.clip.model, model_state["vision_tower"], flat(batch["mmu_clip_image"]))

    def build_rows(self, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> Rows:
        """The [t2i; lm; mmu] rows of each bundle in turn (ids, labels, rows per bundle), all of length S + N + 3
        (`row_len` when `showo.seq_multiple` pads them; the losses do not change, tests check it).

        Bundle-major, so the rows of a bundle stay on the chip that holds the bundle: the row types are split
        again (attention groups, per-part losses) by position within the bundle, without moving data."""
        cfg, v, s = self.config.showo, self.vocab, self.s
        flat = lambda x: x.reshape((-1, *x.shape[2:]))
        rows, labels, sizes, features, slots = [], [], {}, None, None
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
            conv = (flat(batch["mmu_conv"]), flat(batch["mmu_target"]), flat(batch["mmu_conv_len"]))
            if self.clip is None:
                codes = self._codes(model_state, batch, "mmu")
                ids, lab = layout.mmu_instruct_layout(v.image_token(codes), *conv, v, s)
            else:
                features = self._clip_features(model_state, batch)
                ids, lab, slots = vit_layout.mmu_vit_layout(*conv, self.system_ids, self.clip.num_features, v,
                                                        self.mmu_text_len)
            rows.append(ids), labels.append(lab)
            sizes["mmu"] = self.mix["mmu"]
        if self.row_len != self.seq_len:  # T2I rows grow on the left (soi moves), LM / MMU rows on the right
            parts = [p for p in sb.PARTS if p in sizes]
            padded = [layout.pad_rows(r, lab, self.row_len, v, left=p == "t2i")
                      for p, r, lab in zip(parts, rows, labels)]
            rows, labels = [r for r, _ in padded], [lab for _, lab in padded]
            if slots is not None:
                slots = jnp.pad(slots, ((0, 0), (0, self.row_len - self.seq_len)))
        bundles = next(iter(batch.values())).shape[0]
        by_bundle = lambda parts: jnp.concatenate([p.reshape(bundles, -1, p.shape[-1]) for p in parts], axis=1)
        return Rows(by_bundle(rows).reshape(-1, self.row_len), by_bundle(labels).reshape(-1, self.row_len), sizes,
                    features, slots)

    def logits(self, params: Any, rows: Rows) -> jax.Array:
        """Logits of all rows. The omni-attention mask goes to the model as a static pattern per row type
        (`showo_block_mask`: splash on TPU, its dense form elsewhere); CLIP-ViT MMU rows (the last rows of each
        bundle) get their features spliced into the embeddings and the dense mask built from the ids."""
        variables = {"params": params}
        if rows.mmu_features is None:
            mask = showo_block_mask(rows.ids, rows.sizes, max_text_len=self.s + self.row_len - self.seq_len,
                                    num_image_tokens=self.n, pad_id=self.vocab.pad_id)
            return self.model.apply(variables, rows.ids, mask=mask)
        period, m, t = sum(rows.sizes.values()), rows.sizes["mmu"], rows.ids.shape[1]
        ids = rows.ids.reshape(-1, period, t)
        embeds = self.model.apply(variables, ids[:, :-m].reshape(-1, t), method=showo_model.Showo.embed)
        mmu = self.model.apply(variables, ids[:, -m:].reshape(-1, t), rows.mmu_features, rows.mmu_slots,
                               method=showo_model.Showo.embed_with_features)
        per_bundle = lambda x, n: x.reshape(-1, n, *x.shape[1:])
        embeds = jnp.concatenate([per_bundle(embeds, period - m), per_bundle(mmu, m)], axis=1)
        mask = self.model.apply(variables, rows.ids, method=showo_model.Showo.attention_mask)
        return self.model.apply(variables, None, embeds=embeds.reshape(-1, *embeds.shape[2:]), mask=mask,
                                is_causal=False)

    def data_shards(self) -> int:
        """How many devices hold distinct rows of the batch (the mesh's data x fsdp axes): the groups of the
        reference's per-device loss (`showo.loss_normalization="device"`, showo_loss)."""
        shape = sharding.mesh_shape(dict(self.config.mesh), jax.device_count())
        return shape[0] * shape[1]

    def losses(self, params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array, groups: int = 1
               ) -> dict[str, jax.Array]:
        """Per-part sums and counts: {part}_nll, {part}_correct, {part}_count (t2i: masked image tokens only for
        the accuracy; the loss also counts soi/eoi, as the reference); with `groups` > 1, each of shape (groups,):
        the sums of each group of bundles in batch order (the rows one device holds)."""
        rows = self.build_rows(model_state, batch, rng)
        logits = self.logits(params, rows)
        smoothing = self.config.showo.label_smoothing
        out: dict[str, jax.Array] = {}
        period = sum(rows.sizes.values())
        start = 0
        for part in sb.PARTS:
            if part not in rows.sizes:
                continue
            lg, lab = (x.reshape(-1, period, *x.shape[1:])[:, start:start + rows.sizes[part]].reshape(-1, *x.shape[1:])
                       for x in (logits, rows.labels))
            start += rows.sizes[part]
            if part == "t2i":
                sums = grouped(mtp_sums, groups)(lg, lab, self.s + self.row_len - self.seq_len, self.vocab, smoothing)
            else:
                sums = grouped(ntp_sums, groups)(lg, lab, part, smoothing)
            out.update(sums if groups > 1 else {k: v[0] for k, v in sums.items()})
        return out

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        bundles = next(iter(batch.values())).shape[0]
        groups = self.data_shards() if self.loss_normalization == "device" else 1
        groups = groups if bundles % groups == 0 else 1   # a batch not split over the devices (compile checks)
        sums = self.losses(params, model_state, batch, rng, groups=groups)
        coeffs = {part: getattr(self.config.showo, f"{part}_coeff") for part in sb.PARTS}
        total, metrics = weighted_total(sums, coeffs, self.loss_normalization)
        return total, (metrics, model_state)

    # -- evaluation (showo_eval) --------------------------------------------------------------------------------
    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        return showo_eval.evaluate(self, params, model_state, ctx)

    @functools.cached_property
    def eval_losses(self):
        return jax.jit(self.losses)

    def generate_images(self, params: Any, model_state: Any, prompts: list[str], rng: jax.Array,
                        canvas: np.ndarray | None = None) -> np.ndarray:
        """uint8 images (len(prompts), H, W, 3) for the prompts."""
        return showo_eval.generate_images(self, params, model_state, prompts, rng, canvas)

    def answer(self, params: Any, model_state: Any, images: jax.Array, questions: list[str], **sampling: Any
               ) -> list[str]:
        """Answers (`showo_eval.answer`: top_k / temperature / rng); `images` as `mmu_inputs` gives them (codes,
        or CLIP features for the CLIP-ViT variant)."""
        return showo_eval.answer(self, params, model_state, images, questions, **sampling)

    # -- helpers shared with sampling ---------------------------------------------------------------------------
    def mmu_inputs(self, model_state: Any, records: list[dict[str, Any]]) -> jax.Array:
        """What MMU reads of records' images: tokenizer codes (B, N), or CLIP features (B, F, C)."""
        builder = self.batches("eval").builder
        if self.clip is None:
            pixels = np.stack([builder.image(r, "mmu eval") for r in records])
            return self.encode_images(model_state, pixels)
        pixels = np.stack([builder.clip_image(r, "mmu eval") for r in records])
        return self.clip.features(model_state["vision_tower"], pixels)

    def decode_codes(self, model_state: Any, codes: jax.Array) -> np.ndarray:
        """Codes (B, N) -> uint8 images (B, H, W, 3) through the frozen tokenizer's decoder."""
        pixels = decode_ids(self.vq_model, model_state["tokenizer"], jnp.reshape(codes, (-1, self.grid, self.grid)))
        return sharding.to_host(jnp.round((jnp.asarray(pixels) + 1.0) * 127.5).clip(0, 255)).astype(np.uint8)

    def encode_images(self, model_state: Any, images: np.ndarray) -> jax.Array:
        """Float images in [-1, 1] (B, H, W, 3) -> codes (B, N)."""
        codes = sb.encoder_fn(self.vq_model, model_state["tokenizer"])(jnp.asarray(images))
        return jnp.reshape(codes, (codes.shape[0], -1))

    def text_batch(self, texts: list[str], width: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenized, 0-padded texts (B, width) and their lengths."""
        ids = [self.text.encode(t)[:width] for t in texts]
        return np.stack([pad_ids(i, width) for i in ids]), np.asarray([len(i) for i in ids], np.int32)
