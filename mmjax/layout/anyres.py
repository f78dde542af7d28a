"""AnyRes geometry and the CLIP / SigLIP preprocessing constants: pure Python ints and tuples, no pixels.

This is the layer both the data pipeline (`mmjax.data`) and the models (`mmjax.models`) import, and which imports
neither: the pipeline needs the layout to size an image's placeholder span, the model needs the same layout (as
static ints) to reshape, crop and pack the features, and the two must never disagree about a token count. So the
whole geometry is computed in ONE place, :func:`anyres_token_layout`, from plain Python ints.

Sizes passed as one argument are ``(width, height)``, PIL's order, because that is how the LLaVA reference code
and the AnyRes rules are written; functions that return array shapes say so and return ``(rows, cols)``. Mixing
the two orders is the classic AnyRes bug, so every name below says which.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

Size = tuple[int, int]
"""(width, height), PIL order."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# The reference fills pad-to-square with tuple(int(x * 255) for x in image_mean): truncation, not rounding
# (`mmjax.data.images.pad_fill`). SigLIP's mean gives (127, 127, 127).
CLIP_MEAN_RGB: tuple[int, int, int] = (122, 116, 104)

# LLaVA-1.6 pinpoints as (width, height), in the order of the reference repository (haotian-liu/LLaVA-NeXT).
LLAVA_NEXT_PINPOINTS: tuple[Size, ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# transformers reads the same config list as (height, width). Only the tie-break differs (first candidate
# wins): for images up to ~336x336 the reference picks a 1x2 (tall) grid and transformers a 2x1 (wide) one.
# Use this ordering to reproduce transformers exactly (e.g. logits parity with its LlavaNext model).
LLAVA_NEXT_PINPOINTS_HF: tuple[Size, ...] = tuple((h, w) for w, h in LLAVA_NEXT_PINPOINTS)


def grid_pinpoints(spec: str | Sequence[Sequence[int]], tile_size: int) -> tuple[Size, ...]:
    """Candidate canvases as (width, height).

    ``spec`` is either explicit pairs (returned as tuples) or the OneVision range form ``"(1x1),...,(6x6)"``,
    which expands to every ``i x j`` grid (i outer, j inner, as the reference) times ``tile_size``.
    """
    if not isinstance(spec, str):
        return tuple((int(a), int(b)) for a, b in spec)
    found = re.findall(r"\((\d+)x(\d+)\)", spec)
    if len(found) < 2:
        raise ValueError(f"grid pinpoints {spec!r}: expected a range like '(1x1),...,(6x6)'")
    (i0, j0), (i1, j1) = (tuple(map(int, found[0])), tuple(map(int, found[-1])))
    return tuple(
        (i * tile_size, j * tile_size) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)
    )


ONEVISION_PINPOINTS: tuple[Size, ...] = grid_pinpoints("(1x1),...,(6x6)", 384)


def select_best_resolution(image_size: Size, pinpoints: Sequence[Sequence[int]]) -> Size:
    """Picks the canvas (w, h) that keeps the most original pixels, then wastes the least; first wins a tie.

    For each candidate: ``s = min(w/W, h/H)``, ``eff = min(int(W*s) * int(H*s), W*H)``, ``waste = w*h - eff``.
    """
    width, height = image_size
    best: Size | None = None
    best_eff, best_waste = 0, math.inf
    for cand_w, cand_h in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(cand_w), int(cand_h)), eff, waste
    if best is None:
        raise ValueError(f"no grid pinpoint fits image size {image_size} (pinpoints {list(pinpoints)})")
    return best


def fit_size(image_size: Size, target: Size) -> Size:
    """Size (w, h) of the image resized to fit ``target``, keeping aspect ratio; short side rounded up."""
    width, height = image_size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return target_w, min(math.ceil(height * scale_w), target_h)
    return min(math.ceil(width * scale_h), target_w), target_h


def unpad_box(image_size: Size, feature_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Feature-map crop ``(top, bottom, left, right)`` that drops the rows/cols made of canvas padding.

    ``feature_shape`` is ``(rows, cols)``. Uses transformers' ``int(round(x, 7))`` so a size such as
    47.9999999 counts as 48 (the reference's bare ``int`` would give 47 and change the token count).
    """
    width, height = image_size
    cur_h, cur_w = feature_shape
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def anyres_max_shape(rows: int, cols: int, max_tiles: int, unit: int) -> tuple[int, int]:
    """OneVision ``anyres_max_N``: shrink an unpadded ``rows x cols`` map to about N tiles' worth of tokens.

    ``ratio = sqrt(rows*cols / (N * unit^2))``; above 1.1 the map is (bilinearly) resized to
    ``(int(rows // ratio), int(cols // ratio))``, otherwise it is kept.
    """
    ratio = math.sqrt(rows * cols / (max_tiles * unit**2))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return rows, cols


def video_frame_shape(patches_per_side: int = 27) -> tuple[int, int]:
    """OneVision video frames: each ``n x n`` feature map is bilinearly resized to ``ceil(n/2)``, 27 -> 14."""
    side = math.ceil(patches_per_side / 2)
    return side, side


def video_token_count(num_frames: int, patches_per_side: int = 27, newline: bool = True) -> int:
    """Tokens of a OneVision video: ``frames * 14*14`` plus one ``image_newline`` after all frames (as HF)."""
    rows, cols = video_frame_shape(patches_per_side)
    return num_frames * rows * cols + int(newline)


def multi_image_token_count(patches_per_side: int = 27, newline: bool = True) -> int:
    """Tokens of one image in a OneVision multi-image sample: the base view only (+ one ``image_newline``)."""
    return patches_per_side * patches_per_side + int(newline)


@dataclass(frozen=True)
class AnyResLayout:
    """All the pipeline and the model must agree on for one AnyRes image; plain ints, static under jit."""

    best_resolution: Size  # (w, h) canvas the image is pasted on
    grid: tuple[int, int]  # (rows, cols) of tiles, row-major
    num_tiles: int  # 1 (base) + rows * cols: leading dim of the pixel array
    patches_per_side: int  # feature rows/cols per tile (tile_size // patch_size)
    feature_shape: tuple[int, int]  # (rows, cols) of the stitched tile features before unpadding
    unpad_box: tuple[int, int, int, int]  # (top, bottom, left, right) crop of the stitched map
    unpadded_shape: tuple[int, int]  # (rows, cols) after the crop
    reduced_shape: tuple[int, int]  # (rows, cols) after anyres_max interpolation (== unpadded_shape if none)
    base_tokens: int  # tokens of the base view
    newline: bool  # one image_newline token after every row
    num_tokens: int  # base_tokens + rows * (cols + newline) of reduced_shape


def anyres_token_layout(
    image_size: Size,
    pinpoints: Sequence[Sequence[int]],
    tile_size: int,
    patch_size: int,
    *,
    max_tiles: int | None = None,
    base_tokens: int | None = None,
    newline: bool = True,
) -> AnyResLayout:
    """The AnyRes layout of an image of ``image_size`` (w, h): the single source of truth for token counts.

    ``max_tiles`` enables OneVision's ``anyres_max_N`` reduction; ``base_tokens`` defaults to the full base
    view ``(tile_size // patch_size) ** 2`` (576 for CLIP-336/14, 729 for SigLIP-384/14). Cached. E.g.
    672x672, LLaVA-1.6 pinpoints, 336 tiles, patch 14: ``576 + 48 * (48 + 1) = 2928``.
    """
    return _layout(
        (int(image_size[0]), int(image_size[1])),
        tuple((int(w), int(h)) for w, h in pinpoints),
        int(tile_size),
        int(patch_size),
        max_tiles,
        base_tokens,
        bool(newline),
    )


@functools.lru_cache(maxsize=65536)
def _layout(
    image_size: Size,
    pinpoints: tuple[Size, ...],
    tile_size: int,
    patch_size: int,
    max_tiles: int | None,
    base_tokens: int | None,
    newline: bool,
) -> AnyResLayout:
    if min(image_size) <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    for w, h in pinpoints:
        if w % tile_size or h % tile_size:
            raise ValueError(f"grid pinpoint {(w, h)} is not a multiple of the tile size {tile_size}")
    best_w, best_h = select_best_resolution(image_size, pinpoints)
    grid = (best_h // tile_size, best_w // tile_size)
    n = tile_size // patch_size
    feature_shape = (grid[0] * n, grid[1] * n)
    box = unpad_box(image_size, feature_shape)
    unpadded = (box[1] - box[0], box[3] - box[2])
    reduced = anyres_max_shape(*unpadded, max_tiles, n) if max_tiles else unpadded
    base = n * n if base_tokens is None else base_tokens
    return AnyResLayout(
        best_resolution=(best_w, best_h),
        grid=grid,
        num_tiles=1 + grid[0] * grid[1],
        patches_per_side=n,
        feature_shape=feature_shape,
        unpad_box=box,
        unpadded_shape=unpadded,
        reduced_shape=reduced,
        base_tokens=base,
        newline=newline,
        num_tokens=base + reduced[0] * (reduced[1] + int(newline)),
    )
