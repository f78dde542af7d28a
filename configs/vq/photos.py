r"""A tiny LFQ tokenizer on 32x32 crops of real photographs (scikit-image's, no download), scored on held-out photos.

Command:   python -m mmjax.train --config configs/vq/photos.py --workdir runs/vq_photos
Variants:  configs/vq/photos.py:steps=4000,ch=32,bits=12
Data:      `photos` (mmjax/data/photos.py): random 32x32 crops at scales 1, 1/2, 1/4 of 15 training photos; eval =
           1,024 fixed crops of 4 OTHER photos (chelsea, rocket, camera, brick) the tokenizer never sees.
Model:     the tiny tokenizer of configs/vq/tiny.py (ch 16, /4 -> 8x8 ids), 2^10 codes (photos carry more detail
           than shapes), MSB-first LFQ. L1 + L2 only (no LPIPS weights here, no GAN).
Hardware:  2 shared CPU cores: 7 min 51 s wall under heavy sharing (4 min 30 s of CPU), 2026-11-28.
Expected:  held-out (unseen photos) `psnr` 24.82 dB, ssim 0.735, `codebook_usage` 0.991 (docs/tokenizer.md; a 4x
           bicubic thumbnail of the same crops, 2.4x more bits than the ids, gives 29.45 dB).
"""

import importlib.util
import os

import ml_collections

from mmjax.configlib import parse_arg


def _tiny():
    spec = importlib.util.spec_from_file_location("_vq_tiny", os.path.join(os.path.dirname(__file__), "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, tokens=8, bits=10, ch=16, steps=1500, batch=32)
    tiny = _tiny()
    c = tiny.get_config(f"tokens={arg.tokens},bits={arg.bits},ch={arg.ch},steps={arg.steps},batch={arg.batch}")
    c.augment = ml_collections.ConfigDict(dict(flip=True, random_crop=False))
    c.data.train = ml_collections.ConfigDict(dict(name="photos", split="train", crop_size=32, num_records=100_000,
                                                  scales=(1.0, 0.5, 0.25)))
    c.data.eval = ml_collections.ConfigDict(dict(name="photos", split="eval", crop_size=32, num_records=1024,
                                                 scales=(1.0, 0.5, 0.25)))
    return c
