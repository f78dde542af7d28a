r"""LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"), 7B / 13B, both stages.

Model:     CLIP ViT-L/14 at 336px (feature layer -2, class token dropped: 24x24 = 576 image tokens), `mlp2x_gelu`
           projector, Vicuna-v1.5 7B / 13B.
Stage 1:   LCS-558K captions (`blip_laion_cc_sbu_558k.json`, `plain` template), projector only, global batch 256,
           lr 1e-3, 1 epoch (2181 steps); images as the CLIP processor makes them (short side 336, centre crop:
           the reference's default `image_aspect_ratio='square'`).
Stage 2:   `llava_v1_5_mix665k.json` (`vicuna_v1` template, image moved to the front of its turn), projector + LM,
           vision frozen, global batch 128, lr 2e-5, 1 epoch (5198 steps); images padded to a square with the
           mean colour ('pad').
Both:      AdamW (0.9, 0.999, 1e-8), cosine decay to 0, warmup ratio 0.03 (rounded up), weight decay 0, gradient
           clipping at global norm 1.0 (HF Trainer's default), max length 2048, bf16 compute, FSDP over all devices,
           LM blocks rematerialised.
Commands:
  python -m mmjax.train --config configs/llava/llava15.py:stage=1,size=7b --workdir runs/llava15_7b_s1 \
      --config.init.hf_vision=$CKPT/clip-vit-large-patch14-336 --config.init.hf_lm=$CKPT/vicuna-7b-v1.5 \
      --config.text.tokenizer_path=$CKPT/vicuna-7b-v1.5/tokenizer.model \
      --config.data.train.json=$DATA/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
      --config.data.train.images=$DATA/LLaVA-Pretrain/images
  python -m mmjax.train --config configs/llava/llava15.py:stage=2,size=7b --workdir runs/llava15_7b_s2 \
      --config.init.workdir=runs/llava15_7b_s1 --config.text.tokenizer_path=$CKPT/vicuna-7b-v1.5/tokenizer.model \
      --config.data.train.json=$DATA/llava_v1_5_mix665k.json --config.data.train.images=$DATA
  python -m mmjax.eval --workdir runs/llava15_7b_s2 --benchmark vqav2 --questions ... --images ... --out ...
Hardware:  the paper trains both stages in about a day on one 8x A100-80GB node; here: one 8-GPU H100 / H200 host
           or a TPU slice (FSDP), not yet run at this scale.
TPU:       `stage=2,slice=v5e-16` or `stage=2,slice=v5p-64` (7B) keeps the global batch of 128 on that slice: mesh,
           per-step batch and gradient accumulation from `SLICE_PLANS`, checked with the compile-only pre-flight
           (docs/tpu.md has the per-chip memory):
           python -m mmjax.train --config configs/llava/llava15.py:stage=2,slice=v5e-16 --compile_only \
               --topology v5e-16
Expected (paper, 7B / 13B): VQAv2 78.5 / 80.0, GQA 62.0 / 63.3, VizWiz 50.0 / 53.6, SQA-IMG 66.8 / 71.6,
           TextVQA 58.2 / 61.3, POPE 85.9 / 85.9, MME 1510.7 / 1531.3, MMBench 64.3 / 67.7, SEED 58.6 / 61.6,
           LLaVA-W 65.4 / 72.5, MM-Vet 31.1 / 36.1.
"""

import math

import ml_collections

from mmjax.configlib import ConfigError, parse_arg
from mmjax.train.tasks.llava import base_config, warmup
from mmjax.train.tpu_slices import SlicePlan, apply_slice_plan

LCS_558K, MIX_665K = 558_128, 665_298  # records in the two JSON files
SLICE_PLANS = {  # stage 2, 7B: batch per micro-step x grad_accum = 128
    "v5e-16": SlicePlan(fsdp=16, tensor=1, batch_size=32, grad_accum=4),
    "v5p-64": SlicePlan(fsdp=32, tensor=1, batch_size=128, grad_accum=1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=1, size="7b", slice="")
    if arg.stage not in (1, 2) or arg.size not in ("7b", "13b"):
        raise ValueError(f"llava15: stage must be 1|2 and size 7b|13b, got {arg.stage}, {arg.size}")
    batch, lr, records = (256, 1e-3, LCS_558K) if arg.stage == 1 else (128, 2e-5, MIX_665K)
    steps = math.ceil(records / batch)
    c = base_config(arg.stage, batch_size=batch, total_steps=steps, log_every=10, checkpoint_every=500,
                    eval_every=0)
    c.model.update(vision=dict(preset="clip", variant="L/14"), feature_layer=-2,
                   projector="mlp2x_gelu",
                   lm=dict(preset=f"vicuna-{arg.size}", dtype="bfloat16", remat_policy="full"))
    c.image.update(mode="llava1" if arg.stage == 1 else "pad", size=336, patch_size=14)
    c.text.update(tokenizer="sentencepiece", max_len=2048)
    c.data.train = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.data.eval = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.eval.update(num_examples=256, generate=False)
    c.mesh.update(data=1, fsdp=-1)
    c.optim.update(lr=lr, warmup_steps=warmup(steps))
    if arg.slice:
        if (arg.stage, arg.size) != (2, "7b"):
            raise ConfigError(f"slice={arg.slice}: the TPU slice plans are for stage=2,size=7b")
        apply_slice_plan(c, arg.slice, SLICE_PLANS, batch)
    return c
