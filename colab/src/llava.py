# %% [markdown]
# # LLaVA: AnyRes tiling, token budgets, label masks, and two-stage training
#
# 1. How LLaVA-NeXT (**AnyRes**, 336 px tiles) and LLaVA-OneVision (**AnyRes-max-9**, 384 px tiles) cut a real
#    photo into tiles, drawn over the photo, and how many image tokens each layout costs the language model.
# 2. A training conversation rendered with its template and its **label mask**: which tokens the loss learns.
# 3. The tiny LLaVA of `configs/llava/tiny.py` trained in its two stages (stage 1: only the projector learns on
#    captions; stage 2: instruction tuning on questions), then asked questions about held-out scenes.
#
# **Time**: about 6 minutes on a 2-core CPU runtime with the configs' full runs (300 + 600 steps); about a minute
# on a GPU (`RUNTIME = "gpu"`). Sections 1 and 2 are instant.

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # "cpu", "gpu" or "tpu": installs the matching jax build
PHOTO = "chelsea"  # a scikit-image photo (mmjax.data.photos: astronaut, coffee, chelsea, rocket, ...)
STAGE1_STEPS = 300  # configs/llava/tiny.py's full runs
STAGE2_STEPS = 600

# %%
import html
import json

import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from mmjax import configlib
from mmjax.data.conversation import tokenize_conversation
from mmjax.data.photos import load_photo
from mmjax.layout.anyres import LLAVA_NEXT_PINPOINTS, ONEVISION_PINPOINTS, anyres_token_layout, fit_size
from mmjax.train.checkpoint import load_params
from mmjax.train.tasks import make_task
from mmjax.train.trainer import train

if FAST:
    STAGE1_STEPS, STAGE2_STEPS = FAST_STEPS, FAST_STEPS

# The two layouts: (tile size, ViT patch, candidate canvases, anyres_max reduction, base-view tokens)
LAYOUTS = {"LLaVA-NeXT AnyRes (CLIP-336/14)": (336, 14, LLAVA_NEXT_PINPOINTS, None, 576),
           "OneVision AnyRes-max-9 (SigLIP-384/14)": (384, 14, ONEVISION_PINPOINTS, 9, 729)}

# %% [markdown]
# ## 1. AnyRes tiling over a real photo
# The photo is resized to fit the best canvas among the candidates (the one that keeps the most of its resolution
# with the least padding), padded, and cut into tiles; each tile and a downscaled base view go through the vision
# tower. The features of the tiles are stitched into one map, the rows and columns that only saw padding are
# cropped away (`unpad_box`), OneVision pools what is left down to at most 9 tiles' worth, and one newline token
# ends every row. `mmjax.layout.anyres.anyres_token_layout` is the single place these numbers come from.

# %%
image = load_photo(PHOTO)
size = (image.shape[1], image.shape[0])  # (width, height), PIL's order
fig, axes = plt.subplots(1, len(LAYOUTS), figsize=(13, 5))
for ax, (name, (tile, patch, pinpoints, max_tiles, base)) in zip(axes, LAYOUTS.items()):
    layout = anyres_token_layout(size, pinpoints, tile, patch, max_tiles=max_tiles, base_tokens=base)
    canvas_w, canvas_h = layout.best_resolution
    fit_w, fit_h = fit_size(size, layout.best_resolution)
    left, top = (canvas_w - fit_w) / 2, (canvas_h - fit_h) / 2  # the resized photo is pasted centred
    ax.add_patch(patches.Rectangle((0, 0), canvas_w, canvas_h, color="0.85"))
    ax.imshow(image, extent=(left, left + fit_w, top + fit_h, top))
    rows, cols = layout.grid
    for r in range(rows + 1):
        ax.axhline(r * tile, color="red", lw=2)
    for c in range(cols + 1):
        ax.axvline(c * tile, color="red", lw=2)
    ax.set(xlim=(0, canvas_w), ylim=(canvas_h, 0))
    ax.set_title(f"{name}\n{rows}x{cols} tiles of {tile} px on a {canvas_w}x{canvas_h} canvas: "
                 f"{layout.num_tokens} tokens", fontsize=9)
plt.show()

# %% [markdown]
# ### Token counts per layout
# For a few image sizes: `pad` (LLaVA-1.5: one square view), then the two AnyRes layouts with the tile map before
# and after unpadding / pooling. The language model pays for every one of these tokens.

# %%
print(f"{'image (w x h)':>14s} {'pad':>5s} | {'layout':40s} {'grid':>5s} {'stitched':>9s} {'kept':>8s} {'tokens':>6s}")
for w, h in [(336, 336), (size[0], size[1]), (640, 480), (1024, 768), (2048, 512), (3000, 2000)]:
    for i, (name, (tile, patch, pinpoints, max_tiles, base)) in enumerate(LAYOUTS.items()):
        layout = anyres_token_layout((w, h), pinpoints, tile, patch, max_tiles=max_tiles, base_tokens=base)
        stitched, kept = "x".join(map(str, layout.feature_shape)), "x".join(map(str, layout.reduced_shape))
        first = f"{w:>6d} x {h:<5d} {576:>5d}" if i == 0 else " " * 20
        print(f"{first} | {name:40s} {layout.grid[0]}x{layout.grid[1]:<3d} {stitched:>9s} {kept:>8s} "
              f"{layout.num_tokens:>6d}")

# %% [markdown]
# ## 2. A conversation and its label mask
# Stage 2 of the tiny config renders a synthetic scene's question with the `chatml` template. The image placeholder
# becomes one marker id that the model expands into the image features; labels are `-100` (ignored) except on
# what the template supervises (green below): for chatml the assistant turns and the turn tokens.

# %%
stage2_spec = f"configs/llava/tiny.py:stage=2,steps={STAGE2_STEPS}"
task = make_task(configlib.load_config_file(stage2_spec))
record = task.source("train")[3]
conversation, images = task.conversation(record)
print(json.dumps(conversation, indent=1))
tokens = tokenize_conversation(conversation, task.config.text.template, task.tokenizer, task.config.text.max_len,
                               task.model_cfg.image_token_id, image_token_len=16)
spans = []
for token, supervised in zip(tokens.input_ids, tokens.labels >= 0):
    text = "<image: 16 positions>" if token == task.model_cfg.image_token_id else task.tokenizer.decode([token])
    colour = "#9be59b" if supervised else "#eeeeee"
    spans.append(f'<span style="background:{colour};color:black;white-space:pre">{html.escape(text)}</span>')
display(HTML(f"<p>{tokens.num_supervised} of {len(tokens.input_ids)} tokens supervised</p>"
             f"<div style='font-family:monospace;line-height:1.8'>{''.join(spans)}</div>"))

# %% [markdown]
# ## 3. Stage 1 and stage 2 of the tiny LLaVA
# A micro CLIP-style ViT (8 px patches: 16 tokens per 32 px scene), a 2-layer LLaMA and the byte tokenizer.
# Stage 1 aligns: captions in the `plain` template, only `mm_projector` learns. Stage 2 starts from stage 1's
# checkpoint (`init.workdir`) and learns to answer questions.

# %%
small_eval = ["eval.num_examples=8", "data.eval.num_records=8", "eval_batch_size=8"] if FAST else []
stage1 = configlib.apply_overrides(
    configlib.load_config_file(f"configs/llava/tiny.py:stage=1,steps={STAGE1_STEPS}"), small_eval)
stage1_dir = run_dir("llava/stage1", stage1)
stage2 = configlib.apply_overrides(configlib.load_config_file(stage2_spec),
                                   [f"init.workdir={stage1_dir}", *small_eval])
stage2_dir = run_dir("llava/stage2", stage2)  # keyed by stage 1's run too: new stage-1 settings retrain stage 2
for config, workdir in [(stage1, stage1_dir), (stage2, stage2_dir)]:
    final = train(config, workdir)
    print(workdir, {k: round(v, 3) for k, v in final.items() if isinstance(v, float)})

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, (name, workdir) in zip(axes, [("stage 1: captions", stage1_dir), ("stage 2: questions", stage2_dir)]):
    with open(f"{workdir}/metrics.jsonl") as f:
        rows = [r for r in map(json.loads, f) if r["split"] == "train" and "loss" in r]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
    ax.set(title=name, xlabel="step", ylabel="loss", yscale="log")
plt.show()

# %% [markdown]
# ### Questions about held-out scenes
# `task.answer` builds the prompt with the template, embeds the image features in place of the marker and decodes
# greedily until the template's stop token.

# %%
params = load_params(stage2_dir, key="params")
eval_records = [task.source("eval")[i] for i in range(6)]
prompts = [task.qa_prompt(r) for r in eval_records]
answers = task.answer(params, [(conv, imgs) for conv, imgs, _ in prompts], batch_size=len(prompts),
                      max_new_tokens=12)
fig, axes = plt.subplots(1, len(prompts), figsize=(2.4 * len(prompts), 3.2))
for ax, (conv, imgs, truth), answer in zip(axes, prompts, answers):
    ax.imshow(np.asarray(imgs[0]))
    question = conv[0]["value"].replace("<image>\n", "")
    ax.set_title(f"{question}\n-> {answer!r}\n(truth: {truth})", fontsize=7)
    ax.axis("off")
plt.show()
