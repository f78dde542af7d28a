"""The image tokenizer's architecture and quantizer settings, and the released / tiny presets.

A module of its own because both the conv blocks (`mmjax.models.conv_blocks`, which build the encoder and decoder
from it) and the model (`mmjax.models.vq`, which adds the quantizer) read it; neither has to import the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

QUANTIZERS = ("lfq", "vq")


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Architecture and quantizer of an image tokenizer. Defaults are Show-o's MAGVIT-v2 tokenizer.

    Encoder and decoder have separate widths and depths per level (Show-o's differ). `resolution` is the
    nominal input size: it only decides where `attn_resolutions` put attention (taming convention), any
    input size that is a multiple of the downsampling factor runs. GroupNorm uses gcd(width, norm_groups)
    groups (32 for real widths, fewer for tiny test widths).
    """

    ch: int = 128
    in_channels: int = 3
    out_channels: int = 3
    enc_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    enc_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    dec_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    dec_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    resolution: int = 256
    attn_resolutions: tuple[int, ...] = ()
    mid_attn: bool = True  # mid block res-attn-res (res-res when off)
    norm_groups: int = 32
    norm_eps: float = 1e-6
    z_channels: int = 13  # LFQ: number of bits; VQ: codebook vector size
    remat: bool = False  # rematerialise ResBlocks (saves activation memory when training at 256px+)
    quantizer: str = "lfq"  # "lfq" | "vq"
    commit_beta: float = 0.25
    # LFQ
    msb_first: bool = True  # Show-o: channel 0 is the most significant bit; Open-MAGVIT2: False
    entropy_temperature: float = 0.01
    entropy_weight: float = 0.1
    entropy_group_bits: int = 10  # factorised batch entropy over groups of <= this many bits
    entropy_chunk_codes: int = 0  # > 0: exact batch entropy, walking the 2^K codes in chunks of this size
    # VQ (EMA codebook)
    codebook_size: int = 1024
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_code_threshold: float = 1.0

    def __post_init__(self):
        for f in ("enc_ch_mult", "enc_num_res_blocks", "dec_ch_mult", "dec_num_res_blocks",
                  "attn_resolutions"):
            object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))
        if len(self.enc_ch_mult) != len(self.enc_num_res_blocks):
            raise ValueError(f"VQConfig: enc_ch_mult {self.enc_ch_mult} and enc_num_res_blocks "
                             f"{self.enc_num_res_blocks} must have the same length")
        if len(self.dec_ch_mult) != len(self.dec_num_res_blocks):
            raise ValueError(f"VQConfig: dec_ch_mult {self.dec_ch_mult} and dec_num_res_blocks "
                             f"{self.dec_num_res_blocks} must have the same length")
        if len(self.enc_ch_mult) != len(self.dec_ch_mult):
            raise ValueError("VQConfig: encoder and decoder need the same number of levels to invert the "
                             f"downsampling ({len(self.enc_ch_mult)} vs {len(self.dec_ch_mult)})")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"VQConfig.quantizer={self.quantizer!r}; known: {QUANTIZERS}")
        if self.quantizer == "lfq" and not 1 <= self.z_channels <= 30:
            raise ValueError(f"VQConfig.z_channels={self.z_channels}: LFQ needs 1..30 bits (int32 ids)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VQConfig:
        """Builds a config from a mapping, refusing unknown fields by name (a typo never passes silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> VQConfig:
        return VQConfig.from_dict({**dataclasses.asdict(self), **changes})

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.enc_ch_mult) - 1)

    @property
    def num_codes(self) -> int:
        return 2 ** self.z_channels if self.quantizer == "lfq" else self.codebook_size


def showo_magvitv2() -> VQConfig:
    """Show-o's released MAGVIT-v2 tokenizer (HF `showlab/magvitv2`): 95,387,004 params, 2^13 codes, /16.

    taming-style 2-D CNN, ch 128; encoder [1,2,2,4,4] x [4,3,4,3,4] blocks, decoder [1,1,2,2,4] x [4,4,3,4,3];
    mid res-attn-res, no attention elsewhere (its attn_resolutions=[5] never matches); MSB-first LFQ.
    256px -> 16x16 ids, 512px -> 32x32 with the same weights.
    """
    return VQConfig()


def tiny(**changes: Any) -> VQConfig:
    """A CPU-test-sized model of the same structure (2 levels, widths 8/16, 6 bits)."""
    base = dict(ch=8, enc_ch_mult=(1, 2), enc_num_res_blocks=(1, 1), dec_ch_mult=(1, 2),
                dec_num_res_blocks=(1, 1), resolution=16, z_channels=6, codebook_size=16)
    return VQConfig.from_dict({**base, **changes})
