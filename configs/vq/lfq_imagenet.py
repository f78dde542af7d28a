r"""An Open-MAGVIT2-like LFQ tokenizer on ImageNet-1k 256px: 2^18 codes, 16x16 ids (the paper-table recipe).

Command:   python -m mmjax.train --workdir runs/lfq_in1k \
               --config configs/vq/lfq_imagenet.py:lpips=/path/lpips_vgg.safetensors,inception=/path/fid.safetensors
Variants:  configs/vq/lfq_imagenet.py:bits=18 (default; 2^18 = 262,144 codes) | bits=16 | bits=14
           configs/vq/lfq_imagenet.py:res=128 (8x8 ids, a cheaper ablation)
Data:      tfds `imagenet2012` (prepared locally), random crop + flip at 256, eval = the 50k validation images.
Hardware:  a pod/GPU job (global batch 256); NOT run here. Nothing about it was measured on this 2-core CPU.
Recipe (Open-MAGVIT2, from docs/reference): conv ResBlocks with GroupNorm(32), no attention, stride-2 conv
           downsampling, ch 128, ch_mult (1,1,2,2,4), 4 res blocks per level; LSB-first LFQ (Open-MAGVIT2's bit
           order); generator loss L1 + LPIPS + 0.1 adversarial (StyleGAN discriminator, adaptive weight, LeCAM 0.05)
           + 0.1 entropy + 0.25 commitment; entropy factorised over 2 groups of 9 bits (never a dense 2^18 softmax);
           EMA of weights 0.999; Adam lr 1e-4.
Expected:  the reference reports rFID 1.17, PSNR 21.90 and 100% codebook usage with 2^18 codes (Open-MAGVIT2,
           256px ImageNet val; MaskGIT's VQGAN: rFID 2.28). This config differs in the decoder: mmjax's is the
           taming one (plain GroupNorm, nearest-neighbour upsampling), not Open-MAGVIT2's adaptive GroupNorm with
           depth-to-space, so expect a somewhat higher rFID from the same schedule; report `rfid`, `psnr` and
           `codebook_usage` (fraction of the 262,144 codes used over the 50k validation images) together.
Perceptual loss and rFID need local weights (nothing is downloaded): `lpips=PATH` turns LPIPS on (weight 1.0);
WITHOUT it the perceptual loss is OFF (perceptual_weight=0.0) and the reference rFID is out of reach. Without
`inception=PATH` rFID is not reported (PSNR, SSIM, usage and perplexity still are).
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, bits=18, res=256, steps=500_000, batch=256, lpips="", inception="")
    c = trainer_config(task="vq", batch_size=arg.batch, eval_batch_size=arg.batch, total_steps=arg.steps,
                       log_every=100, checkpoint_every=5000, eval_every=50_000, ema_decay=0.999)
    c.image_size = arg.res
    c.augment = ml_collections.ConfigDict(dict(flip=True, random_crop=True))
    c.data.train = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="train"))
    c.data.eval = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="validation"))
    mult = (1, 1, 2, 2, 4)
    c.model = ml_collections.ConfigDict(dict(
        ch=128, enc_ch_mult=mult, enc_num_res_blocks=(4,) * 5, dec_ch_mult=mult, dec_num_res_blocks=(4,) * 5,
        resolution=arg.res, attn_resolutions=(), mid_attn=False, norm_groups=32, z_channels=arg.bits,
        quantizer="lfq", msb_first=False, commit_beta=0.25, entropy_weight=0.1, entropy_temperature=0.01,
        entropy_group_bits=(arg.bits + 1) // 2, entropy_chunk_codes=0, remat=True))
    c.loss = ml_collections.ConfigDict(dict(
        l1_weight=1.0, l2_weight=0.0,
        perceptual_weight=1.0 if arg.lpips else 0.0, lpips_path=arg.lpips,   # off unless lpips=PATH is given
        adv_weight=0.1, adv_start=20_000, disc_weight=1.0, adaptive_weight=True, adaptive_weight_max=1e4,
        lecam_weight=0.05, lecam_decay=0.999))
    c.discriminator = ml_collections.ConfigDict(dict(kind="stylegan", ch=64, num_layers=5, max_mult=8))
    c.eval = ml_collections.ConfigDict(dict(max_examples=0, grid_images=16, inception_path=arg.inception))
    c.pretrained = ml_collections.ConfigDict(dict(path="", format="mmjax"))
    c.optim.update(name="adamw", lr=1e-4, b1=0.5, b2=0.9, weight_decay=0.0, warmup_steps=0, schedule="constant",
                   clip_norm=0.0, lr_mult={"^discriminator/": 1.0})
    return c
