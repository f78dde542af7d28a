r"""Absorbing-state D3PM on sklearn's 8x8 digits quantized to 4 grey levels: discrete diffusion on a laptop CPU.

Command:   python -m mmjax.train --config configs/d3pm/digits.py --workdir runs/d3pm_digits
Variants:  configs/d3pm/digits.py:sampler=maskgit        (MaskGIT decoding from the same network)
           configs/d3pm/digits.py:sampler=both           (both samplers in one evaluation; maskgit_* metrics)
           configs/d3pm/digits.py:kind=uniform           (uniform-transition D3PM, ancestral sampling only)
           configs/d3pm/digits.py:labels=10              (class-conditional, 10% label dropout)
           configs/d3pm/digits.py:levels=8,steps=3000
Hardware:  2 CPU cores (shared), about TODO minutes.
Expected:  TODO (see docs/d3pm.md).
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, kind="absorbing", sampler="ancestral", levels=4, steps=3000, labels=0)
    c = trainer_config(task="d3pm", batch_size=64, total_steps=arg.steps, log_every=100,
                       checkpoint_every=1000, eval_every=0, ema_decay=0.0)
    c.num_levels = arg.levels
    c.grid = (8, 8)
    c.label_dropout = 0.1 if arg.labels else 0.0
    c.data.train = ml_collections.ConfigDict(dict(name="digits", split="train"))
    c.data.eval = ml_collections.ConfigDict(dict(name="digits", split="test"))
    c.diffusion = ml_collections.ConfigDict(dict(
        kind=arg.kind, num_steps=64,
        schedule="",                  # "": D3PM's default per kind (absorbing: mutual_info, uniform: cosine)
        hybrid_coeff=0.1))
    c.model = ml_collections.ConfigDict(dict(width=64, depth=4, num_heads=4, mlp_dim=256, num_labels=arg.labels,
                                             time_mode="add", posemb="learned", conv_stem=3, conv_stem_depth=2,
                                             dropout=0.0))
    c.sample = ml_collections.ConfigDict(dict(
        sampler=arg.sampler, num_samples=256, seed=0, temperature=1.0,
        maskgit_steps=16, maskgit_rule="maskgit", maskgit_schedule="cosine",
        choice_temperature=0.0,       # 0: the rule's default (maskgit 4.5, annealed)
        guidance_scale=0.0))          # MaskGIT classifier-free guidance (class-conditional runs only)
    c.eval = ml_collections.ConfigDict(dict(loss_repeats=4))
    c.optim.update(name="adamw", lr=2e-3, weight_decay=0.01, warmup_steps=100, schedule="cosine", clip_norm=1.0)
    return c
