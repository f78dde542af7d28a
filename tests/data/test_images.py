"""mmjax.data.images: preprocessing invariants, and AnyRes geometry and pixels against transformers."""

import io
import types

import numpy as np
import pytest
from PIL import Image

from mmjax.data import images as im


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- basics


def test_pad_fill_is_reference_truncation():
    assert tuple(int(m * 255) for m in im.CLIP_MEAN) == im.CLIP_MEAN_RGB == im.pad_fill(im.CLIP_MEAN)
    assert im.pad_fill(im.SIGLIP_MEAN) == (127, 127, 127)


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
    assert (out[mask] == np.array(im.CLIP_MEAN_RGB, np.uint8)).all()
    assert mask.sum() == side * side - h * w


def test_llava15_and_llava1_shapes_and_border_colour():
    img = np.full((100, 300, 3), 255, np.uint8)
    out = im.llava15_image(img, 336)
    assert out.shape == (336, 336, 3)
    np.testing.assert_array_equal(out[0, 0], im.CLIP_MEAN_RGB)  # far from the image, bicubic keeps the fill
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
    layout = im.anyres_token_layout((1000, 300), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert layout.best_resolution == (1008, 336) and layout.grid == (1, 3)
    tiles = im.anyres_tiles(img, im.LLAVA_NEXT_PINPOINTS, 336)
    assert tiles.shape == (layout.num_tiles, 336, 336, 3) == (4, 336, 336, 3)
    assert (tiles[0] == 255).all()  # base view: squash, no padding
    # fitted to 1008 x ceil(300 * 1.008) = 1008 x 303, pasted (336 - 303) // 2 = 16 rows down
    assert im.fit_size((1000, 300), (1008, 336)) == (1008, 303)
    for tile in tiles[1:]:
        assert (tile[:16] == 0).all() and (tile[16 : 16 + 303] == 255).all() and (tile[16 + 303 :] == 0).all()
    tall = im.anyres_tiles(_rgb(1000, 500), im.ONEVISION_PINPOINTS, 384)  # W=500, H=1000
    layout = im.anyres_token_layout((500, 1000), im.ONEVISION_PINPOINTS, 384, 14)
    assert layout.grid == (3, 2) and tall.shape == (layout.num_tiles, 384, 384, 3) == (7, 384, 384, 3)


def test_grid_pinpoints():
    ov = im.ONEVISION_PINPOINTS
    assert len(ov) == 36 and ov[0] == (384, 384) and ov[1] == (384, 768) and ov[-1] == (2304, 2304)
    assert im.grid_pinpoints([[336, 672]], 336) == ((336, 672),)
    with pytest.raises(ValueError):
        im.grid_pinpoints("anyres", 384)


def test_token_layout_examples():
    lay = im.anyres_token_layout((672, 672), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.grid == (2, 2) and lay.feature_shape == (48, 48) and lay.unpadded_shape == (48, 48)
    assert lay.num_tokens == 576 + 48 * 49 == 2928
    # 1000x300 on a 1008x336 canvas: feature map 24x72, content rows int(300*72/1000)=21 -> pad 1 each side
    lay = im.anyres_token_layout((1000, 300), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.unpad_box == (1, 23, 0, 72) and lay.num_tokens == 576 + 22 * 73
    # 300x1000 (tall) on 336x1008: the crop is along the columns
    lay = im.anyres_token_layout((300, 1000), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.grid == (3, 1) and lay.unpad_box == (0, 72, 1, 23)
    # OneVision 2000x2000: 6x6 grid -> 162x162 map, ratio 6/3 = 2 > 1.1 -> 81x81
    lay = im.anyres_token_layout((2000, 2000), im.ONEVISION_PINPOINTS, 384, 14, max_tiles=9)
    assert lay.grid == (6, 6) and lay.unpadded_shape == (162, 162) and lay.reduced_shape == (81, 81)
    assert lay.num_tokens == 729 + 81 * 82
    assert not im.anyres_token_layout((672, 672), im.LLAVA_NEXT_PINPOINTS, 336, 14, newline=False).newline
    assert im.video_frame_shape(27) == (14, 14) and im.video_token_count(8) == 8 * 196 + 1
    assert im.multi_image_token_count() == 730


def test_unpad_rounds_like_transformers():
    # 110 * 24 / 176 = 14.999999999999998 in floats: 15 content rows (a bare int() would say 14)
    assert im.unpad_box((176, 110), (48, 24)) == (16, 32, 0, 24)


def test_pinpoint_order_only_changes_ties():
    small = im.anyres_token_layout((200, 150), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    small_hf = im.anyres_token_layout((200, 150), im.LLAVA_NEXT_PINPOINTS_HF, 336, 14)
    assert small.grid == (2, 1) and small_hf.grid == (1, 2)
    big = im.anyres_token_layout((1500, 700), im.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert big == im.anyres_token_layout((1500, 700), im.LLAVA_NEXT_PINPOINTS_HF, 336, 14)


# ----------------------------------------------------------------------------------------------- parity

SIDES = range(100, 2001, 7)  # 272 x 272 sizes
# sizes behind known processor/model mismatches in peers (off-by-one sides, x.9999999 unpad rounding)
PITFALLS = [(768, 767), (767, 768), (176, 110), (294, 147), (309, 103), (336, 337), (337, 336), (1, 1000)]


def _hf_layout_fns(family: str):
    from transformers.image_processing_utils import select_best_resolution

    if family == "llava_next":
        from transformers.models.llava_next import modeling_llava_next as mod
        from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor as Proc

        pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # read by HF as (h, w)
        proc = object.__new__(Proc)
        proc.patch_size, proc.num_additional_image_tokens = 14, 1
        extra = 1  # vision_feature_select_strategy="default" drops the CLS token's slot
    else:
        from transformers.models.llava_onevision import modeling_llava_onevision as mod
        from transformers.models.llava_onevision.processing_llava_onevision import (
            LlavaOnevisionProcessor as Proc,
        )

        pins = [[i * 384, j * 384] for i in range(1, 7) for j in range(1, 7)]
        proc = object.__new__(Proc)
        proc.num_image_tokens, proc.vision_aspect_ratio = 729, "anyres_max_9"
        extra = 0
    proc.image_processor = types.SimpleNamespace(image_grid_pinpoints=pins)
    return select_best_resolution, mod, proc, pins, extra


@pytest.mark.parity
@pytest.mark.parametrize("family", ["llava_next", "onevision"])
def test_layout_matches_transformers_on_every_size(family):
    pytest.importorskip("transformers")
    select_best_resolution, mod, proc, hf_pins, extra = _hf_layout_fns(family)
    tile = 336 if family == "llava_next" else 384
    pins = [(w, h) for h, w in hf_pins]  # HF reads pinpoints as (h, w); ours are (w, h)
    max_tiles = None if family == "llava_next" else 9
    n = tile // 14
    zero = np.zeros((1, 1, 1), np.uint8)
    bad = []
    sizes = [(w, h) for w in SIDES for h in SIDES] + PITFALLS
    for k, (width, height) in enumerate(sizes):
        lay = im.anyres_token_layout((width, height), pins, tile, 14, max_tiles=max_tiles)
        best_h, best_w = select_best_resolution((height, width), hf_pins)
        gh, gw = best_h // tile, best_w // tile
        unpadded = mod.unpad_image(np.broadcast_to(zero, (1, gh * n, gw * n)), (height, width)).shape[1:]
        want = (
            (best_w, best_h),
            (gh, gw),
            1 + gh * gw,
            tuple(unpadded),
            proc._get_number_of_features(height, width, tile, tile) - extra,
        )
        if k % 4 == 0:  # model-side wrappers of select_best_resolution: a quarter of sizes
            want_grid = tuple(mod.get_anyres_image_grid_shape((height, width), hf_pins, tile))
            want_tiles = mod.image_size_to_num_patches((height, width), hf_pins, tile)
            want = (want[0], want_grid, want_tiles, *want[3:])
        got = (lay.best_resolution, lay.grid, lay.num_tiles, lay.unpadded_shape, lay.num_tokens)
        if got != want:
            bad.append(((width, height), got, want))
    assert len(sizes) == 272 * 272 + len(PITFALLS)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


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
    got = im.normalize(im.anyres_tiles(img, im.LLAVA_NEXT_PINPOINTS_HF, 336)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    ov = LlavaOnevisionImageProcessorPil(image_mean=im.SIGLIP_MEAN, image_std=im.SIGLIP_STD)
    want = ov(images=img, return_tensors="np")["pixel_values"][0]
    tiles = im.anyres_tiles(img, im.ONEVISION_PINPOINTS, 384)
    np.testing.assert_allclose(im.normalize(tiles, im.SIGLIP_MEAN, im.SIGLIP_STD).transpose(0, 3, 1, 2), want,
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
