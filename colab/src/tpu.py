# %% [markdown]
# # TPU pre-flight: will a config's train step fit a slice? (compiled on this CPU, no TPU needed)
#
# libtpu compiles for any Cloud TPU topology on a machine without a TPU. `mmjax.train.preflight` builds the
# trainer on a slice's *abstract* chips, lays its device mesh out on them, and compiles init and the train step for
# the global batch, with nothing allocated and no data, tokenizer or weights file read. The compiler's per-chip
# memory plan says whether the step fits the chips' HBM before any TPU time is paid for.
#
# This notebook pre-flights a tiny Show-o for a v5e-4 slice (`v5e:2x2`), explains the report (the mesh, what
# the per-chip memory is made of), draws how a mesh maps onto a v5e-16's chips, and shows the command for a paper
# config on a v5e-16 (not run here: compiling the 1.3B model takes a while and much host memory).
#
# **Time**: about a minute on a CPU runtime (one compile of each program). It installs libtpu (`jax[tpu]`) when
# it is missing.

# %% [setup]
REPO_URL = "https://github.com/<org>/mmjax"  # the repository to install: its git URL (a fork works too)
RUNTIME = "cpu"  # compiling for a TPU slice runs on any runtime; "cpu" is enough
TOPOLOGY = "v5e:2x2"  # the slice to compile for: a v5e-4 (2x2 chips); e.g. "v5e:4x4" = v5e-16
WIDTH, LAYERS, BATCH = 64, 1, 4  # the tiny Show-o: hidden size, layers, bundles per step (one per chip here)

# %%
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

if RUNTIME == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu only compiles here; the computations stay on the CPU
if importlib.util.find_spec("libtpu") is None:  # libtpu compiles for TPU topologies; jax[tpu] pins the match
    jax_version = importlib.metadata.version("jax")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"jax[tpu]=={jax_version}"], check=True)

import matplotlib.pyplot as plt
import numpy as np

from mmjax import configlib
from mmjax.train import preflight, tpu_slices
from mmjax.train.sharding import make_mesh

# %% [markdown]
# ## 1. A config that reads no file
# Tasks give the trainer their batch shapes from the config, so the pre-flight needs no data. Show-o builds its
# frozen image tokenizer from the tokenizer run's `config.json` (the architecture), so a directory holding only that
# file stands in for a trained tokenizer, and every data path may point at files that do not exist.

# %%
scratch = tempfile.mkdtemp()
tokenizer_config = configlib.load_config_file("configs/vq/tiny.py:tokens=4,bits=6")
with open(f"{scratch}/config.json", "w") as f:
    json.dump({"task": "vq", "model": configlib.to_dict(tokenizer_config.model), "ema_decay": 0.0}, f)
config = configlib.load_config_file(f"configs/showo/tiny.py:width={WIDTH},layers={LAYERS},tokenizer={scratch}")
missing = {"source": {"name": "arrayrecord", "pattern": "/nonexistent/*.array_record"}, "text_field": "caption"}
with config.unlocked():
    config.batch_size = BATCH
    config.data.train = config.data.eval = {"t2i": missing, "lm": missing, "mmu": {**missing, "format": "qa"}}

# %% [markdown]
# Before lowering anything the pre-flight checks the shapes against the slice (seconds, no compile). The tiny config
# as shipped trains one 29-row bundle per step on a CPU; four chips cannot split one bundle, so the check names the
# field and the nearest settings that work (`--fit` on the command line applies them); the config above sets them.

# %%
shipped = configlib.load_config_file(f"configs/showo/tiny.py:width={WIDTH},layers={LAYERS},tokenizer={scratch}")
print(preflight.format_report(preflight.preflight(shipped, TOPOLOGY, compile=False)))

# %% [markdown]
# ## 2. Compile for the slice
# The report holds the mesh the trainer chose, the batch per shard, and the compiler's memory plan per chip for
# init and the train step. `fits` needs the peak at most 90% of HBM; `tight` is below 10% headroom; `does not fit`
# when the peak exceeds HBM or the compiler refuses the program. Splash attention (a Pallas kernel) is picked for
# TPU automatically: its kernels are counted in the lowered step.

# %%
report = preflight.preflight(config, TOPOLOGY)
print(preflight.format_report(report))

# %% [markdown]
# ### What the per-chip memory is made of
# *argument*: the chip's shard of the inputs: parameters, optimizer state (AdamW's two moments), the batch;
# *output*: the new state, mostly aliased onto the arguments because the trainer donates them (so it is not
# counted twice); *temp*: activations kept for the backward pass, gradients and scratch; *peak*: the most live
# at once. With `data` parallelism every chip holds a full copy of the parameters and optimizer state; `fsdp`
# shards them (and the gradients) across chips, `tensor` splits the layers' matrices.

# %%
hbm = report["hbm_bytes_per_chip"]
fig, ax = plt.subplots(figsize=(8, 3))
kinds = ["argument", "output", "temp", "peak"]
for i, program in enumerate(("init", "step")):
    values = [report[program].get(k, 0) / 2**20 for k in kinds]
    ax.barh([f"{program}: {k}" for k in kinds], values, color=f"C{i}")
ax.set(xlabel="MiB per chip", title=f"{report['accelerator_type']}: {hbm / 2**30:.0f} GiB HBM per chip, "
       f"peak {report['peak_fraction']:.3%} of it")
plt.show()

# %% [markdown]
# ## 3. The mesh on the chips
# A v5e-16 is 4x4 chips on 4 hosts of 2x2. `make_mesh` lays a (data, fsdp, tensor) mesh out so that neighbours
# along `tensor` (which talks the most: every layer) are neighbouring chips on one host, and refuses layouts where
# a tensor group would span hosts. Colour = fsdp shard, label = tensor index.

# %%
devices = preflight.topology_devices("v5e:4x4")
mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 2}, devices)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
for (_, f_index, t_index), device in np.ndenumerate(mesh.devices):
    x, y = device.coords[0], device.coords[1]
    ax.add_patch(plt.Rectangle((x, y), 0.9, 0.9, color=plt.cm.tab10(f_index % 10)))
    ax.text(x + 0.45, y + 0.45, f"fsdp {f_index}\ntensor {t_index}\nhost {device.process_index}", ha="center",
            va="center", fontsize=7)
ax.set(xlim=(0, 4), ylim=(4, 0), title="v5e:4x4, mesh data=1 fsdp=8 tensor=2", xticks=[], yticks=[])
plt.show()
print({name: tpu_slices.parse_slice(name).accelerator_type for name in ("v5e:2x2", "v5e:4x4", "v5p:2x4x4")})

# %% [markdown]
# ## 4. A paper config on a v5e-16
# The paper configs carry slice plans (`slice=v5e-16` picks the mesh, per-chip batch and gradient accumulation that
# keep the paper's global batch). The same pre-flight from a terminal, with the report as JSON (not run here):
#
# ```
# python -m mmjax.train --config configs/showo/pretrain.py:stage=1,slice=v5e-16 --compile_only \
#     --topology v5e:4x4 --out preflight_showo_v5e16.json
# python -m mmjax.train --config configs/llava/llava15.py:stage=2,slice=v5e-16 --compile_only \
#     --topology v5e:4x4 --out preflight_llava_v5e16.json
# ```
#
# docs/tpu.md explains the slice plans, the launch scripts and the measured reports.
