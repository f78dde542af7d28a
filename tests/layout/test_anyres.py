"""mmjax.layout.anyres: AnyRes geometry on worked examples, and against transformers on 74,000 image sizes."""

import types

import numpy as np
import pytest

from mmjax.layout import anyres


def test_grid_pinpoints():
    ov = anyres.ONEVISION_PINPOINTS
    assert len(ov) == 36 and ov[0] == (384, 384) and ov[1] == (384, 768) and ov[-1] == (2304, 2304)
    assert anyres.grid_pinpoints([[336, 672]], 336) == ((336, 672),)
    with pytest.raises(ValueError):
        anyres.grid_pinpoints("anyres", 384)


def test_token_layout_examples():
    lay = anyres.anyres_token_layout((672, 672), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.grid == (2, 2) and lay.feature_shape == (48, 48) and lay.unpadded_shape == (48, 48)
    assert lay.num_tokens == 576 + 48 * 49 == 2928
    # 1000x300 on a 1008x336 canvas: feature map 24x72, content rows int(300*72/1000)=21 -> pad 1 each side
    lay = anyres.anyres_token_layout((1000, 300), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.unpad_box == (1, 23, 0, 72) and lay.num_tokens == 576 + 22 * 73
    # 300x1000 (tall) on 336x1008: the crop is along the columns
    lay = anyres.anyres_token_layout((300, 1000), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert lay.grid == (3, 1) and lay.unpad_box == (0, 72, 1, 23)
    # OneVision 2000x2000: 6x6 grid -> 162x162 map, ratio 6/3 = 2 > 1.1 -> 81x81
    lay = anyres.anyres_token_layout((2000, 2000), anyres.ONEVISION_PINPOINTS, 384, 14, max_tiles=9)
    assert lay.grid == (6, 6) and lay.unpadded_shape == (162, 162) and lay.reduced_shape == (81, 81)
    assert lay.num_tokens == 729 + 81 * 82
    assert not anyres.anyres_token_layout((672, 672), anyres.LLAVA_NEXT_PINPOINTS, 336, 14, newline=False).newline
    assert anyres.video_frame_shape(27) == (14, 14) and anyres.video_token_count(8) == 8 * 196 + 1
    assert anyres.multi_image_token_count() == 730


def test_unpad_rounds_like_transformers():
    # 110 * 24 / 176 = 14.999999999999998 in floats: 15 content rows (a bare int() would say 14)
    assert anyres.unpad_box((176, 110), (48, 24)) == (16, 32, 0, 24)


def test_pinpoint_order_only_changes_ties():
    small = anyres.anyres_token_layout((200, 150), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    small_hf = anyres.anyres_token_layout((200, 150), anyres.LLAVA_NEXT_PINPOINTS_HF, 336, 14)
    assert small.grid == (2, 1) and small_hf.grid == (1, 2)
    big = anyres.anyres_token_layout((1500, 700), anyres.LLAVA_NEXT_PINPOINTS, 336, 14)
    assert big == anyres.anyres_token_layout((1500, 700), anyres.LLAVA_NEXT_PINPOINTS_HF, 336, 14)


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
        lay = anyres.anyres_token_layout((width, height), pins, tile, 14, max_tiles=max_tiles)
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
