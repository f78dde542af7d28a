"""Discrete diffusion on a token grid (D3PM, absorbing by default), sampled with D3PM or MaskGIT: the digits demo.

Data: images in [0, 1] are quantized to `config.num_levels` grey levels (K); each pixel is one token in [0, K).
The absorbing process adds the [MASK] state as class K (so the D3PM has K + 1 classes and the denoiser embeds
K + 1 ids but emits K logits); the uniform process has K classes. Training is `D3PM.training_loss` (hybrid loss:
`L_vb + hybrid_coeff * CE`, t ~ U{1..T}).

Sampling (`config.sample.sampler`): "ancestral" (D3PM's T-step reverse chain), "maskgit" (MaskGIT's
confidence-ordered parallel decoding, absorbing only, from the SAME network: the time the denoiser sees is
T * fraction-masked, which is what the absorbing mutual-information schedule means by t), or "both".

Evaluation (`evaluate`):
- test-split loss terms in nats per token: `loss` (hybrid), `vb` (one L_{t-1} term at random t), `ce`, and
  `nelbo` = KL(q(x_T|x_0) || p(x_T)) + T * vb, an unbiased estimate of the negative ELBO (`nelbo_bits` in bits);
- samples (`num_samples`) written as a PNG grid to `workdir/samples/step_<n>.png` and judged by a digits
  classifier: sklearn logistic regression fitted once (cached per K) on the real training digits after the same
  quantize -> dequantize round trip, so it sees exactly the domain the model generates. It reports
  `sample_confidence` (mean max-probability), `sample_class_entropy` (nats, of the predicted-class histogram;
  ln 10 = 2.30 is perfectly even) and `sample_classes_covered` (classes with >= 2% of the samples), next to the
  same confidence on the quantized held-out test digits (`real_confidence`, `real_accuracy`), on uniform-noise
  grids (`noise_confidence`) and on grids whose pixels are drawn independently from the training set's
  per-pixel marginals (`marginal_confidence`: what a model that learned no structure between pixels would get).
  Class-conditional runs also report `sample_label_agreement` (classifier prediction == requested label), and
  their NELBO is conditioned on the true label. The judge runs only on the 8x8 digits; other data get the loss
  terms and the PNG.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.diffusion import maskgit
from mmjax.diffusion.d3pm import D3PM
from mmjax.models.denoiser import denoiser_from_config
from mmjax.train import sharding
from mmjax.train.tasks.base import EvalContext, Metrics, Task

SAMPLERS = ("ancestral", "maskgit", "both")
SAMPLE_FIELDS = ("sampler", "num_samples", "seed", "temperature", "maskgit_steps", "maskgit_rule",
                 "maskgit_schedule", "choice_temperature", "guidance_scale")
DIFFUSION_FIELDS = ("kind", "num_steps", "schedule", "hybrid_coeff")
EVAL_FIELDS = ("loss_repeats",)
COVERAGE_FRACTION = 0.02


# ------------------------------------------------------------------------------------------ quantization
def quantize(images: np.ndarray | jax.Array, levels: int) -> np.ndarray:
    """Intensities in [0, 1] -> int32 tokens in [0, levels): nearest of `levels` evenly spaced grey levels."""
    if levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {levels}")
    x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    return np.clip(np.floor(x * (levels - 1) + 0.5), 0, levels - 1).astype(np.int32)


def dequantize(tokens: np.ndarray | jax.Array, levels: int) -> np.ndarray:
    """Tokens -> float32 intensities `token / (levels - 1)`; `quantize(dequantize(x)) == x` exactly."""
    return np.asarray(tokens, np.float32) / np.float32(levels - 1)


# ---------------------------------------------------------------------------------------------- judging
@functools.lru_cache(maxsize=4)
def digits_classifier(levels: int) -> Any:
    """Logistic regression on the quantized real training digits (fitted once per K per process).

    Linear, so it is fast to fit and, unlike a small MLP, not confidently wrong on noise: the gap between its
    confidence on real digits and on noise is what makes `sample_confidence` readable.
    """
    from sklearn.linear_model import LogisticRegression

    from mmjax.data.sources import DigitsSource

    train = DigitsSource("train")
    x = dequantize(quantize(train.images, levels), levels).reshape(len(train), -1)
    return LogisticRegression(C=1.0, max_iter=2000).fit(x, train.labels)


def judge(images: np.ndarray, levels: int, labels: np.ndarray | None = None) -> dict[str, float]:
    """Classifier statistics of (N, H, W) images in [0, 1]: confidence, class-histogram entropy and coverage."""
    probs = digits_classifier(levels).predict_proba(images.reshape(len(images), -1))
    pred = probs.argmax(-1)
    hist = np.bincount(pred, minlength=probs.shape[-1]) / len(pred)
    nonzero = hist[hist > 0]
    out = {"confidence": float(probs.max(-1).mean()),
           "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
           "classes_covered": float((hist >= COVERAGE_FRACTION).sum())}
    if labels is not None:
        out["label_agreement"] = float((pred == labels).mean())
    return out


@functools.lru_cache(maxsize=4)
def reference_metrics(levels: int, num_images: int, seed: int = 0) -> dict[str, float]:
    """The yardsticks for `sample_confidence`: real held-out digits, uniform noise, per-pixel-marginal noise."""
    from mmjax.data.sources import DigitsSource

    train, test = DigitsSource("train"), DigitsSource("test")
    real = quantize(test.images[..., 0], levels)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, levels, size=(num_images, *real.shape[1:]))
    train_tokens = quantize(train.images[..., 0], levels).reshape(len(train), -1)
    marginals = np.stack([np.bincount(col, minlength=levels) for col in train_tokens.T]) / len(train)
    cdf = np.cumsum(marginals, -1)
    draws = rng.uniform(size=(num_images, train_tokens.shape[1], 1))
    marginal = np.minimum((draws > cdf[None]).sum(-1), levels - 1).reshape(noise.shape)
    real_stats = judge(dequantize(real, levels), levels, test.labels)
    return {"real_confidence": real_stats["confidence"], "real_accuracy": real_stats["label_agreement"],
            "noise_confidence": judge(dequantize(noise, levels), levels)["confidence"],
            "marginal_confidence": judge(dequantize(marginal, levels), levels)["confidence"]}


def save_grid(images: np.ndarray, path: str, scale: int = 4, pad: int = 1) -> None:
    """(N, H, W) intensities in [0, 1] -> one PNG of a near-square grid, upscaled (nearest) for viewing."""
    from PIL import Image

    n, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels, mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


# ------------------------------------------------------------------------------------------------- task
class D3PMTask(Task):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        configlib.check_known(config.diffusion, DIFFUSION_FIELDS, "diffusion")
        configlib.check_known(config.sample, SAMPLE_FIELDS, "sample")
        configlib.check_known(config.eval, EVAL_FIELDS, "eval")
        self.levels = int(config.num_levels)
        d = config.diffusion
        absorbing = d.kind == "absorbing"
        self.diffusion = D3PM.create(d.kind, self.levels + 1 if absorbing else self.levels, d.num_steps,
                                     d.schedule or None, mask_id=self.levels if absorbing else None,
                                     hybrid_coeff=d.hybrid_coeff)
        self.grid = tuple(config.grid)
        self.model = denoiser_from_config(dict(config.model), num_classes=self.levels, grid=self.grid)
        if config.sample.sampler not in SAMPLERS:
            raise configlib.ConfigError(f"config.sample.sampler: {config.sample.sampler!r} not in {SAMPLERS}")
        if config.sample.sampler != "ancestral" and not absorbing:
            raise configlib.ConfigError("config.sample.sampler: MaskGIT decoding needs diffusion.kind='absorbing' "
                                        f"(got {d.kind!r}); use sampler='ancestral'")
        self._samplers: dict[str, Any] = {}

    @property
    def num_labels(self) -> int:
        return self.model.num_labels

    # -- data -------------------------------------------------------------------------------------------------
    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        image = np.asarray(record["image"])
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if image.ndim == 3:
            image = image[..., 0] if image.shape[-1] == 1 else image.mean(-1)
        if image.shape != self.grid:
            raise ValueError(f"image of shape {image.shape} does not match config.grid {self.grid}")
        return {"tokens": quantize(image, self.levels), "label": np.int32(record.get("label", 0))}

    # -- model ------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        t = jnp.ones((batch["tokens"].shape[0],), jnp.int32)
        return self.model.init(rng, batch["tokens"], t, batch["label"] if self.num_labels else None)

    def x0_logits(self, params: Any, xt: jax.Array, t: jax.Array, labels: jax.Array | None,
                  dropout_rng: jax.Array | None = None) -> jax.Array:
        """The D3PM's x0 logits: the denoiser's K logits, plus a (pinned-away) mask column for absorbing."""
        train = dropout_rng is not None
        logits = self.model.apply({"params": params}, xt, t, labels, train=train,
                                  rngs={"dropout": dropout_rng} if train else {})
        if self.diffusion.kind == "absorbing":
            logits = jnp.concatenate([logits, jnp.zeros_like(logits[..., :1])], -1)
        return logits

    def _labels(self, batch: dict[str, jax.Array], rng: jax.Array | None) -> jax.Array | None:
        """Class labels, replaced by the null label with probability `label_dropout` while training."""
        if not self.num_labels:
            return None
        labels = batch["label"].astype(jnp.int32)
        if rng is not None and self.config.label_dropout:
            drop = jax.random.bernoulli(rng, self.config.label_dropout, labels.shape)
            labels = jnp.where(drop, self.num_labels, labels)
        return labels

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        diff_rng, label_rng, dropout_rng = jax.random.split(rng, 3)
        labels = self._labels(batch, label_rng)
        fn = lambda xt, t: self.x0_logits(params, xt, t, labels, dropout_rng)
        loss, metrics = self.diffusion.training_loss(fn, batch["tokens"], diff_rng)
        return loss, (metrics, model_state)

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_step(self, params, model_state, batch, rng: jax.Array | None = None) -> Metrics:
        """Sums over valid rows of the hybrid loss, its terms, and the one-sample negative-ELBO estimate."""
        rng = jax.random.PRNGKey(0) if rng is None else rng
        t_rng, x_rng = jax.random.split(rng)
        x0, valid = batch["tokens"], batch["valid"]
        proc = self.diffusion
        t = jax.random.randint(t_rng, (x0.shape[0],), 1, proc.num_steps + 1)
        xt = proc.q_sample(x_rng, x0, t)
        loss, parts = proc.hybrid_loss(self.x0_logits(params, xt, t, self._labels(batch, None)), x0, xt, t)
        q_t = proc.q_probs(x0, jnp.full_like(t, proc.num_steps))
        prior = jnp.broadcast_to(proc.prior_probs(), q_t.shape)
        logq, logp = jnp.log(jnp.maximum(q_t, 1e-30)), jnp.log(jnp.maximum(prior, 1e-30))
        prior_kl = jnp.sum(q_t * (logq - logp), -1).reshape(x0.shape[0], -1).mean(-1)
        nelbo = prior_kl + proc.num_steps * parts["vb"]
        total = lambda v: jnp.sum(v * valid)
        return {"loss": total(loss), "vb": total(parts["vb"]), "ce": total(parts["ce"]),
                "nelbo": total(nelbo), "nelbo_bits": total(nelbo) / math.log(2), "count": jnp.sum(valid)}

    def _sampler(self, name: str) -> Any:
        """A jitted (params, labels, rng) -> tokens (N, *grid) for one sampler, built once per task."""
        if name in self._samplers:
            return self._samplers[name]
        proc, cfg, grid = self.diffusion, self.config.sample, self.grid
        n = cfg.num_samples
        temperature = float(cfg.temperature)

        def ancestral(params, labels, rng):
            fn = lambda x, t: self.x0_logits(params, x, t, labels) / temperature
            return proc.sample(fn, rng, (n, *grid))

        def masked(params, labels, rng):
            guided = cfg.guidance_scale > 0 and self.num_labels
            if guided:
                labels = jnp.concatenate([labels, jnp.full_like(labels, self.num_labels)])

            def logits_fn(tokens):
                # The absorbing chain with the mutual-information schedule masks a token w.p. t/T at time t.
                frac = jnp.mean(tokens == self.levels, axis=-1)
                t = jnp.clip(jnp.round(frac * proc.num_steps), 1, proc.num_steps).astype(jnp.int32)
                logits = self.model.apply({"params": params}, tokens.reshape(-1, *grid), t, labels)
                return logits.reshape(tokens.shape[0], -1, self.levels)

            start = jnp.full((n, math.prod(grid)), self.levels, jnp.int32)
            out = maskgit.decode(logits_fn, start, mask_id=self.levels, num_steps=cfg.maskgit_steps, rng=rng,
                                 guidance_scale=float(cfg.guidance_scale) if guided else 0.0,
                                 temperature=temperature, choice_temperature=cfg.choice_temperature or None,
                                 schedule=cfg.maskgit_schedule, rule=cfg.maskgit_rule)
            return out.tokens.reshape(n, *grid)

        self._samplers[name] = jax.jit(ancestral if name == "ancestral" else masked)
        return self._samplers[name]

    def sample(self, params: Any, sampler: str, rng: jax.Array) -> tuple[np.ndarray, np.ndarray | None]:
        """(tokens (N, *grid) in [0, K), requested labels or None) from the named sampler."""
        n = self.config.sample.num_samples
        labels = np.arange(n, dtype=np.int32) % self.num_labels if self.num_labels else None
        tokens = self._sampler(sampler)(params, None if labels is None else jnp.asarray(labels), rng)
        return sharding.to_host(tokens), labels   # the samples may be spread over several hosts' devices

    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        step = self.jitted_eval_step
        key = jax.random.PRNGKey(self.config.seed)
        totals: dict[str, float] = {}
        for r in range(self.config.eval.loss_repeats):
            for i, batch in enumerate(ctx.batches(self.source("eval"), self.preprocess)):
                for k, v in step(params, model_state, batch, jax.random.fold_in(key, r * 100_003 + i)).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError("evaluation saw no valid example (empty or fully skipped eval split)")
        out = {k: v / count for k, v in totals.items()}

        cfg = self.config.sample
        # The judge is a digits classifier: on any other data the samples are only drawn and saved.
        judged = self.config.data.eval.name == "digits" and self.grid == (8, 8)
        if judged:
            out.update(reference_metrics(self.levels, cfg.num_samples))
        names = ("ancestral", "maskgit") if cfg.sampler == "both" else (cfg.sampler,)
        for name in names:
            rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), ctx.step)
            tokens, labels = self.sample(params, name, rng)
            images = dequantize(tokens, self.levels)
            prefix = "maskgit_" if cfg.sampler == "both" and name == "maskgit" else ""
            if judged:
                out.update({f"{prefix}sample_{k}": v for k, v in judge(images, self.levels, labels).items()})
            if jax.process_index() == 0:
                suffix = "_maskgit" if prefix else ""
                save_grid(images, os.path.join(ctx.workdir, "samples", f"step_{ctx.step}{suffix}.png"))
        return {k: float(v) for k, v in out.items()}
