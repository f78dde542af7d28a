"""Where every image token of a LLaVA sequence comes from: token maps, built on the host from a layout.

LLaVA variants differ only in how an image's tile features become its token sequence: LLaVA-1/1.5 take the
patch features in order; LLaVA-NeXT stitches the tiles into one map, crops the rows/cols that came from canvas
padding and appends an `image_newline` after every row; LLaVA-OneVision also shrinks large maps bilinearly
(`anyres_max_9`), keeps only the base view (+ newline) in multi-image samples and pools video frames 2x2
bilinearly (27x27 -> 14x14 = 196 tokens) with one newline after all frames.

All of these are *linear* maps from the projected features to the tokens, with shapes fixed by plain ints (image
size, grid, tile size). So each one is written here, once, as a map: token j of an image reads up to K feature
rows (`index`, K = 1, or 4 for a bilinear resize) and mixes them with `weight`; index -1 is the newline vector.
The data pipeline places these per-image maps at the image's positions in the (padded) sequence (`place_maps`);
the model then does one fixed-shape gather (`mmjax.models.llava_packing.splice`) with no Python loop over the
batch and no dynamic shape. Maps are built from `mmjax.layout.anyres.anyres_token_layout`, the single source of
truth for token counts, so pipeline and model cannot disagree. Pure numpy: the pipeline and the model both import
it, and it imports neither.

Bilinear weights reproduce PyTorch's `interpolate(mode="bilinear", align_corners=False)` (what the reference and
transformers use: no antialiasing): `src = (dst + 0.5) * in / out - 0.5`, clamped at 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from mmjax.layout.anyres import AnyResLayout

NEWLINE = -1  # index of the image_newline vector in a per-image map


@dataclasses.dataclass(frozen=True)
class TokenMap:
    """How one image (or video) becomes tokens: `index`/`weight` (num_tokens, K) into the image's own
    flattened tile features (tile-major, `tiles x patches`), NEWLINE for the image_newline vector."""

    index: np.ndarray
    weight: np.ndarray
    num_tiles: int

    @property
    def num_tokens(self) -> int:
        return int(self.index.shape[0])

    @property
    def taps(self) -> int:
        return int(self.index.shape[1])


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) per output index of a 1-D bilinear resize, as torch's align_corners=False.

    Computed in float32 like PyTorch's CPU kernel (scale = in / out, src = scale * (dst + 0.5) - 0.5 clamped at
    0, lambda = src - floor(src)), so the weights are the very numbers the reference multiplies by.
    """
    f32 = np.float32
    scale = np.float64(f32(in_size) / f32(out_size))
    # one rounding of the exact scale * (dst + 0.5) - 0.5 (the kernel's fused multiply-add)
    src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(f32), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    return i0, i1, f32(1) - w1, w1


def _resize_grid(grid: np.ndarray, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A (rows, cols) grid of feature indices bilinearly resized: (rows', cols', 4) indices and weights."""
    rows, cols = grid.shape
    y0, y1, wy0, wy1 = bilinear_taps(rows, out_shape[0])
    x0, x1, wx0, wx1 = bilinear_taps(cols, out_shape[1])
    index = np.stack([grid[np.ix_(y0, x0)], grid[np.ix_(y0, x1)], grid[np.ix_(y1, x0)], grid[np.ix_(y1, x1)]], -1)
    weight = np.stack([np.outer(wy0, wx0), np.outer(wy0, wx1), np.outer(wy1, wx0), np.outer(wy1, wx1)], -1)
    return index, weight


def _rows_with_newline(index: np.ndarray, weight: np.ndarray, newline: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols, K) -> (rows * (cols + newline), K), a newline token closing every row."""
    rows, _, k = index.shape
    if newline:
        nl_index = np.full((rows, 1, k), NEWLINE, np.int64)
        nl_weight = np.zeros((rows, 1, k))
        nl_weight[..., 0] = 1.0
        index = np.concatenate([index, nl_index], axis=1)
        weight = np.concatenate([weight, nl_weight], axis=1)
    return index.reshape(-1, k), weight.reshape(-1, k)


def _single(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return index[..., None], np.ones((*index.shape, 1))


def _finish(parts: list[tuple[np.ndarray, np.ndarray]], num_tiles: int) -> TokenMap:
    k = max(i.shape[1] for i, _ in parts)
    pad = lambda a, v: np.concatenate([a, np.full((a.shape[0], k - a.shape[1]), v, a.dtype)], axis=1)
    index = np.concatenate([pad(i, 0) for i, _ in parts]).astype(np.int32)
    weight = np.concatenate([pad(w, 0.0) for _, w in parts]).astype(np.float32)
    index[weight.sum(-1) == 0] = 0
    return TokenMap(index, weight, num_tiles)


@functools.lru_cache(maxsize=256)
def base_map(patches_per_side: int, newline: bool = False) -> TokenMap:
    """One view, patches in order (LLaVA-1/1.5); with `newline` one image_newline after it (OneVision's
    images of a multi-image sample, and transformers' single-tile LLaVA-NeXT images)."""
    p = patches_per_side * patches_per_side
    parts = [_single(np.arange(p))]
    if newline:
        parts.append(_single(np.array([NEWLINE])))
    return _finish(parts, 1)


@functools.lru_cache(maxsize=4096)
def anyres_map(layout: AnyResLayout) -> TokenMap:
    """LLaVA-NeXT / OneVision AnyRes: base view, then the stitched tiles cropped to `layout.unpad_box`,
    resized to `layout.reduced_shape` when that differs (anyres_max_N), a newline after every row."""
    n = layout.patches_per_side
    p, (gh, gw) = n * n, layout.grid
    r, c = np.arange(gh * n)[:, None], np.arange(gw * n)[None, :]
    stitched = (1 + (r // n) * gw + (c // n)) * p + (r % n) * n + (c % n)
    top, bottom, left, right = layout.unpad_box
    grid = stitched[top:bottom, left:right]
    if tuple(layout.reduced_shape) != grid.shape:
        index, weight = _resize_grid(grid, layout.reduced_shape)
    else:
        index, weight = _single(grid)
    if layout.base_tokens != p:
        raise ValueError(f"layout has {layout.base_tokens} base tokens but {n}x{n} patches per tile")
    parts = [_single(np.arange(p)), _rows_with_newline(index, weight, layout.newline)]
    out = _finish(parts, layout.num_tiles)
    if out.num_tokens != layout.num_tokens:  # the map must realise exactly the layout's count
        raise AssertionError(f"AnyRes map has {out.num_tokens} tokens, layout says {layout.num_tokens}")
    return out


@functools.lru_cache(maxsize=256)
def video_map(num_frames: int, patches_per_side: int, newline: bool = True) -> TokenMap:
    """OneVision video: every frame's n x n map bilinearly resized to ceil(n/2) square, frames in order, one
    newline after the last frame (as transformers)."""
    n, m = patches_per_side, math.ceil(patches_per_side / 2)
    grid = np.arange(n * n).reshape(n, n)
    index, weight = _resize_grid(grid, (m, m))
    parts = [(index.reshape(-1, 4) + f * n * n, weight.reshape(-1, 4)) for f in range(num_frames)]
    if newline:
        parts.append((np.array([[NEWLINE, 0, 0, 0]]), np.array([[1.0, 0, 0, 0]])))
    return _finish(parts, num_frames)


def place_maps(length: int, spans: list[tuple[int, int, TokenMap]], *, tiles_per_slot: int,
               patches_per_tile: int, max_images: int, taps: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequence-level (length, taps) `image_index` / `image_weight` arrays for the model's `splice`.

    `spans` are (start position, image slot, map): the map's tokens occupy [start, start + num_tokens). Indices
    point into a sample's feature buffer, slot-major (`slot * tiles_per_slot * patches_per_tile + ...`), whose
    last row (`max_images * tiles_per_slot * patches_per_tile`) is the image_newline vector.
    """
    index = np.zeros((length, taps), np.int32)
    weight = np.zeros((length, taps), np.float32)
    stride = tiles_per_slot * patches_per_tile
    newline_row = max_images * stride
    for start, slot, tmap in spans:
        if tmap.taps > taps:
            raise ValueError(f"an image map needs {tmap.taps} taps but the config allows {taps} (set taps=4 for "
                             "anyres_max / video bilinear resizing)")
        if tmap.num_tiles > tiles_per_slot or slot >= max_images:
            raise ValueError(f"image slot {slot} with {tmap.num_tiles} tiles does not fit {max_images} slots x "
                             f"{tiles_per_slot} tiles")
        end = start + tmap.num_tokens
        if end > length:
            raise ValueError(f"image tokens [{start}, {end}) run past the sequence length {length}")
        rows = np.where(tmap.index == NEWLINE, newline_row, tmap.index + slot * stride)
        index[start:end, : tmap.taps] = rows
        weight[start:end, : tmap.taps] = tmap.weight
    return index, weight
