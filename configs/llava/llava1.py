r"""LLaVA-1 (Liu et al. 2023, "Visual Instruction Tuning"): CLIP ViT-L/14 at 224px + a linear projector + Vicuna.

Model:     CLIP ViT-L/14 at 224px (feature layer -2, class token dropped: 16x16 = 256 image tokens), `linear`
           projector, Vicuna 7B / 13B (the paper's Vicuna-13B v0 has LLaMA-13B's shapes, the `vicuna-13b` preset);
           images resized on the short side and centre-cropped (the CLIP processor: mode 'llava1').
Stage 1:   CC-595K image-caption pairs, projector only, batch 128, lr 2e-3, 1 epoch (4652 steps), `plain` template.
Stage 2:   LLaVA-Instruct-158K, projector + LM, batch 32, lr 2e-5, 3 epochs (14787 steps), `vicuna_v1` template
           (the later v1 conversation format; the paper's v0 separators differ).
Both:      AdamW, cosine decay, warmup ratio 0.03, weight decay 0, max length 2048, bf16 compute, FSDP.
Commands:  as configs/llava/llava15.py, with this file:
  python -m mmjax.train --config configs/llava/llava1.py:stage=1,size=13b --workdir runs/llava1_13b_s1 \
      --config.init.hf_vision=$CKPT/clip-vit-large-patch14 --config.init.hf_lm=$CKPT/vicuna-13b \
      --config.text.tokenizer_path=$CKPT/vicuna-13b/tokenizer.model \
      --config.data.train.json=$DATA/chat.json --config.data.train.images=$DATA/cc3m_595k
  python -m mmjax.train --config configs/llava/llava1.py:stage=2,size=13b --workdir runs/llava1_13b_s2 \
      --config.init.workdir=runs/llava1_13b_s1 --config.text.tokenizer_path=$CKPT/vicuna-13b/tokenizer.model \
      --config.data.train.json=$DATA/llava_instruct_158k.json --config.data.train.images=$DATA/coco/train2017
Hardware:  the paper uses 8x A100; here one 8-GPU host or a TPU v5p-16/32 class slice, not yet run at this scale.
Expected (paper): ScienceQA 90.92% (LLaVA alone; 92.53% with the GPT-4 judge ensemble).
"""

import math

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.train.tasks.llava import base_config, warmup

CC_595K, INSTRUCT_158K = 595_375, 157_712  # records in chat.json and llava_instruct_158k.json


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=1, size="13b")
    if arg.stage not in (1, 2) or arg.size not in ("7b", "13b"):
        raise ValueError(f"llava1: stage must be 1|2 and size 7b|13b, got {arg.stage}, {arg.size}")
    batch, lr, steps = (128, 2e-3, math.ceil(CC_595K / 128)) if arg.stage == 1 else \
        (32, 2e-5, 3 * math.ceil(INSTRUCT_158K / 32))
    c = base_config(arg.stage, batch_size=batch, total_steps=steps, log_every=10, checkpoint_every=500)
    c.model.update(vision=dict(preset="clip", variant="L/14"), feature_layer=-2, projector="linear",
                   lm=dict(preset=f"vicuna-{arg.size}", dtype="bfloat16", remat_policy="full"))
    c.image.update(mode="llava1", size=224, patch_size=14)
    c.text.update(tokenizer="sentencepiece", max_len=2048)
    c.data.train = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.data.eval = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.eval.update(num_examples=256, generate=False)
    c.mesh.update(data=1, fsdp=-1)
    c.optim.update(lr=lr, warmup_steps=warmup(steps))
    return c
