"""The tokenizer task: it learns (PSNR rises), the one-backward-pass GAN gives each player only its own gradient,
the adaptive weight equals the direct last-layer gradient ratio, LPIPS / discriminators / the photos source."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mmjax import configlib
from mmjax.data.photos import EVAL_PHOTOS, TRAIN_PHOTOS, PhotosSource
from mmjax.models.discriminator import (
    LPIPS,
    LPIPS_TAPS,
    VGG16_CONVS,
    DiscriminatorConfig,
    PatchDiscriminator,
    StyleGANDiscriminator,
    lpips_params_from_state_dict,
)
from mmjax.models.vq import VQModel
from mmjax.train.tasks.vq import VQTask, hinge_d_loss, lecam_reg
from mmjax.train.trainer import Trainer
from tests.helpers import REPO

TINY = os.path.join(REPO, "configs/vq/tiny.py")
SMALL = f"{TINY}:size=16,tokens=8,bits=6,ch=8,batch=16"


def small_config(steps: int, *overrides: str):
    config = configlib.load_config_file(f"{SMALL},steps={steps}")
    return configlib.apply_overrides(config, ["log_every=40", "eval_batch_size=64", "eval.max_examples=128",
                                              "optim.warmup_steps=10", *overrides])


def test_training_raises_psnr_well_above_the_untrained_model(tmp_path):
    config = small_config(150, "ema_decay=0.0")  # 150 steps: an EMA would still lag far behind the params
    trainer = Trainer(config, str(tmp_path))
    task = trainer.task
    # The untrained model's held-out PSNR, measured on the same eval set the trainer reports on.
    batch = {"image": jnp.zeros((2, 16, 16, 3))}
    variables = jax.jit(task.init)(jax.random.key(0, impl="rbg"), batch)
    variables = nn.meta.unbox(variables)
    start = task.evaluate(variables["params"], {}, _ctx(trainer, tmp_path / "start"))["psnr"]
    final = trainer.run()
    assert final["psnr"] > start + 6.0, (start, final["psnr"])   # measured: about 6.6 -> 14.9 dB
    assert 0.0 < final["codebook_usage"] <= 1.0 and final["perplexity"] >= 1.0 and 0.0 < final["ssim"] <= 1.0
    assert os.path.isfile(tmp_path / "samples" / "recon_150.png")
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["final"] and "psnr" in records[0] and "entropy_loss" in records[0]


def _ctx(trainer: Trainer, workdir):
    from mmjax.train.tasks.base import EvalContext

    return EvalContext(trainer.mesh, 64, trainer.counter, str(workdir), 0, False)


# ------------------------------------------------------------------------------------------------- GAN wiring
@pytest.fixture(scope="module")
def gan_setup():
    config = small_config(10, "loss.adv_weight=0.5", "loss.disc_weight=0.7", "loss.lecam_weight=0.3",
                          "discriminator.ch=8", "discriminator.num_layers=2")
    task = VQTask(config)
    images = jnp.asarray(np.stack([task.preprocess(task.source("train")[i], None)["image"] for i in range(4)]))
    variables = nn.meta.unbox(jax.jit(task.init)(jax.random.key(1, impl="rbg"), {"image": images}))
    params = variables.pop("params")
    state = {**variables, "gan_stats": {"step": jnp.asarray(5, jnp.int32), "ema_real": jnp.asarray(0.3),
                                        "ema_fake": jnp.asarray(-0.2)}}
    return task, params, state, {"image": images}


def test_each_gan_player_gets_only_its_own_gradient(gan_setup):
    task, params, state, batch = gan_setup
    cfg = task.config.loss
    rng = jax.random.key(0)
    grads, (metrics, new_state) = jax.jit(jax.grad(task.loss_fn, has_aux=True))(params, state, batch, rng)
    x = batch["image"]
    disc = task.disc
    gen = {k: v for k, v in params.items() if k != "discriminator"}
    recon, _ = jax.jit(task.model.apply)({"params": gen}, x)
    stats = state["gan_stats"]

    def disc_only(dparams):  # the discriminator's loss with the reconstruction as a constant
        real, fake = disc.apply({"params": dparams}, x), disc.apply({"params": dparams}, recon)
        d = hinge_d_loss(real, fake) + cfg.lecam_weight * lecam_reg(real, fake, stats["ema_real"], stats["ema_fake"])
        return cfg.disc_weight * d

    weight = metrics["adaptive_weight"]

    def gen_only(gparams):  # the generator's loss with the discriminator as a constant
        r, aux = task.model.apply({"params": gparams}, x)
        rec = cfg.l1_weight * jnp.mean(jnp.abs(r - x)) + cfg.l2_weight * jnp.mean(jnp.square(r - x))
        return rec + aux["loss"] + cfg.adv_weight * weight * -jnp.mean(disc.apply({"params": params["discriminator"]},
                                                                                    r))

    expect_d = jax.jit(jax.grad(disc_only))(params["discriminator"])
    expect_g = jax.jit(jax.grad(gen_only))(gen)
    for got, want in ((grads["discriminator"], expect_d), ({k: grads[k] for k in gen}, expect_g)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert float(jnp.abs(jax.tree.leaves(expect_d)[0]).sum()) > 0  # both players really are trained
    assert int(new_state["gan_stats"]["step"]) == 6 and float(metrics["adv_on"]) == 1.0


def test_adaptive_weight_is_the_last_layer_gradient_ratio(gan_setup):
    task, params, state, batch = gan_setup
    x = batch["image"]
    _, (metrics, _) = jax.jit(task.loss_fn)(params, state, batch, jax.random.key(0))
    gen = {k: v for k, v in params.items() if k != "discriminator"}
    disc = lambda r: task.disc.apply({"params": params["discriminator"]}, r)

    def last_grad(loss):
        def f(kernel):
            p = {**gen, "decoder": {**gen["decoder"], "conv_out": {**gen["decoder"]["conv_out"], "kernel": kernel}}}
            return loss(task.model.apply({"params": p}, x)[0])
        return jnp.linalg.norm(jax.jit(jax.grad(f))(gen["decoder"]["conv_out"]["kernel"]))

    rec = last_grad(lambda r: jnp.mean(jnp.abs(r - x)) + jnp.mean(jnp.square(r - x)))
    adv = last_grad(lambda r: -jnp.mean(disc(r)))
    np.testing.assert_allclose(metrics["adaptive_weight"], rec / (adv + 1e-4), rtol=1e-4)


def test_no_gan_terms_before_adv_start(gan_setup):
    task, params, state, batch = gan_setup
    early = {**state, "gan_stats": {**state["gan_stats"], "step": jnp.asarray(-1, jnp.int32)}}
    grads, (metrics, _) = jax.jit(jax.grad(task.loss_fn, has_aux=True))(params, early, batch, jax.random.key(0))
    assert float(metrics["adv_on"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["discriminator"]))


# -------------------------------------------------------------------------------------- critics and LPIPS
@pytest.mark.parametrize("kind,module", [("patch", PatchDiscriminator), ("stylegan", StyleGANDiscriminator)])
def test_discriminators_give_finite_logits(kind, module):
    model = module(DiscriminatorConfig(kind=kind, ch=8, num_layers=2))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    out, _ = jax.jit(model.init_with_output)(jax.random.key(1, impl="rbg"), x)
    assert out.shape[0] == 4 and bool(jnp.isfinite(out).all())
    with pytest.raises(ValueError, match="unknown discriminator fields"):
        DiscriminatorConfig.from_dict({"chh": 3})


def test_lpips_weights_load_and_distance_properties(tmp_path):
    rng = np.random.default_rng(0)
    state, in_ch = {}, 3
    for idx, ch in VGG16_CONVS:
        state[f"features.{idx}.weight"] = rng.normal(0, np.sqrt(2 / (9 * in_ch)), (ch, in_ch, 3, 3)).astype(np.float32)
        state[f"features.{idx}.bias"] = np.zeros(ch, np.float32)
        in_ch = ch
    taps = [ch for idx, ch in VGG16_CONVS if idx in LPIPS_TAPS]
    for k, ch in enumerate(taps):
        state[f"lin{k}.model.1.weight"] = np.abs(rng.normal(size=(1, ch, 1, 1))).astype(np.float32)
    state["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # other keys of a full VGG file are ignored
    params = lpips_params_from_state_dict(state)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), -1, 1)
    d = jax.jit(LPIPS().apply)({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([x, y]))
    assert float(jnp.abs(d[:2]).max()) < 1e-6 and bool((d[2:] > 0).all())
    del state["lin2.model.1.weight"]
    with pytest.raises(ValueError, match="lin2"):
        lpips_params_from_state_dict(state)


# -------------------------------------------------------------------------------------------- photos source
def test_photos_split_by_photo_and_deterministic():
    assert not set(TRAIN_PHOTOS) & set(EVAL_PHOTOS)
    train, held_out = PhotosSource("train", crop_size=16, num_records=50), PhotosSource("eval", crop_size=16)
    a, b = train[7], PhotosSource("train", crop_size=16, num_records=50)[7]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (16, 16, 3) and a["image"].dtype == np.uint8
    assert {train[i]["photo"] for i in range(50)} <= set(TRAIN_PHOTOS)
    assert {held_out[i]["photo"] for i in range(50)} <= set(EVAL_PHOTOS)
    with pytest.raises(IndexError):
        train[50]


def test_unknown_loss_fields_and_missing_lpips_weights_are_refused():
    with pytest.raises(configlib.ConfigError, match="lpips_path"):
        VQTask(small_config(1, "loss.perceptual_weight=1.0"))
    config = small_config(1)
    config.unlock()
    config.loss.perceptual = 1.0
    with pytest.raises(configlib.ConfigError, match="perceptual"):
        VQTask(config)


def test_vq_ema_quantizer_statistics_travel_as_model_state():
    config = small_config(1)
    config.unlock()
    config.model.quantizer, config.model.codebook_size, config.model.z_channels = "vq", 16, 4
    task = VQTask(config)
    x = jnp.asarray(np.stack([task.preprocess(task.source("train")[i], None)["image"] for i in range(4)]))
    variables = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0, impl="rbg"), {"image": x}))
    params = variables.pop("params")
    _, (metrics, new_state) = jax.jit(task.loss_fn)(params, variables, {"image": x}, jax.random.key(1))
    assert int(new_state["vq_stats"]["quantize"]["updates"]) == 1 and "usage" in metrics
    assert isinstance(task.model, VQModel)


# -------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("spec", ["tiny.py", "tiny.py:tokens=4", "photos.py", "showo_magvitv2.py:res=512",
                                  "lfq_imagenet.py", "lfq_imagenet.py:lpips=/weights/lpips.safetensors"])
def test_vq_configs_build_their_tasks(spec):
    from mmjax.models.vq import showo_magvitv2

    task = VQTask(configlib.load_config_file(os.path.join(REPO, "configs/vq", spec)))
    grid = task.image_size // task.vq_config.downsample_factor
    if spec.startswith("tiny"):
        assert grid == (4 if "tokens=4" in spec else 8) and task.vq_config.num_codes == 1024
    if spec.startswith("photos"):
        assert task.source("eval")[0]["image"].shape == (32, 32, 3)
    if spec.startswith("showo"):
        assert task.vq_config == showo_magvitv2() and grid == 32 and not task.gan
    if spec.startswith("lfq_imagenet"):
        assert task.vq_config.num_codes == 2 ** 18 and not task.vq_config.msb_first and task.gan
        assert (task.lpips is not None) == ("lpips=" in spec)


def test_released_weights_load_through_pretrained_variables(tmp_path):
    from mmjax.convert.magvitv2 import save_magvitv2

    task = VQTask(small_config(1))
    x = jnp.zeros((1, 16, 16, 3))
    params = nn.meta.unbox(jax.jit(task.init)(jax.random.key(3, impl="rbg"), {"image": x}))["params"]
    save_magvitv2(tmp_path, params, task.vq_config)
    config = small_config(1, f"pretrained.path={tmp_path}", "pretrained.format=magvitv2")
    loaded = VQTask(config).pretrained_variables()["params"]
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
