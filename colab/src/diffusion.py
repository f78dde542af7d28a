# %% [markdown]
# # Discrete diffusion: the D3PM forward process, its posteriors, and MaskGIT decoding step by step
#
# Images as grids of discrete tokens (sklearn's 8x8 handwritten digits quantized to 4 grey levels), corrupted by
# a Markov chain of transition matrices (D3PM, Austin et al. 2021) and denoised by a network that predicts the
# clean tokens. The notebook shows
#
# 1. the **forward process** `q(x_t | x_0)` on one digit for the uniform and the absorbing ([MASK]) kinds;
# 2. the **posterior** `q(x_{t-1} | x_t, x_0)` the reverse process learns to match, as heat maps;
# 3. **MaskGIT decoding** step by step with a denoiser trained here (`configs/d3pm/digits.py`): each step
#    predicts every masked token, keeps the most confident and masks the rest again.
#
# **Time**: sections 1 and 2 are instant; training takes about 8 minutes on a 2-core CPU runtime with the config's
# full run (3,000 steps), about a minute on a GPU (`RUNTIME = "gpu"`).

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # "cpu", "gpu" or "tpu": installs the matching jax build
DENOISER_STEPS = 3000  # configs/d3pm/digits.py's full run
MASKGIT_STEPS = 8  # decoding steps shown in section 3

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mmjax import configlib
from mmjax.data.sources import DigitsSource
from mmjax.diffusion import maskgit
from mmjax.diffusion.d3pm import D3PM
from mmjax.train.checkpoint import load_params
from mmjax.train.tasks import make_task
from mmjax.train.tasks.d3pm import quantize
from mmjax.train.trainer import train

if FAST:
    DENOISER_STEPS = FAST_STEPS
LEVELS, T = 4, 64
digit = quantize(np.asarray(DigitsSource("test")[0]["image"])[..., 0], LEVELS)  # (8, 8) ids in 0..3
processes = {"uniform": D3PM.create("uniform", LEVELS, T),
             "absorbing": D3PM.create("absorbing", LEVELS + 1, T)}  # class 4 is [MASK]
TIMES = [0, 4, 16, 32, 48, 64]


def show(ax, tokens: np.ndarray, title: str) -> None:
    """A grid of ids: grey levels for 0..3, red for [MASK] (id 4)."""
    rgb = np.repeat((np.asarray(tokens, np.float32) / (LEVELS - 1))[..., None], 3, -1)
    rgb[np.asarray(tokens) == LEVELS] = (0.9, 0.1, 0.1)
    ax.imshow(np.clip(rgb, 0, 1))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


# %% [markdown]
# ## 1. The forward process
# `x_t ~ q(x_t | x_0) = x_0 Qbar_t` with `Qbar_t = Q_1 ... Q_t`. Uniform: each step a token is redrawn uniformly
# with probability beta_t (cosine schedule), so `x_T` is uniform noise. Absorbing: a token jumps to [MASK] and stays
# there (mutual-information schedule: at time t each token is masked with probability t/T).

# %%
fig, axes = plt.subplots(2, len(TIMES), figsize=(2 * len(TIMES), 4.4))
for row, (kind, proc) in enumerate(processes.items()):
    for ax, t in zip(axes[row], TIMES):
        xt = proc.q_sample(jax.random.key(t), jnp.asarray(digit)[None], jnp.asarray([t]))[0]
        show(ax, xt, f"{kind}, t={t}")
plt.show()

# %% [markdown]
# ## 2. Posteriors
# Left: rows of `Qbar_t` for the uniform kind: the probability of each `x_t` given `x_0` flattens towards 1/K as
# t grows. Right: the true posterior `q(x_{t-1} = x_0 | x_t, x_0)` per pixel (uniform kind, one `x_t` sample): where
# `x_t` still shows the clean token the posterior is sure of it; where noise replaced it, the posterior weighs the
# noise token against the clean one. The network is trained to match this posterior with `x_0` predicted.

# %%
uniform = processes["uniform"]
fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
for ax, t in zip(axes[0], (1, 16, 32, 64)):
    ax.imshow(np.asarray(uniform.q_bar[t]), vmin=0, vmax=1, cmap="viridis")
    ax.set(title=f"Qbar_{t}: q(x_t | x_0)", xlabel="x_t", ylabel="x_0")
x0 = jnp.asarray(digit)[None]
for ax, t in zip(axes[1], (2, 16, 32, 64)):
    xt = uniform.q_sample(jax.random.key(100 + t), x0, jnp.asarray([t]))
    posterior = jnp.exp(uniform.q_posterior_logits(x0, xt, jnp.asarray([t])))[0]  # (8, 8, K)
    keep = jnp.take_along_axis(posterior, x0[0][..., None], -1)[..., 0]
    image = ax.imshow(np.asarray(keep), vmin=0, vmax=1, cmap="magma")
    ax.set_title(f"q(x_{t - 1} = x_0 | x_t, x_0), t={t}", fontsize=8)
    ax.axis("off")
fig.colorbar(image, ax=axes[1].tolist(), shrink=0.8)
plt.show()

# %% [markdown]
# ## 3. MaskGIT decoding, step by step
# Train the absorbing-state denoiser (a small transformer over the 64 tokens), then decode 8 digits from an
# all-[MASK] canvas with `mmjax.diffusion.maskgit.decode`. A host callback records the canvas each step sees.

# %%
overrides = ["sample.num_samples=16", "eval.loss_repeats=1"] if FAST else []
config = configlib.apply_overrides(
    configlib.load_config_file(f"configs/d3pm/digits.py:sampler=maskgit,steps={DENOISER_STEPS}"), overrides)
workdir = run_dir("diffusion/d3pm_digits", config)
final = train(config, workdir)
print({k: round(v, 3) for k, v in final.items() if k in ("nelbo", "sample_confidence", "sample_class_entropy")})
task = make_task(config)
params = load_params(workdir, key="params")

# %%
canvases = []


def logits_fn(tokens: jax.Array) -> jax.Array:
    """The denoiser's logits for a canvas; its time input is the masked fraction (the absorbing chain masks a
    token w.p. t/T at time t), as the task's own MaskGIT sampler does."""
    jax.debug.callback(lambda x: canvases.append(np.asarray(x)), tokens)
    frac = jnp.mean(tokens == LEVELS, axis=-1)
    t = jnp.clip(jnp.round(frac * T), 1, T).astype(jnp.int32)
    return task.model.apply({"params": params}, tokens.reshape(-1, 8, 8), t, None).reshape(tokens.shape[0], -1, LEVELS)


start = jnp.full((8, 64), LEVELS, jnp.int32)
decoded = maskgit.decode(logits_fn, start, mask_id=LEVELS, num_steps=MASKGIT_STEPS, rng=jax.random.key(0),
                         rule="maskgit", schedule="cosine")
jax.block_until_ready(decoded.tokens)
steps = [*canvases, np.asarray(decoded.tokens)]
fig, axes = plt.subplots(8, len(steps), figsize=(1.3 * len(steps), 10.5))
for col, canvas in enumerate(steps):
    for row in range(8):
        show(axes[row, col], canvas[row].reshape(8, 8), f"step {col}" if row == 0 and col < MASKGIT_STEPS else
             ("final" if row == 0 else ""))
plt.show()
print("tokens still masked after each step:", np.asarray(decoded.num_masked[0]).tolist())
