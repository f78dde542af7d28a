r"""LLaVA-NeXT / LLaVA-1.6 (Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge"), Vicuna-7B.

Model:     LLaVA-1.5's CLIP ViT-L/14-336 + `mlp2x_gelu` + Vicuna-7B, with AnyRes: the image is placed on the best
           of the grids (w, h) 336x672, 672x336, 672x672, 1008x336, 336x1008, cut into 336px tiles, and encoded as
           base view (576 tokens) + the stitched tile features with the padding rows/cols removed and a learned
           `image_newline` after every row (up to 576 + 48 * 49 = 2928 tokens for one image).
Stage 1:   as LLaVA-1.5 stage 1: only the projector learns (lr 1e-3, batch 256, LCS-558K, max length 2048), on
           single 336px views (short side + centre crop), without AnyRes or `image_newline`: the reference's
           pre-training runs with `image_aspect_ratio='square'`, `mm_patch_merge_type='flat'`.
Stage 2:   AnyRes + `image_newline` (created here, randn / sqrt(d), as the reference does when it switches to
           `spatial_unpad`); everything learns: the vision tower at lr 2e-6 (`lr_mult` 0.2), projector + LM +
           newline at 1e-5; batch 128 (the reference notes do not give NeXT's batch; LLaVA-1.5's is used), 1
           epoch of the instruction mix (NeXT's 760K mix is not fully public: point `data.train` at yours and set
           `total_steps`); max length 4096 (AnyRes images need up to 2928 positions).
Both:      AdamW (0.9, 0.999, 1e-8), cosine to 0, warmup ratio 0.03 (rounded up), weight decay 0, clipping at
           global norm 1.0, bf16, FSDP, rematerialised LM blocks.
Commands:
  python -m mmjax.train --config configs/llava/llava_next.py:stage=2 --workdir runs/llava_next_7b_s2 \
      --config.init.workdir=runs/llava_next_7b_s1 --config.text.tokenizer_path=$CKPT/vicuna-7b-v1.5/tokenizer.model \
      --config.data.train.json=$DATA/next_mix.json --config.data.train.images=$DATA --config.total_steps=5938
  released weights instead of stage 1:  --config.init.hf_llava=$CKPT/llava-v1.6-vicuna-7b-hf
  (llava-hf configs list pinpoints as (h, w) in a different order; mmjax.convert.hf_llava.llava_config_from_hf
  reads them, and `image.pinpoints` must follow that order to reproduce transformers' tie-breaks exactly.)
Hardware:  one 8-GPU H100 / H200 host or a TPU v5p-32 class slice; not yet run at this scale.
Expected (paper / blog, Vicuna-7B): VQAv2 81.8, TextVQA 64.9, MME 1519, MM-Vet 43.9.
"""

import math

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.images import LLAVA_NEXT_PINPOINTS
from mmjax.train.tasks.llava import base_config, warmup

LCS_558K, MIX_760K = 558_128, 760_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=2)
    if arg.stage not in (1, 2):
        raise ValueError(f"llava_next: stage must be 1|2, got {arg.stage}")
    batch, lr, records = (256, 1e-3, LCS_558K) if arg.stage == 1 else (128, 1e-5, MIX_760K)
    steps = math.ceil(records / batch)
    c = base_config(arg.stage, batch_size=batch, total_steps=steps, log_every=10, checkpoint_every=500)
    c.model.update(vision=dict(preset="clip", variant="L/14"), feature_layer=-2, projector="mlp2x_gelu",
                   image_newline=arg.stage == 2, lm=dict(preset="vicuna-7b", dtype="bfloat16", remat_policy="full"))
    if arg.stage == 1:
        c.image.update(mode="llava1", size=336, patch_size=14)
    else:
        c.image.update(mode="anyres", size=336, patch_size=14, pinpoints=LLAVA_NEXT_PINPOINTS, newline=True, taps=1)
    c.text.update(tokenizer="sentencepiece", max_len=2048 if arg.stage == 1 else 4096)
    c.data.train = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.data.eval = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.eval.update(num_examples=256, generate=False)
    c.mesh.update(data=1, fsdp=-1)
    c.optim.update(lr=lr, warmup_steps=warmup(steps))
    if arg.stage == 2:
        c.optim.update(frozen=(), lr_mult={r"^vision_tower/": 0.2})
    return c
