"""Image-tokenizer training (MAGVIT-v2 / VQGAN family): reconstruction + quantizer + perceptual + adversarial.

Generator loss (weights from `config.loss`, quantizer weights from `config.model`):
    l1_weight * |x - x^| + l2_weight * (x - x^)^2 + perceptual_weight * LPIPS(x, x^)
    + commit_beta * mse(z, sg(q)) + entropy_weight * (H_per_position - H_batch)        (the quantizer's aux)
    + [step >= adv_start] * adv_weight * w * (-D(x^))                                 (hinge generator loss)
LPIPS runs only when `loss.lpips_path` names a local safetensors file (`mmjax.models.discriminator.load_lpips`);
its frozen weights travel in the `lpips` collection (model_state), never in the optimised params.

The GAN in ONE value_and_grad. The discriminator's params live in the same params tree, under
`params["discriminator"]` (its own learning rate through `config.optim.lr_mult`), and the loss is the sum
    L = L_G(theta_G; sg(theta_D)) + [step >= adv_start] * disc_weight * L_D(theta_D; sg(x^))
The generator's adversarial term evaluates D with stop_gradient'ed D params, so it sends no gradient to D; the
discriminator's hinge loss `relu(1 - D(x)) + relu(1 + D(sg(x^)))` (+ LeCAM) sees a stop_gradient'ed
reconstruction, so it sends no gradient to the tokenizer. Hence dL/dtheta_G = dL_G/dtheta_G and
dL/dtheta_D = dL_D/dtheta_D exactly: one backward pass gives each player its own update (tested in
tests/train/test_vq_task.py). The adaptive weight
    w = ||grad_W L_rec|| / (||grad_W L_adv|| + 1e-4), clipped to [0, adaptive_weight_max], stop_gradient'ed,
(taming-VQGAN) takes W = the decoder's last conv (`decoder/conv_out`); its input is captured with
`nn.intercept_methods` and both gradients are one conv-transpose each, `grad_W = vjp(conv(h, .))(dL/dx^)`.
LeCAM (Yu et al. 2021): `mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(x^))^2)`, with EMAs of the
discriminator's outputs kept, with the step counter that `adv_start` needs, in the `gan_stats` collection.

Evaluation (EMA params when `config.ema_decay` > 0): `psnr` (dB, images in [0, 1]), `ssim`, `l1`,
`codebook_usage` (fraction in [0, 1] of the codes used over the whole eval set), `perplexity` (of the eval
set's code histogram), `rfid` when `eval.inception_path` names local Inception weights (`mmjax.eval.fid`), and
a side-by-side grid (original | reconstruction) at `workdir/samples/recon_<step>.png`.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data import images as image_ops
from mmjax.data import pipeline
from mmjax.eval.image_metrics import psnr, ssim
from mmjax.models.discriminator import LPIPS, load_lpips, make_discriminator
from mmjax.models.vq import VQConfig, VQModel
from mmjax.train import sharding
from mmjax.train.tasks.base import EvalContext, Metrics, Task

LOSS_FIELDS = ("l1_weight", "l2_weight", "perceptual_weight", "lpips_path", "adv_weight", "adv_start", "disc_weight",
               "adaptive_weight", "adaptive_weight_max", "lecam_weight", "lecam_decay")
EVAL_FIELDS = ("max_examples", "grid_images", "inception_path")
AUGMENT_FIELDS = ("flip", "random_crop")
PRETRAINED_FIELDS = ("path", "format")
PSNR_CAP = 100.0  # dB: a perfect reconstruction would be inf and poison the mean


def hinge_d_loss(real: jax.Array, fake: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))


def lecam_reg(real: jax.Array, fake: jax.Array, ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(jax.nn.relu(real - ema_fake))) + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake)))


def last_layer_grad_norm(h: jax.Array, kernel: jax.Array, cotangent: jax.Array) -> jax.Array:
    """||d/dW sum(cotangent * conv_SAME(h, W))||: the gradient at the last conv, given dL/d(output)."""
    conv = lambda w: jax.lax.conv_general_dilated(h.astype(jnp.float32), w, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _, vjp = jax.vjp(conv, kernel.astype(jnp.float32))
    return jnp.sqrt(jnp.sum(jnp.square(vjp(cotangent.astype(jnp.float32))[0])))


def pairs_grid(originals: np.ndarray, recons: np.ndarray, scale: int = 1, pad: int = 2) -> np.ndarray:
    """uint8 grid of side-by-side [original | reconstruction] pairs, (N, H, W, 3) each, near-square layout."""
    n, h, w, _ = originals.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    cell_w = 2 * w + pad
    canvas = np.full((rows * (h + pad) + pad, cols * (cell_w + pad) + pad, 3), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (cell_w + pad)
        canvas[y: y + h, x: x + w] = originals[i]
        canvas[y: y + h, x + w + pad: x + 2 * w + pad] = recons[i]
    return np.repeat(np.repeat(canvas, scale, 0), scale, 1) if scale > 1 else canvas


def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, the reference's `clamp((x + 1) / 2)`."""
    return np.round(np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


class VQTask(Task):
    required_fields = (("image",),)

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        configlib.check_known(config.loss, LOSS_FIELDS, "loss")
        configlib.check_known(config.eval, EVAL_FIELDS, "eval")
        configlib.check_known(config.augment, AUGMENT_FIELDS, "augment")
        configlib.check_known(config.pretrained, PRETRAINED_FIELDS, "pretrained")
        self.vq_config = VQConfig.from_dict(configlib.to_dict(config.model))
        self.model = VQModel(self.vq_config)
        self.image_size = int(config.image_size)
        loss = config.loss
        self.gan = loss.adv_weight > 0
        self.disc = make_discriminator(configlib.to_dict(config.discriminator)) if self.gan else None
        self.lpips = LPIPS() if loss.perceptual_weight > 0 else None
        if self.lpips is not None and not loss.lpips_path:
            raise configlib.ConfigError("config.loss.perceptual_weight > 0 needs config.loss.lpips_path (a local "
                                        "safetensors file of VGG-16 + LPIPS weights; nothing is downloaded)")
        if config.pretrained.path and config.pretrained.format not in ("magvitv2", "mmjax"):
            raise configlib.ConfigError(f"config.pretrained.format={config.pretrained.format!r}: magvitv2 | mmjax")

    # -- data ---------------------------------------------------------------------------------------------------
    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """The record's image (encoded bytes, a path or an array: `images.decode_image`), any size -> float32
        (S, S, 3) in [-1, 1]: bicubic shortest edge to S, then a centre crop (eval) or a random
        crop (train, `augment.random_crop`), optional random flip."""
        image = image_ops.decode_image(record["image"], name=pipeline.record_where(record) or None)
        s, aug = self.image_size, self.config.augment
        if image.shape[:2] != (s, s):
            image = image_ops.resize_shortest_edge(image, s, method="bicubic")
            h, w = image.shape[:2]
            if rng is not None and aug.random_crop:
                y, x = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
                image = image[y: y + s, x: x + s]
            else:
                image = image_ops.center_crop(image, s, s)
        if rng is not None and aug.flip and rng.uniform() < 0.5:
            image = image[:, ::-1]
        return {"image": image.astype(np.float32) / 127.5 - 1.0}

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Shapes from the config (`image_size`): no data is read (compile-only checks of paper configs)."""
        return {"image": np.zeros((batch_size, self.image_size, self.image_size, 3), np.float32)}

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        model_rng, disc_rng, lpips_rng = jax.random.split(rng, 3)
        images = batch["image"]
        variables = dict(self.model.init(model_rng, images))
        params = dict(variables.pop("params"))
        if self.gan:
            params["discriminator"] = self.disc.init(disc_rng, images)["params"]
            variables["gan_stats"] = {"step": jnp.zeros((), jnp.int32), "ema_real": jnp.zeros((), jnp.float32),
                                      "ema_fake": jnp.zeros((), jnp.float32)}
        if self.lpips is not None:
            variables["lpips"] = self.lpips.init(lpips_rng, images[:1], images[:1])["params"]
        return {"params": params, **variables}

    def pretrained_variables(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        pre = self.config.pretrained
        if pre.path and pre.format == "magvitv2":
            from mmjax.convert.magvitv2 import load_magvitv2

            out["params"] = load_magvitv2(pre.path, self.vq_config)
        elif pre.path:
            from mmjax.train.checkpoint import load_params

            params = jax.tree.map(np.asarray, load_params(pre.path))
            out["params"] = {k: v for k, v in params.items() if k != "discriminator" or self.gan}
        if self.lpips is not None:
            out["lpips"] = load_lpips(self.config.loss.lpips_path)
        return out or None

    def tokenizer_variables(self, params: Any, model_state: Any) -> dict[str, Any]:
        """What `VQModel.apply` needs: the tokenizer's params (no discriminator) and its codebook statistics."""
        variables = {"params": {k: v for k, v in params.items() if k != "discriminator"}}
        if "vq_stats" in model_state:
            variables["vq_stats"] = model_state["vq_stats"]
        return variables

    def _reconstruct(self, variables: dict[str, Any], images: jax.Array, rng: jax.Array | None, capture: list
                     ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if (context.method_name == "__call__" and module.name == "conv_out" and module.parent is not None
                    and getattr(module.parent, "name", None) == "decoder"):
                capture.append(args[0])
            return next_fun(*args, **kwargs)

        mutable = ["vq_stats"] if "vq_stats" in variables else False
        with nn.intercept_methods(interceptor):
            out = self.model.apply(variables, images, mutable=mutable, rngs={"vq": rng} if rng is not None else {})
        (recon, aux), updates = out if mutable else (out, {})
        return recon, aux, dict(updates)

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        cfg = self.config.loss
        images = batch["image"].astype(jnp.float32)
        capture: list[jax.Array] = []
        recon, aux, updates = self._reconstruct(self.tokenizer_variables(params, model_state), images, rng, capture)
        new_state = {**model_state, **updates}

        def rec_loss(r: jax.Array) -> jax.Array:
            diff = r - images
            loss = cfg.l1_weight * jnp.mean(jnp.abs(diff)) + cfg.l2_weight * jnp.mean(jnp.square(diff))
            if self.lpips is not None:
                loss = loss + cfg.perceptual_weight * jnp.mean(self.lpips.apply({"params": model_state["lpips"]},
                                                                                images, r))
            return loss

        rec = rec_loss(recon)
        mse = jnp.mean(jnp.square(recon - images))
        metrics = {"rec_loss": rec, "l1": jnp.mean(jnp.abs(recon - images)), "psnr": -10.0 * jnp.log10(mse / 4.0),
                   **{k: aux[k] for k in ("commit_loss", "entropy_loss", "usage", "perplexity") if k in aux}}
        loss = rec + aux["loss"]
        if self.gan:
            gan_loss, gan_metrics, new_state["gan_stats"] = self._gan_terms(
                params["discriminator"], model_state["gan_stats"], images, recon, rec_loss,
                capture[-1], params["decoder"]["conv_out"]["kernel"])
            loss, metrics = loss + gan_loss, {**metrics, **gan_metrics}
        return loss, (metrics, new_state)

    def _gan_terms(self, dparams: Any, stats: dict[str, jax.Array], images: jax.Array, recon: jax.Array,
                   rec_loss: Any, last_input: jax.Array, last_kernel: jax.Array
                   ) -> tuple[jax.Array, Metrics, dict[str, jax.Array]]:
        """Generator + discriminator terms wired so each player's gradient comes only from its own loss."""
        cfg, sg = self.config.loss, jax.lax.stop_gradient
        d_frozen = lambda x: self.disc.apply({"params": sg(dparams)}, x)
        gen_adv_fn = lambda r: -jnp.mean(d_frozen(r))
        gen_adv = gen_adv_fn(recon)                                             # grads: tokenizer only
        logits = self.disc.apply({"params": dparams}, jnp.concatenate([images, sg(recon)]))
        real, fake = logits[: images.shape[0]], logits[images.shape[0]:]     # grads: discriminator only
        lecam = lecam_reg(real, fake, stats["ema_real"], stats["ema_fake"])
        d_loss = hinge_d_loss(real, fake) + cfg.lecam_weight * lecam
        if cfg.adaptive_weight:
            h, r = sg(last_input), sg(recon)
            rec_norm = last_layer_grad_norm(h, sg(last_kernel), jax.grad(rec_loss)(r))
            adv_norm = last_layer_grad_norm(h, sg(last_kernel), jax.grad(gen_adv_fn)(r))
            weight = sg(jnp.clip(rec_norm / (adv_norm + 1e-4), 0.0, cfg.adaptive_weight_max))
        else:
            weight = jnp.ones((), jnp.float32)
        on = (stats["step"] >= cfg.adv_start).astype(jnp.float32)
        loss = on * (cfg.adv_weight * weight * gen_adv + cfg.disc_weight * d_loss)
        d = cfg.lecam_decay
        new_stats = {"step": stats["step"] + 1,
                     "ema_real": d * stats["ema_real"] + (1 - d) * sg(jnp.mean(real)),
                     "ema_fake": d * stats["ema_fake"] + (1 - d) * sg(jnp.mean(fake))}
        metrics = {"gen_adv_loss": gen_adv, "disc_loss": d_loss, "lecam": lecam, "adaptive_weight": weight,
                   "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake), "adv_on": on}
        return loss, metrics, new_stats

    # -- evaluation -----------------------------------------------------------------------------------------------
    def eval_step(self, params, model_state, batch) -> Metrics:
        sums, _, _ = self._eval_batch(params, model_state, batch)
        return sums

    def _eval_batch(self, params: Any, model_state: Any, batch: dict[str, jax.Array]
                    ) -> tuple[Metrics, jax.Array, jax.Array]:
        """(per-batch sums incl. `count`, code histogram over valid rows, clipped reconstructions)."""
        variables = self.tokenizer_variables(params, model_state)
        images, valid = batch["image"].astype(jnp.float32), batch["valid"].astype(jnp.float32)
        z_q, ids, _ = self.model.apply(variables, images, method=VQModel.encode)
        recon = jnp.clip(self.model.apply(variables, z_q, method=VQModel.decode), -1.0, 1.0)
        a, b = (images + 1.0) / 2.0, (recon + 1.0) / 2.0
        sums = {"psnr": jnp.sum(jnp.minimum(psnr(a, b), PSNR_CAP) * valid),
                "l1": jnp.sum(jnp.mean(jnp.abs(a - b), axis=(1, 2, 3)) * valid), "count": jnp.sum(valid)}
        if min(images.shape[1:3]) >= 11:
            sums["ssim"] = jnp.sum(ssim(a, b) * valid)
        weights = jnp.broadcast_to(valid[:, None, None], ids.shape).reshape(-1)
        hist = jnp.bincount(ids.reshape(-1), weights=weights, length=self.vq_config.num_codes)
        return sums, hist, recon

    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        step = jax.jit(self._eval_batch)
        ev = self.config.eval
        fid = self.fid_features if ev.inception_path else None
        totals: dict[str, float] = {}
        hist = np.zeros(self.vq_config.num_codes, np.float64)
        grid: tuple[np.ndarray, np.ndarray] | None = None
        real_stats = fake_stats = None
        for batch in ctx.batches(self.source("eval"), self.preprocess, limit=ev.max_examples or None):
            sums, batch_hist, recon = step(params, model_state, batch)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            hist += np.asarray(sharding.to_host(batch_hist), np.float64)
            valid = sharding.to_host(batch["valid"]) > 0     # the whole global batch, on every host
            if grid is None and ev.grid_images:
                n = min(ev.grid_images, int(valid.sum()))
                grid = (to_uint8(sharding.to_host(batch["image"])[:n]), to_uint8(sharding.to_host(recon)[:n]))
            if fid is not None:
                if real_stats is None:
                    from mmjax.eval.fid import FeatureStats

                    real_stats, fake_stats = FeatureStats(), FeatureStats()
                real_stats.add(sharding.to_host(fid(batch["image"]))[valid])
                fake_stats.add(sharding.to_host(fid(recon))[valid])
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError("evaluation saw no valid example (empty or fully skipped eval split)")
        out = {k: v / count for k, v in totals.items()}
        probs = hist / max(hist.sum(), 1.0)
        nonzero = probs[probs > 0]
        out["codebook_usage"] = float(np.mean(hist > 0))
        out["perplexity"] = float(np.exp(-np.sum(nonzero * np.log(nonzero))))
        if real_stats is not None:
            from mmjax.eval.fid import frechet_distance

            out["rfid"] = frechet_distance(*real_stats.mean_cov(), *fake_stats.mean_cov())
        if grid is not None and jax.process_index() == 0:
            scale = max(1, 128 // self.image_size)
            save_png(pairs_grid(*grid, scale=scale), os.path.join(ctx.workdir, "samples", f"recon_{ctx.step}.png"))
        return out

    @functools.cached_property
    def fid_features(self) -> Any:
        """images in [-1, 1] -> (B, 2048) pool features of the FID Inception (weights loaded once per task)."""
        from mmjax.eval.fid import inception_feature_fn

        return inception_feature_fn(self.config.eval.inception_path)
