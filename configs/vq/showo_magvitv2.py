r"""Show-o's released MAGVIT-v2 tokenizer (HF `showlab/magvitv2`): evaluate it, or fine-tune it, in mmjax.

Command:   python -m mmjax.train --config configs/vq/showo_magvitv2.py:res=256 --workdir runs/showo_tok \
               --config.pretrained.path=/path/to/magvitv2.safetensors
           (convert the released pytorch_model.bin to safetensors once: see mmjax/convert/magvitv2.py)
Variants:  res=256 (16x16 ids) | res=512 (32x32 ids): the same weights, Show-o uses both.
           steps=N fine-tunes from the release (default 0: load, evaluate, save a checkpoint that
           `python -m mmjax.tokenize_images --workdir runs/showo_tok ...` can use).
Data:      ImageNet-1k through tfds (`imagenet2012`, prepared locally, no download at run time); point
           config.data.eval at any image source instead (e.g. an ArrayRecord of your own images).
Model:     95,387,004 params; 2^13 = 8192 codes, MSB-first LFQ; /16 downsampling.
Expected:  with the release and 256px ImageNet validation images: `codebook_usage` near 1, PSNR around 21 dB
           (MAGVIT-v2-class tokenizers reconstruct ImageNet at 20-22 dB); rFID when eval.inception_path names the
           FID Inception weights. Not measured here: the weights are not on this machine (2-core CPU, no network).
Fine-tuning recipe (steps > 0): Open-MAGVIT2's loss weights (L1, LPIPS 1.0 when loss.lpips_path is set, adversarial
           0.1 with a StyleGAN discriminator, LeCAM 0.05), lr 1e-4, EMA 0.999, rematerialised ResBlocks.
"""

import dataclasses

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.models.vq import showo_magvitv2
from mmjax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, res=256, steps=0, batch=64, weights="")
    if arg.res not in (256, 512):
        raise ValueError(f"res={arg.res}: Show-o's tokenizer runs at 256 or 512")
    c = trainer_config(task="vq", batch_size=arg.batch, eval_batch_size=arg.batch, total_steps=arg.steps,
                       log_every=100, checkpoint_every=max(arg.steps, 1000), eval_every=0,
                       ema_decay=0.999 if arg.steps else 0.0)
    c.image_size = arg.res
    c.augment = ml_collections.ConfigDict(dict(flip=True, random_crop=True))
    c.data.train = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="train"))
    c.data.eval = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="validation"))
    c.model = ml_collections.ConfigDict(dataclasses.asdict(showo_magvitv2().replace(remat=bool(arg.steps))))
    c.loss = ml_collections.ConfigDict(dict(
        l1_weight=1.0, l2_weight=0.0,
        perceptual_weight=0.0, lpips_path="",      # set both to add LPIPS (local VGG/LPIPS safetensors; no download)
        adv_weight=0.1 if arg.steps else 0.0, adv_start=0, disc_weight=1.0, adaptive_weight=True,
        adaptive_weight_max=1e4, lecam_weight=0.05, lecam_decay=0.999))
    c.discriminator = ml_collections.ConfigDict(dict(kind="stylegan", ch=64, num_layers=5, max_mult=8))
    c.eval = ml_collections.ConfigDict(dict(max_examples=0, grid_images=16, inception_path=""))
    c.pretrained = ml_collections.ConfigDict(dict(path=arg.weights, format="magvitv2"))
    c.optim.update(name="adamw", lr=1e-4, b1=0.5, b2=0.9, weight_decay=0.0, warmup_steps=0, schedule="constant",
                   clip_norm=1.0, lr_mult={"^discriminator/": 1.0})
    return c
