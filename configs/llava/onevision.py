r"""LLaVA-OneVision (Li et al. 2024, "LLaVA-OneVision: Easy Visual Task Transfer"), Qwen2 0.5B / 7B.

Model:     SigLIP so400m/14 at 384px without its last block and head (27x27 = 729 tokens, no class token:
           `feature_layer` -2 of the 27-block tower = -1 of the released 26-block one), `mlp2x_gelu`, Qwen2;
           AnyRes over every 1x1 ... 6x6 grid of 384px tiles with `anyres_max_9`: the unpadded tile map is
           bilinearly shrunk to about 9 tiles' worth of tokens, a newline after every row, base view first.
           Multi-image samples keep each image's base view (+ newline), padded to a square with SigLIP's mean
           colour first (the reference's multi-image 'pad'); video frames are pooled 2x2 bilinearly to
           14x14 = 196 tokens each (the model's token maps; `image.multi_image`, `image.max_tiles`).
Stages:    stage=1: LCS-558K, `plain` template, projector only, lr 1e-3, max length 8192, single 384x384 views
           (the SigLIP processor's resize) without AnyRes or `image_newline` (`pretrain_siglip.sh`: square images,
           flat merge). stage=2 (the 4M high-quality knowledge, 3.2M single-image and 1.6M OneVision stages, 1
           epoch each): AnyRes as above, `image_newline` created (randn / sqrt(d)); everything learns, vision at
           2e-6 (`lr_mult` 0.2), the rest at 1e-5; Qwen2 `chatml` template (supervised as `preprocess_qwen`),
           single images moved to the front of their turn, max length 32768.
           Both: AdamW, cosine, warmup 0.03 (rounded up), wd 0, clipping at 1.0. The reference notes give no batch
           sizes; 256 (stage 1) and 128 are used: set your own.
Commands:
  python -m mmjax.train --config configs/llava/onevision.py:size=0.5b,stage=1 --workdir runs/ov_05b_s1 \
      --config.init.hf_vision=$CKPT/siglip-so400m-patch14-384 --config.init.hf_lm=$CKPT/Qwen2-0.5B-Instruct \
      --config.text.tokenizer_path=$CKPT/Qwen2-0.5B-Instruct \
      --config.data.train.json=$DATA/blip_laion_cc_sbu_558k.json --config.data.train.images=$DATA/images
  python -m mmjax.train --config configs/llava/onevision.py:size=0.5b,stage=2 --workdir runs/ov_05b_si \
      --config.init.workdir=runs/ov_05b_s1 ... --config.total_steps=N
  released weights:  --config.init.hf_llava=$CKPT/llava-onevision-qwen2-0.5b-ov-hf/model.safetensors
Hardware:  0.5B: one 8-GPU host; 7B: several hosts (FSDP); not yet run at this scale.
Expected:  the LLaVA-OneVision paper's tables (not part of the reference notes used here; not reproduced yet).
"""

import math

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.images import ONEVISION_PINPOINTS, SIGLIP_MEAN, SIGLIP_STD
from mmjax.train.tasks.llava import base_config, warmup

LCS_558K, SINGLE_IMAGE_3_2M = 558_128, 3_200_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, size="0.5b", stage=1)
    if arg.stage not in (1, 2) or arg.size not in ("0.5b", "7b"):
        raise ValueError(f"onevision: stage must be 1|2 and size 0.5b|7b, got {arg.stage}, {arg.size}")
    batch, lr, records = (256, 1e-3, LCS_558K) if arg.stage == 1 else (128, 1e-5, SINGLE_IMAGE_3_2M)
    steps = math.ceil(records / batch)
    c = base_config(arg.stage, batch_size=batch, total_steps=steps, log_every=10, checkpoint_every=500)
    c.model.update(vision=dict(preset="siglip", variant="So400m/14"), feature_layer=-2, drop_cls=False,
                   projector="mlp2x_gelu", image_newline=arg.stage == 2, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
                   lm=dict(preset=f"qwen2-{arg.size}", dtype="bfloat16",
                           # 0.5B: a batch of 4 x 4000 tokens fits an 80 GB GPU without remat, unrolled layers
                           # as measured for Show-o's LM (docs/benchmarks.md); 7B: full remat, scanned
                           remat_policy="none" if arg.size == "0.5b" else "full", scan_layers=arg.size != "0.5b"))
    if arg.stage == 1:
        c.image.update(mode="squash", size=384, patch_size=14)
    else:
        # max_tiles 10: grids of up to 9 tiles + the base view (the tokens are pooled to ~9 tiles' worth anyway);
        # without a cap every sample would encode 37 tiles (the 6x6 grid), whatever its size.
        c.image.update(mode="anyres", size=384, patch_size=14, pinpoints=ONEVISION_PINPOINTS, anyres_max=9,
                       newline=True, multi_image="base", taps=4, max_tiles=10)
    c.text.update(tokenizer="hf", template="plain" if arg.stage == 1 else "chatml",
                  max_len=8192 if arg.stage == 1 else 32768)
    c.data.train = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.data.eval = ml_collections.ConfigDict(dict(name="llava_json", json="", images=""))
    c.eval.update(num_examples=256, generate=False)
    c.mesh.update(data=1, fsdp=-1)
    c.optim.update(lr=lr, warmup_steps=warmup(steps))
    if arg.stage == 2:
        c.optim.update(frozen=(), lr_mult={r"^vision_tower/": 0.2})
    return c
