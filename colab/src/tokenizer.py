# %% [markdown]
# # The LFQ image tokenizer on real photos: reconstructions, codebook usage, PSNR / SSIM
#
# MAGVIT-v2's lookup-free quantization (LFQ) in a tiny tokenizer trained on 32x32 crops of scikit-image's
# photographs (`configs/vq/photos.py`): each latent channel is one bit, so 10 channels index 2^10 = 1024 codes
# with no codebook to look up. The notebook trains it, then encodes whole photos it never saw (the encoder is
# convolutional: any size that is a multiple of its downsampling factor works), decodes the ids back, and scores
# the reconstructions (PSNR, SSIM) and how evenly the codes are used.
#
# **Time**: about 8 minutes on a 2-core CPU runtime with the config's full run (1,500 steps); about a minute on a
# GPU (`RUNTIME = "gpu"`). More steps and channels give sharper reconstructions:
# `CONFIG = "configs/vq/photos.py:steps=4000,ch=32,bits=12"`.

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # "cpu", "gpu" or "tpu": installs the matching jax build
CONFIG = "configs/vq/photos.py:steps=1500"  # the full run: 8x8 ids of 1024 codes per 32x32 crop
PHOTO_SIZE = 128  # held-out photos are centre-cropped and resized to this many pixels per side

# %%
import json

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from mmjax import configlib
from mmjax.data.photos import EVAL_PHOTOS, load_photo
from mmjax.eval.image_metrics import psnr, ssim
from mmjax.models.vq import VQModel, decode_ids, encode_to_ids
from mmjax.models.vq_config import VQConfig
from mmjax.train.checkpoint import load_params
from mmjax.train.trainer import train

if FAST:  # a couple of steps with the architecture of quickstart's tokenizer (4x4 ids, 64 codes)
    CONFIG, PHOTO_SIZE = f"configs/vq/photos.py:tokens=4,bits=6,steps={FAST_STEPS}", 64

# %% [markdown]
# ## 1. Train
# Random 32x32 crops at scales 1, 1/2 and 1/4 of 15 training photos; the final evaluation uses 1,024 crops of four
# other photos (chelsea, rocket, camera, brick). Losses: L1 + L2 + LFQ's commitment and entropy terms.

# %%
overrides = ["eval.max_examples=32", "data.eval.num_records=32"] if FAST else []
config = configlib.apply_overrides(configlib.load_config_file(CONFIG), overrides)
workdir = run_dir("tokenizer/photos", config)
final = train(config, workdir)
print({k: round(v, 3) for k, v in final.items() if k in ("psnr", "ssim", "codebook_usage", "perplexity")})

# %% [markdown]
# ## 2. Whole held-out photos through the tokenizer
# The run's `config.json` holds the architecture; the EMA weights are what the evaluation used.

# %%
with open(f"{workdir}/config.json") as f:
    run_config = json.load(f)
model = VQModel(VQConfig.from_dict(run_config["model"]))
params = load_params(workdir, key="ema_params" if run_config.get("ema_decay") else "params")


def photo(name: str) -> np.ndarray:
    """A held-out photo, centre-cropped square and resized, as float (S, S, 3) in [-1, 1]."""
    image = load_photo(name)
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    return np.asarray(Image.fromarray(crop).resize((PHOTO_SIZE, PHOTO_SIZE), Image.BICUBIC), np.float32) / 127.5 - 1


originals = jnp.asarray(np.stack([photo(name) for name in EVAL_PHOTOS]))
ids = encode_to_ids(model, params, originals)  # (photos, S / factor, S / factor) integers
recon = jnp.clip(decode_ids(model, params, ids), -1.0, 1.0)
scores = {"psnr": psnr((originals + 1) / 2, (recon + 1) / 2), "ssim": ssim((originals + 1) / 2, (recon + 1) / 2)}

fig, axes = plt.subplots(2, len(EVAL_PHOTOS), figsize=(3 * len(EVAL_PHOTOS), 6.4))
for i, name in enumerate(EVAL_PHOTOS):
    axes[0, i].imshow((np.asarray(originals[i]) + 1) / 2)
    axes[0, i].set_title(f"{name} ({PHOTO_SIZE} px)", fontsize=9)
    axes[1, i].imshow((np.asarray(recon[i]) + 1) / 2)
    axes[1, i].set_title(f"{ids.shape[1]}x{ids.shape[2]} ids: {float(scores['psnr'][i]):.1f} dB, "
                         f"SSIM {float(scores['ssim'][i]):.2f}", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 3. Codebook usage
# How often each of the 2^bits codes appears in the held-out photos' ids. LFQ's entropy loss pushes towards a flat
# histogram (every code used, none dominating); the perplexity `exp(entropy)` counts the codes in effective use.

# %%
num_codes = 2 ** model.config.z_channels
counts = np.bincount(np.asarray(ids).ravel(), minlength=num_codes)
p = counts[counts > 0] / counts.sum()
perplexity = float(np.exp(-(p * np.log(p)).sum()))
plt.figure(figsize=(10, 3))
plt.bar(np.arange(num_codes), counts, width=1.0)
plt.title(f"{(counts > 0).mean():.0%} of {num_codes} codes used by {counts.sum()} ids; perplexity {perplexity:.0f}")
plt.xlabel("code id")
plt.ylabel("count")
plt.show()
print({"mean psnr (dB)": round(float(scores["psnr"].mean()), 2), "mean ssim": round(float(scores["ssim"].mean()), 3)})
