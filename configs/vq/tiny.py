r"""Tiny LFQ image tokenizer on 32x32 synthetic shapes: the tokenizer's end-to-end check on a laptop CPU.

Command:   python -m mmjax.train --config configs/vq/tiny.py --workdir runs/vq_tiny
Variants:  configs/vq/tiny.py:tokens=4          4x4 ids (factor 8), for the Show-o tiny demo
           configs/vq/tiny.py:tokens=8,bits=10  8x8 ids, 2^10 codes
           configs/vq/tiny.py:steps=3000,ch=32
           configs/vq/tiny.py:size=16,tokens=4,ch=8   (the test suite's 16x16 version)
Your data: configs/vq/tiny.py:data=webdataset,corpus=/data/shards/*.tar   (any image corpus: data=webdataset |
           parquet | imagefolder | jsonl | arrayrecord; corpus= its glob or folder; eval_corpus= a held-out one,
           else the first 1,024 records of the training corpus; options: --config.data.train.<option>=...)
Token grid and codebook (what a Show-o config must use):
           tokens=8 (default): ids (8, 8) per 32x32 image, factor 4, codebook 2^bits = 2^10 = 1024 codes (MSB first)
           tokens=4:           ids (4, 4) per 32x32 image, factor 8, codebook 2^bits (bits defaults to 10 too)
           bits=6 gives a 64-code codebook (faster to model, lower PSNR: see docs/tokenizer.md)
Data:      `shapes` single-object 32x32 scenes (the Show-o tiny demo's data), train seed 0 (20k scenes), held-out
           eval seed 1 (1,024 scenes never trained on).
Hardware:  2 CPU cores: 1,200 steps at ~4.5 steps/s, 4 min 55 s wall measured on a lightly shared machine,
           5 min 50 s under heavy sharing (3 min 43 s of CPU), 2026-11-28.
Expected:  default: held-out `psnr` 30.26 dB, ssim 0.963, `codebook_usage` 0.937 (of 1024 codes), perplexity 525.
           tokens=4: 25.55 dB at 1,200 steps, 29.36 dB with steps=3000; tokens=4,bits=6 (64 codes, the Show-o
           tiny demo's): 24.59 dB, usage 1.0. All runs: docs/tokenizer.md.
Losses:    L1 + L2 + LFQ commit/entropy only: the perceptual loss is OFF (`loss.lpips_path` unset; it needs local
           LPIPS weights) and there is no GAN; at 32x32 on shapes reconstruction losses alone get there fastest.
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.sources import corpus_splits
from mmjax.train.defaults import trainer_config


def tokenizer_model(tokens: int, bits: int, ch: int, image_size: int = 32) -> ml_collections.ConfigDict:
    """VQConfig fields of the tiny LFQ tokenizer: 32 / tokens = 2^(levels-1) downsampling."""
    factor = image_size // tokens
    levels = factor.bit_length()
    if 2 ** (levels - 1) != factor or image_size % tokens:
        raise ValueError(f"tokens={tokens}: {image_size}/tokens must be a power of two")
    mult = (1, 2, 2, 4, 4)[:levels]
    return ml_collections.ConfigDict(dict(
        ch=ch, enc_ch_mult=mult, enc_num_res_blocks=(1,) * levels, dec_ch_mult=mult,
        dec_num_res_blocks=(1,) * levels, resolution=image_size, attn_resolutions=(), mid_attn=False,
        norm_groups=8, z_channels=bits, quantizer="lfq", msb_first=True, commit_beta=0.25,
        entropy_weight=0.02, entropy_temperature=0.01, entropy_group_bits=10, entropy_chunk_codes=0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, tokens=8, bits=10, ch=16, steps=1200, batch=32, size=32, data="shapes", corpus="",
                    eval_corpus="")
    c = trainer_config(task="vq", batch_size=arg.batch, total_steps=arg.steps, log_every=100,
                       checkpoint_every=arg.steps, eval_every=0, eval_batch_size=128, ema_decay=0.99)
    c.image_size = arg.size
    c.augment = ml_collections.ConfigDict(dict(flip=False, random_crop=False))
    c.data.train = ml_collections.ConfigDict(dict(name="shapes", resolution=arg.size, num_records=20_000, seed=0))
    c.data.eval = ml_collections.ConfigDict(dict(name="shapes", resolution=arg.size, num_records=1024, seed=1))
    if arg.data != "shapes":
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus)
    c.model = tokenizer_model(arg.tokens, arg.bits, arg.ch, arg.size)
    c.loss = ml_collections.ConfigDict(dict(
        l1_weight=1.0, l2_weight=1.0,
        perceptual_weight=0.0, lpips_path="",      # off: needs local LPIPS weights (no download)
        adv_weight=0.0, adv_start=0, disc_weight=1.0, adaptive_weight=True, adaptive_weight_max=1e4,
        lecam_weight=0.0, lecam_decay=0.999))
    c.discriminator = ml_collections.ConfigDict(dict(kind="patch", ch=16, num_layers=2))
    c.eval = ml_collections.ConfigDict(dict(max_examples=0 if arg.data == "shapes" else 1024, grid_images=16,
                                            inception_path=""))
    c.pretrained = ml_collections.ConfigDict(dict(path="", format="mmjax"))
    c.optim.update(name="adamw", lr=5e-3, b1=0.9, b2=0.99, weight_decay=1e-4, warmup_steps=50, schedule="cosine",
                   end_lr_frac=0.05, clip_norm=1.0)
    return c
