# %% [markdown]
# # Show-o: text-to-image with CFG, inpainting, extrapolation and image understanding
#
# One Show-o transformer does four jobs, all through the functions `python -m mmjax.sample` uses:
# **text-to-image** (MaskGIT decoding of image tokens with classifier-free guidance), **inpainting** (the masked
# tokens are repainted, the others kept), **extrapolation** (the token grid grows to one side) and
# **understanding** (greedy answers with a KV cache).
#
# With the released weights (converted checkpoints; set the paths in the setup cell) it runs the real 1.3B model
# (a GPU runtime: set `RUNTIME = "gpu"`). Without them it falls back to the tiny Show-o of `quickstart.ipynb`,
# trained on synthetic shapes (reused when quickstart already trained it in the same output folder).
#
# **Time**: tiny model, CPU: about 15 minutes when it has to train (the configs' full runs), about 1 minute when
# quickstart's run is there; released 256 px model on a GPU: a few minutes, most of it loading the weights.

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # "cpu", "gpu" or "tpu": installs the matching jax build
# The released model: all three set -> Show-o 1.3B; any left empty -> the tiny model (docs/showo.md, converting).
SHOWO_WEIGHTS = ""  # a released Show-o checkpoint directory (safetensors), e.g. showlab/show-o
MAGVIT_WEIGHTS = ""  # Show-o's MAGVIT-v2 converted to safetensors (python -m mmjax.convert.magvitv2)
PHI_TOKENIZER = ""  # a directory with Phi-1.5's tokenizer.json
RELEASE_CONFIG = "configs/showo/pretrain.py:stage=3,res=256"  # res=512 for the 512 px release
TOKENIZER_STEPS = 1200  # the tiny fallback: configs/vq/tiny.py's full run
SHOWO_STEPS = 1000  # configs/showo/tiny.py's full run

# %%
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from mmjax import configlib
from mmjax.data.photos import load_photo
from mmjax.models import showo as showo_model
from mmjax.models.showo_layout import inpainting_token_mask
from mmjax.models.vq import decode_ids
from mmjax.sample import load_run
from mmjax.train.tasks import make_task
from mmjax.train.trainer import train

RELEASED = all((SHOWO_WEIGHTS, MAGVIT_WEIGHTS, PHI_TOKENIZER))
if FAST:
    TOKENIZER_STEPS, SHOWO_STEPS = FAST_STEPS, FAST_STEPS


def finished(workdir: str) -> bool:
    """A run whose metrics.jsonl holds its final evaluation is done: reuse it instead of resuming it."""
    try:
        with open(f"{workdir}/metrics.jsonl") as f:
            return any(json.loads(line).get("final") for line in f)
    except FileNotFoundError:
        return False


def train_once(config_spec: str, name: str, *overrides: str) -> str:
    """`python -m mmjax.train --config SPEC --workdir DIR --config.<override> ...` unless the run of these settings
    (quickstart's, when the settings are its own) is finished; returns its directory."""
    config = configlib.apply_overrides(configlib.load_config_file(config_spec), list(overrides))
    workdir = run_dir(name, config)
    if not finished(workdir):
        train(config, workdir)
    return workdir


print("released Show-o" if RELEASED else "tiny Show-o (set the three paths in the setup cell for the release)")

# %% [markdown]
# ## 1. The model
# Released weights: the task is built from the release's config with the weight paths filled in, and
# `task.pretrained_variables()` loads the Show-o parameters (`init.showo`) and the frozen MAGVIT-v2 tokenizer.
# Tiny model: `load_run` rebuilds the task from the run's `config.json` and loads its newest checkpoint, exactly
# as `python -m mmjax.sample --workdir RUN` does.

# %%
if RELEASED:
    config = configlib.apply_overrides(configlib.load_config_file(RELEASE_CONFIG), [
        f"init.showo={SHOWO_WEIGHTS}", f"tokenizer.converted={MAGVIT_WEIGHTS}", f"text.path={PHI_TOKENIZER}",
        "eval.batch=4"])
    task = make_task(config)
    variables = task.pretrained_variables()
    params, model_state = variables["params"], {"tokenizer": variables["tokenizer"]}
else:  # quickstart.ipynb's two runs, trained here when they are absent
    tokenizer_dir = train_once(f"configs/vq/tiny.py:tokens=4,bits=6,steps={TOKENIZER_STEPS}", "quickstart/tokenizer",
                               "log_every=50", *(["eval.max_examples=32"] if FAST else []))
    showo_dir = train_once(f"configs/showo/tiny.py:steps={SHOWO_STEPS}{',records=64' if FAST else ''}",
                           "quickstart/showo", f"tokenizer.workdir={tokenizer_dir}", "log_every=50",
                           *(["eval.num_t2i=4", "eval.num_mmu=4", "eval.batch=4", "eval.loss_batches=1",
                              "eval.t2i_steps=2", "eval.max_new_tokens=4"] if FAST else []))
    task, params, model_state = load_run(showo_dir)
ev = task.config.eval
decoding = dict(max_text_len=task.s, num_steps=int(ev.t2i_steps), guidance_scale=float(ev.guidance_scale),
                generation_temperature=float(ev.generation_temperature),
                logit_temperature=float(ev.logit_temperature))
print(f"{task.image_size} px images, {task.grid}x{task.grid} tokens, {ev.t2i_steps} MaskGIT steps, "
      f"CFG {ev.guidance_scale}")

# %% [markdown]
# ## 2. Text-to-image, with and without classifier-free guidance
# Each MaskGIT step runs the conditional and the unconditional (empty prompt) rows in one forward and samples from
# `(1 + w) * cond - w * uncond`; `w = 0` is plain conditional sampling.

# %%
PROMPTS = (["a photo of a red apple on a wooden table", "a lighthouse at sunset"] if RELEASED
           else ["a red circle", "a blue square"])


def t2i(prompts: list[str], guidance: float, seed: int = 0) -> np.ndarray:
    text, lens = task.text_batch(prompts, task.s)
    canvas = showo_model.blank_canvas(len(prompts), task.n, task.vocab)
    codes = showo_model.t2i_generate(task.model, params, text, lens, canvas, jax.random.key(seed),
                                     **{**decoding, "guidance_scale": guidance}).tokens
    return task.decode_codes(model_state, codes)


fig, axes = plt.subplots(2, len(PROMPTS), figsize=(3 * len(PROMPTS), 6.4), squeeze=False)
for row, guidance in enumerate((0.0, float(ev.guidance_scale))):
    for ax, image, prompt in zip(axes[row], t2i(PROMPTS, guidance), PROMPTS):
        ax.imshow(image)
        ax.set_title(f"{prompt}\nCFG w={guidance:g}", fontsize=8)
        ax.axis("off")
plt.show()

# %% [markdown]
# ## 3. The image the next sections edit and question
# The release gets a real photo (scikit-image's astronaut); the tiny model a held-out scene of its eval split.


# %%
def to_model_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float (size, size, 3) in [-1, 1]: centre crop, resize, scale like the training data."""
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    resized = Image.fromarray(crop).resize((task.image_size, task.image_size), Image.BICUBIC)
    return np.asarray(resized, np.float32) / 127.5 - 1.0


if RELEASED:
    pixels, question, prompt = to_model_pixels(load_photo("astronaut")), "What is the person wearing?", "an astronaut"
else:
    record = task.batches("eval").sources["mmu"][0]
    pixels = task.batches("eval").builder.image(record, "notebook")
    question, prompt = record["question"], "a green square"
codes = task.encode_images(model_state, pixels[None])
plt.figure(figsize=(3, 3))
plt.imshow(task.decode_codes(model_state, codes)[0])
plt.title("the image through the tokenizer", fontsize=9)
plt.axis("off")
plt.show()

# %% [markdown]
# ## 4. Inpainting and extrapolation
# Inpainting: white pixels of a mask are repainted. The mask is resized to the token grid (bicubic, threshold 0.5,
# as the reference) and those tokens start as [MASK]; the rest of the image stays. Extrapolation: the grid grows
# by half its width to the right, the new columns generated next to the kept ones.

# %%
mask = np.zeros((1, task.image_size, task.image_size), np.float32)
mask[:, :, task.image_size // 2:] = 1.0  # repaint the right half
token_mask = inpainting_token_mask(jnp.asarray(mask), task.grid)
text, lens = task.text_batch([prompt], task.s)
painted = showo_model.inpaint(task.model, params, text, lens, codes, token_mask, jax.random.key(1), **decoding)
grid = codes.reshape(1, task.grid, task.grid)
wider = showo_model.extrapolate(task.model, params, text, lens, grid, "right", jax.random.key(2), **decoding)
wide_pixels = np.asarray(decode_ids(  # a non-square grid: decoded as the sampler does
    task.vq_model, model_state["tokenizer"], jnp.asarray(wider)))

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]})
panels = [((pixels + 1) / 2, "input"), (mask[0], "mask (white = repaint)"),
          (task.decode_codes(model_state, painted)[0], f"inpainted: {prompt!r}"),
          (np.clip((wide_pixels[0] + 1) / 2, 0, 1), "extrapolated to the right")]
for ax, (image, title) in zip(axes, panels):
    ax.imshow(image, cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 5. Understanding
# `task.answer` prefills `<|mmu|> image question` (the image tokens attend to each other) and decodes greedily.

# %%
answer = task.answer(params, model_state, codes, [question])[0]
print(f"Q: {question}\nA: {answer}")
