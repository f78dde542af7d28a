# %% [markdown]
# # mmjax quickstart: an image tokenizer and Show-o, trained from scratch on a CPU
#
# This notebook trains the two models of `make demo` on synthetic 32x32 shapes ("a red circle"):
#
# 1. a tiny **LFQ image tokenizer** (MAGVIT-v2 style): 32x32 images become 4x4 grids of ids from 64 codes;
# 2. a tiny **Show-o**: one transformer that generates images from captions (masked-token decoding with
#    classifier-free guidance) and answers questions about images (next-token prediction), on top of the tokenizer.
#
# Then it plots both loss curves from the runs' `metrics.jsonl`, draws images for prompts it was trained on and for
# colour x shape combinations it never saw, and asks it questions about held-out scenes.
#
# **Time**: about 15 minutes on a 2-core CPU runtime with the settings below (the configs' full runs: tokenizer
# 1,200 steps, Show-o 1,000 steps); a few minutes on a GPU. Lower the step counts for a faster, blurrier look.
# To scale up, change only the setup cell: `RUNTIME = "gpu"` or `"tpu"` (pick the same runtime type in Colab).

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # "cpu", "gpu" or "tpu": installs the matching jax build
TOKENIZER_STEPS = 1200  # configs/vq/tiny.py's full run
SHOWO_STEPS = 1000  # configs/showo/tiny.py's full run

# %%
import json

import jax
import matplotlib.pyplot as plt
import numpy as np

from mmjax import configlib
from mmjax.train.trainer import train

# FAST (the test suite) trains a couple of steps on a small pretokenized split and evaluates on a handful.
FAST_TOKENIZER = ["eval.max_examples=32"] if FAST else []
FAST_SHOWO = ["eval.num_t2i=4", "eval.num_mmu=4", "eval.batch=4", "eval.loss_batches=1", "eval.t2i_steps=2",
              "eval.max_new_tokens=4"] if FAST else []
if FAST:
    TOKENIZER_STEPS, SHOWO_STEPS = FAST_STEPS, FAST_STEPS


def run(config_spec: str, name: str, *overrides: str) -> tuple[dict, str]:
    """`python -m mmjax.train --config SPEC --workdir DIR --config.<override> ...`, in this process, into the
    run directory of these settings (`run_dir`); returns the final metrics and that directory."""
    config = configlib.apply_overrides(configlib.load_config_file(config_spec), list(overrides))
    workdir = run_dir(name, config)
    return train(config, workdir), workdir


print(jax.devices())

# %% [markdown]
# ## 1. The image tokenizer
# `configs/vq/tiny.py:tokens=4,bits=6`: an encoder downsamples 32x32 -> 4x4, lookup-free quantization turns each
# of the 6 latent channels into a bit (64 codes), a decoder maps the codes back to pixels. Losses: L1 + L2 + LFQ's
# commitment and entropy terms. The final evaluation reconstructs held-out scenes (PSNR, SSIM, codebook usage).
# Re-running the cell resumes the run from its last checkpoint (and returns at once when it is done); after a
# setting changed it trains into a new run directory, named by the settings.

# %%
tok, tokenizer_dir = run(f"configs/vq/tiny.py:tokens=4,bits=6,steps={TOKENIZER_STEPS}", "quickstart/tokenizer",
                         "log_every=50", *FAST_TOKENIZER)
print({k: round(v, 3) for k, v in tok.items() if k in ("psnr", "ssim", "codebook_usage")})

# %% [markdown]
# ## 2. Show-o on top of it
# `configs/showo/tiny.py`: each step sees 8 text-to-image rows (masked image tokens after the caption), 1 text row
# and 20 question rows (`<|mmu|> image question answer`). The training split never shows four colour x shape
# pairs (red triangle, green diamond, blue circle, yellow square); the final evaluation scores seen and unseen
# compositions apart.

# %%
records = ",records=64" if FAST else ""
final, showo_dir = run(f"configs/showo/tiny.py:steps={SHOWO_STEPS}{records}", "quickstart/showo",
                       f"tokenizer.workdir={tokenizer_dir}", "log_every=50", *FAST_SHOWO)
print({k: round(v, 3) for k, v in final.items() if k.startswith(("t2i_match", "mmu_accuracy", "mmu_blind"))})

# %% [markdown]
# ## 3. Loss curves
# Every run appends one JSON object per logged step to `metrics.jsonl`; the final evaluation carries
# `"final": true`.


# %%
def train_curve(workdir: str, key: str) -> tuple[list[int], list[float]]:
    with open(f"{workdir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["split"] == "train" and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(*train_curve(tokenizer_dir, "loss"), marker=".")
axes[0].set(title="tokenizer: L1 + L2 + LFQ terms", xlabel="step", yscale="log")
for key in ("t2i_loss", "lm_loss", "mmu_loss"):
    axes[1].plot(*train_curve(showo_dir, key), marker=".", label=key)
axes[1].set(title="Show-o: the three objectives", xlabel="step", yscale="log")
axes[1].legend()
plt.show()

# %% [markdown]
# ## 4. Text-to-image: seen and unseen prompts
# `mmjax.sample.load_run` rebuilds the task from the run's `config.json` and loads its newest checkpoint (EMA
# weights) and the frozen tokenizer; `task.generate_images` runs MaskGIT decoding with CFG (the command line:
# `python -m mmjax.sample --workdir RUN --task t2i --prompt "a red circle"`).

# %%
from mmjax.sample import load_run

task, params, model_state = load_run(showo_dir)
unseen = [f"a {c}" for c in task.config.data.train.t2i.source.holdout_combos]
seen = ["a red circle", "a green square", "a blue triangle", "a yellow diamond"]
images = task.generate_images(params, model_state, seen + unseen, jax.random.key(0))

fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
for ax, image, prompt in zip(axes.flat, images, seen + unseen):
    ax.imshow(image)
    ax.set_title(("seen: " if prompt in seen else "UNSEEN: ") + prompt[2:], fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 5. Questions about held-out scenes
# The eval split's scenes and questions (seed 1, never trained on); `task.answer` decodes greedily with the KV
# cache, the image tokens attending to each other in the prefix.

# %%
data = task.batches("eval")
source = data.sources["mmu"]
scenes = [source[i] for i in range(8)]
pixels = np.stack([data.builder.image(r, "notebook") for r in scenes])  # [-1, 1]
answers = task.answer(params, model_state, task.encode_images(model_state, pixels), [r["question"] for r in scenes])

fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
for ax, image, record, answer in zip(axes.flat, pixels, scenes, answers):
    ax.imshow((image + 1) / 2)
    mark = "right" if answer == record["answer"] else f"wrong, truth: {record['answer']}"
    ax.set_title(f"{record['question']}\n-> {answer!r} ({mark})", fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# Next: `show_o.ipynb` (inpainting, extrapolation, released weights), `llava.ipynb`, `tokenizer.ipynb`,
# `diffusion.ipynb`, `tpu.ipynb`; from a terminal, docs/getting_started.md runs the same steps as commands.
