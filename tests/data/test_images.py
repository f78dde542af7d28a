"""mmjax.data.images: preprocessing invariants, and AnyRes pixels against transformers."""

import io

import numpy as np
import pytest
from PIL import Image

from mmjax.data import images as im
from mmjax.layout import anyres


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- basics


def test_pad_fill_is_reference_truncation():
    assert tuple(int(m * 255) for m in anyres.CLIP_MEAN) == anyres.CLIP_MEAN_RGB == im.pad_fill(anyres.CLIP_MEAN)
    assert im.pad_fill(anyres.SIGLIP_MEAN) == (127, 127, 127)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit grey to 0..255 (every value above 255 turns white); decode_image keeps
    the high byte, which is what PIL itself gives a 16-bit RGB PNG."""
    values = np.array([[0, 255, 256, 25700, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode == "I;16"
    out = im.decode_image(tmp_path / "g16.png")
    assert out.shape == (1, 6, 3) and (out == out[..., :1]).all()
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 100, 128, 255])


def test_decode_bytes_path_and_grey(tmp_path):
    rgb = _rgb(5, 7)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(im.decode_image(path), rgb)
    np.testing.assert_array_equal(im.decode_image(path.read_bytes()), rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(buf, format="PNG")
    grey = im.decode_image(buf.getvalue())
    assert grey.shape == (5, 7, 3) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 2], rgb[..., 0])


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(im.ImageDecodeError, match=r"missing\.jpg"):
        im.decode_image(tmp_path / "missing.jpg")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(im.ImageDecodeError, match=r"broken\.png"):
        im.decode_image(bad)
    with pytest.raises(im.ImageDecodeError, match="record-17"):
        im.decode_image(b"\x00\x01", name="record-17")


@pytest.mark.parametrize("hw", [(4, 10), (10, 4), (6, 6)])
def test_pad_to_square_fills_with_mean_colour(hw):
    h, w = hw
    img = np.full((h, w, 3), 7, np.uint8)
    out = im.pad_to_square(img)
    side = max(h, w)
    assert out.shape == (side, side, 3)
    top, left = (side - h) // 2, (side - w) // 2
    np.testing.assert_array_equal(out[top : top + h, left : left + w], img)
    mask = np.ones((side, side), bool)
    mask[top : top + h, left : left + w] = False
    assert (out[mask] == np.array(anyres.CLIP_MEAN_RGB, np.uint8)).all()
    assert mask.sum() == side * side - h * w


def test_llava15_and_llava1_shapes_and_border_colour():
    img = np.full((100, 300, 3), 255, np.uint8)
    out = im.llava15_image(img, 336)
    assert out.shape == (336, 336, 3)
    np.testing.assert_array_equal(out[0, 0], anyres.CLIP_MEAN_RGB)  # far from the image, bicubic keeps the fill
    assert im.llava1_image(_rgb(200, 300), 224).shape == (224, 224, 3)
    norm = im.normalize(out)
    assert norm.dtype == np.float32 and np.abs(norm[0, 0]).max() < 0.02  # the fill normalises to ~0


def test_split_tiles_is_row_major():
    img = np.zeros((20, 30, 3), np.uint8)
    for r in range(2):
        for c in range(3):
            img[r * 10 : (r + 1) * 10, c * 10 : (c + 1) * 10] = r * 3 + c
    tiles = im.split_tiles(img, 10)
    assert tiles.shape == (6, 10, 10, 3)
    assert [int(t[0, 0, 0]) for t in tiles] == list(range(6))


def test_anyres_tiles_shapes_and_black_padding():
    img = np.full((300, 1000, 3), 255, np.uint8)  # W=1000, H=300
    layout = anyres.anyres_token_layout((1000, 300), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert layout.best_resolution == (1008, 336) and layout.grid == (1, 3)
    tiles = im.anyres_tiles(img, anyres.LLAVA_NEXT_PINPOINTS, 336)
    assert tiles.shape == (layout.num_tiles, 336, 336, 3) == (4, 336, 336, 3)
    assert (tiles[0] == 255).all()  # base view: squash, no padding
    # fitted to 1008 x ceil(300 * 1.008) = 1008 x 303, pasted (336 - 303) // 2 = 16 rows down
    assert anyres.fit_size((1000, 300), (1008, 336)) == (1008, 303)
    for tile in tiles[1:]:
        assert (tile[:16] == 0).all() and (tile[16 : 16 + 303] == 255).all() and (tile[16 + 303 :] == 0).all()
    tall = im.anyres_tiles(_rgb(1000, 500), anyres.ONEVISION_PINPOINTS, 384)  # W=500, H=1000
    layout = anyres.anyres_token_layout((500, 1000), anyres.ONEVISION_PINPOINTS, 384, 14)
    assert layout.grid == (3, 2) and tall.shape == (layout.num_tiles, 384, 384, 3) == (7, 384, 384, 3)


# ----------------------------------------------------------------------------------------------- parity


@pytest.mark.parity
@pytest.mark.parametrize("size", [(500, 300), (300, 500), (200, 150), (769, 1023)])
def test_anyres_pixels_match_transformers(size):
    pytest.importorskip("transformers")
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    img = _rgb(size[1], size[0], seed=size[0])
    nxt = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    want = nxt(images=img, return_tensors="np")["pixel_values"][0]
    got = im.normalize(im.anyres_tiles(img, anyres.LLAVA_NEXT_PINPOINTS_HF, 336)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    ov = LlavaOnevisionImageProcessorPil(image_mean=anyres.SIGLIP_MEAN, image_std=anyres.SIGLIP_STD)
    want = ov(images=img, return_tensors="np")["pixel_values"][0]
    tiles = im.anyres_tiles(img, anyres.ONEVISION_PINPOINTS, 384)
    np.testing.assert_allclose(im.normalize(tiles, anyres.SIGLIP_MEAN, anyres.SIGLIP_STD).transpose(0, 3, 1, 2), want,
                               atol=1e-5)


@pytest.mark.parity
def test_llava15_pad_matches_clip_processor():
    pytest.importorskip("transformers")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    for h, w in [(200, 330), (331, 120)]:
        img = _rgb(h, w, seed=h)
        square = im.pad_to_square(img)
        want = clip(images=square, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(im.normalize(im.llava15_image(img)).transpose(2, 0, 1), want, atol=1e-5)
        clip224 = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        want = clip224(images=img, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(im.normalize(im.llava1_image(img)).transpose(2, 0, 1), want, atol=1e-5)


# ------------------------------------------------------------------------ decode_image: the one image input


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_reads_every_encoding_and_record_form():
    """JPEG, PNG, WebP, GIF (first frame), palette + transparency, CMYK, as bytes, `np.bytes_` and the 0-d bytes
    array a tfds / numpy record holds: each gives the pixels PIL's RGB conversion gives."""
    rgb = _rgb(6, 9)
    lossless = _encode(Image.fromarray(rgb), "PNG")
    for value in (lossless, np.bytes_(lossless), np.array(lossless), np.array(lossless, dtype=object)):
        np.testing.assert_array_equal(im.decode_image(value), rgb)
    np.testing.assert_array_equal(im.decode_image(_encode(Image.fromarray(rgb), "WEBP", lossless=True)), rgb)
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    np.testing.assert_array_equal(im.decode_image(jpeg), np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    palette = Image.fromarray(rgb).quantize(8)
    frames = [palette, Image.fromarray(255 - rgb).quantize(8)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(im.decode_image(gif.getvalue()), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0
    with_alpha = _encode(palette, "PNG", transparency=0)
    np.testing.assert_array_equal(im.decode_image(with_alpha), np.asarray(palette.convert("RGBA"))[..., :3])
    cmyk = Image.fromarray(rgb).convert("CMYK")
    np.testing.assert_array_equal(im.decode_image(_encode(cmyk, "TIFF")), np.asarray(cmyk.convert("RGB")))


def test_decode_turns_images_upright_by_their_exif_orientation():
    """A camera JPEG stored sideways with Orientation=6 (rotate 90 degrees clockwise to view) is decoded upright."""
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:, :4] = 255                               # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(stored), "PNG", exif=exif)
    out = im.decode_image(data)
    assert out.shape == (8, 4, 3)                     # rotated: the stored left half is now the top
    assert out[:4].min() == 255 and out[4:].max() == 0


def test_decode_takes_pixel_arrays_of_any_layout():
    rgb = _rgb(3, 5)
    np.testing.assert_array_equal(im.decode_image(rgb), rgb)
    np.testing.assert_array_equal(im.decode_image(np.concatenate([rgb, rgb[..., :1]], -1)), rgb)   # RGBA
    np.testing.assert_array_equal(im.decode_image(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1))   # grey
    np.testing.assert_array_equal(im.decode_image(rgb[..., :1] / 255.0), np.repeat(rgb[..., :1], 3, -1))
    np.testing.assert_array_equal(im.decode_image(np.eye(2, dtype=bool))[..., 0], [[255, 0], [0, 255]])
    with pytest.raises(im.ImageDecodeError, match=r"shard-3 key 7.*shape \(2, 2, 2\)"):
        im.decode_image(np.zeros((2, 2, 2), np.uint8), name="shard-3 key 7")


def test_decode_errors_name_the_record_never_the_bytes():
    with pytest.raises(im.ImageDecodeError) as e:
        im.decode_image(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    assert "<44 bytes>" in str(e.value) and "\\x00" not in str(e.value)
    with pytest.raises(im.ImageDecodeError, match=r"a\.tar sample '0001'"):
        im.decode_image(np.bytes_(b"\xff\xd8junk"), name="a.tar sample '0001'")
