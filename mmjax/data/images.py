"""Host-side image preprocessing for the LLaVA family (numpy + PIL): decode, resize, crop, pad, tile.

Images are ``(H, W, 3)`` uint8 numpy arrays. Sizes passed as one argument are ``(width, height)``, PIL's
order, as in the LLaVA reference code; functions that return array shapes say so and return ``(rows, cols)``.

The AnyRes *geometry* (which canvas, how many tiles and tokens) is pure integer math that the models need too,
so it lives below both in :mod:`mmjax.layout.anyres`; this module only turns pixels into the tiles that
geometry describes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mmjax.layout import anyres

# Configs name these as image-preprocessing settings (configs/llava/*.py); they are defined with the layout.
from mmjax.layout.anyres import LLAVA_NEXT_PINPOINTS, ONEVISION_PINPOINTS, SIGLIP_MEAN, SIGLIP_STD  # noqa: F401

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


# Images with more pixels are refused from their header (40 MP: any camera photo in LLaVA's data sets, 8x the
# largest OneVision canvas); decoding one costs 3 bytes per pixel per data worker before it is resized away.
MAX_IMAGE_PIXELS = 40_000_000
# PIL modes of 16-bit grey images (PNG, TIFF); 16-bit RGB(A) PNGs already arrive as 8-bit RGB(A) (high byte).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(ValueError):
    """An image could not be read; the message names the file so a pipeline can log, skip and count it."""


class ImageTooLargeError(ImageDecodeError):
    """An image has more pixels than the decode limit (or PIL's decompression-bomb limit); refused unread."""


# -------------------------------------------------------------------------------------------- decode / basics


def _to_rgb(img: Image.Image) -> np.ndarray:
    """PIL's ``convert("RGB")`` (what the reference does: grey replicated, palette expanded, alpha dropped,
    CMYK converted), except for 16-bit grey, which PIL clips to 0..255 (nearly all white): its high byte,
    the 8-bit value PIL itself gives 16-bit RGB PNGs."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(image: np.ndarray, label: str) -> np.ndarray:
    """A decoded image array (bool, float in [0, 1] or uint8; (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)) ->
    uint8 (H, W, 3): grey replicated, alpha dropped, floats scaled by 255 and rounded."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or not min(image.shape[:2]):
        raise ImageDecodeError(f"image {label!r} is an array of shape {image.shape}; expected (H, W), "
                               "(H, W, 1), (H, W, 3) or (H, W, 4)")
    if image.dtype.kind not in "biuf":
        raise ImageDecodeError(f"image {label!r} is an array of dtype {image.dtype}, not numbers")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _encoded(source: Any) -> bytes | str | None:
    """The encoded bytes or path inside a record value: bytes, `np.bytes_`, a 0-d bytes / object array (what
    tfds, msgpack or a batched numpy record hold), a str or os.PathLike path; None for a pixel array."""
    if isinstance(source, np.ndarray) and source.ndim == 0 and source.dtype.kind in "SOU":
        source = source.item()
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return None


def decode_image(source: Any, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """THE image input of every task: a record's image value -> ``(H, W, 3)`` uint8 RGB.

    ``source`` is encoded bytes (JPEG, PNG, WebP, GIF (its first frame), BMP, TIFF; also as ``np.bytes_`` or a
    0-d bytes array), a file path, or a pixel array (see :func:`_array_to_rgb`). Encoded images are turned
    upright by their EXIF orientation, then converted as :func:`_to_rgb` says (16-bit, CMYK, palette with
    transparency, grey). An image of more than ``max_pixels`` pixels raises :class:`ImageTooLargeError` after
    reading only its header; anything else that cannot be read (a missing file, truncated or foreign data, an
    array of the wrong shape) raises :class:`ImageDecodeError`. Both name ``name`` (the record: shard / file and
    key / row) or the path, never the bytes.
    """
    encoded = _encoded(source)
    if encoded is None:
        array = np.asarray(source)
        return _array_to_rgb(array, name or f"array {array.shape}")
    label = name or (encoded if isinstance(encoded, str) else f"<{len(encoded)} bytes>")
    try:
        fp = io.BytesIO(encoded) if isinstance(encoded, bytes) else encoded
        with Image.open(fp) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"image {label!r} is {width}x{height} = {width * height} pixels, over "
                                         f"the limit of {max_pixels}")
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")   # PIL warns when palette transparency meets convert("RGB")
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image {label!r} refused by PIL: {e}") from e
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(f"cannot decode image {label!r}: {type(e).__name__}: {e}") from e


def pad_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """The reference's pad-to-square colour for a processor's ``image_mean``: ``int(x * 255)``, truncated."""
    r, g, b = (int(x * 255) for x in mean)
    return r, g, b


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")


def resize(image: np.ndarray, width: int, height: int, method: str = "bicubic") -> np.ndarray:
    """Resizes to exactly ``width x height`` with PIL (what the reference and HF's PIL processors use)."""
    _check_rgb(image)
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}; choose from {sorted(_RESAMPLE)}")
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=_RESAMPLE[method]))


def resize_shortest_edge(image: np.ndarray, size: int, method: str = "bicubic") -> np.ndarray:
    """CLIP-processor resize: the short side becomes ``size``, the long side ``int(size * long / short)``."""
    h, w = image.shape[:2]
    if w <= h:
        return resize(image, size, int(size * h / w), method)
    return resize(image, int(size * w / h), size, method)


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crops the centre ``width x height``; the odd leftover pixel goes to the bottom/right (as HF)."""
    h, w = image.shape[:2]
    if width > w or height > h:
        raise ValueError(f"crop {width}x{height} is larger than the image {w}x{h}")
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def pad_to_square(image: np.ndarray, fill: Sequence[int] = anyres.CLIP_MEAN_RGB) -> np.ndarray:
    """Expands to a square of the long side, image centred, border filled with ``fill`` (LLaVA-1.5 'pad').

    Filling with the mean colour (not black) makes the border normalise to ~0, so it looks like "no signal".
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[...] = np.asarray(fill, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return out


def llava1_image(image: np.ndarray, size: int = 224, method: str = "bicubic") -> np.ndarray:
    """LLaVA-1 (CLIP processor): resize the short side to ``size``, then centre crop ``size x size``."""
    return center_crop(resize_shortest_edge(image, size, method), size, size)


def llava15_image(
    image: np.ndarray, size: int = 336, fill: Sequence[int] = anyres.CLIP_MEAN_RGB, method: str = "bicubic"
) -> np.ndarray:
    """LLaVA-1.5 (``image_aspect_ratio='pad'``): pad to square with the mean colour, resize to ``size``."""
    square = pad_to_square(image, fill)
    return resize(square, size, size, method)


def normalize(
    image: np.ndarray, mean: Sequence[float] = anyres.CLIP_MEAN, std: Sequence[float] = anyres.CLIP_STD
) -> np.ndarray:
    """uint8 ``[..., 3]`` -> float32 ``(x / 255 - mean) / std``; works on one image or a stack of tiles."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# -------------------------------------------------------------------------------------------- AnyRes pixels


def resize_and_pad(image: np.ndarray, target: anyres.Size, method: str = "bicubic") -> np.ndarray:
    """Resizes keeping aspect ratio (`mmjax.layout.anyres.fit_size`) and pastes it centred on a black ``target``
    canvas."""
    new_w, new_h = anyres.fit_size((image.shape[1], image.shape[0]), target)
    target_w, target_h = target
    out = np.zeros((target_h, target_w, 3), np.uint8)
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resize(image, new_w, new_h, method)
    return out


def split_tiles(image: np.ndarray, tile_size: int) -> np.ndarray:
    """Cuts an image with sides a multiple of ``tile_size`` into row-major tiles ``(n, tile, tile, 3)``."""
    h, w = image.shape[:2]
    if h % tile_size or w % tile_size:
        raise ValueError(f"image {w}x{h} is not a whole number of {tile_size}px tiles")
    rows, cols = h // tile_size, w // tile_size
    tiles = image.reshape(rows, tile_size, cols, tile_size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiles.reshape(rows * cols, tile_size, tile_size, 3))


def anyres_tiles(
    image: np.ndarray, pinpoints: Sequence[Sequence[int]], tile_size: int, method: str = "bicubic"
) -> np.ndarray:
    """AnyRes pixels: ``[base] + row-major tiles`` as ``(1 + gh*gw, tile, tile, 3)`` uint8.

    The base view is a plain squash-resize of the whole image (what the released models were trained with);
    the tiles come from the image fitted onto the best canvas with black padding.
    """
    _check_rgb(image)
    best = anyres.select_best_resolution((image.shape[1], image.shape[0]), pinpoints)
    tiles = split_tiles(resize_and_pad(image, best, method), tile_size)
    base = resize(image, tile_size, tile_size, method)
    return np.concatenate([base[None], tiles], axis=0)
