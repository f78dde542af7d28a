"""HF LLaVA / LLaVA-NeXT / LLaVA-OneVision -> mmjax: logits parity on tiny random models, key accounting."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from mmjax.convert.hf_llava import _normalise, hf_to_params, llava_config_from_hf, load_hf_llava
from mmjax.data import images as im
from mmjax.data.llava_data import process_media
from mmjax.layout import anyres
from mmjax.layout.token_maps import place_maps, video_map
from mmjax.models.llava import Llava

TOL = 1e-4
IMG, VID = 95, 96  # image / video token ids of the tiny HF models


def _torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return torch


def _text_config(kind: str):
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)
    return LlamaConfig(**kw) if kind == "llama" else Qwen2Config(**kw, tie_word_embeddings=True)


def _clip(size=28):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=size, patch_size=7)


def _saved(model, tmp_path):
    model.eval().save_pretrained(tmp_path)
    return load_hf_llava(tmp_path)


@functools.cache
def _apply(cfg):
    model = Llava(cfg)
    return jax.jit(lambda p, ids, pix, idx, w, mask: model.apply({"params": p}, ids, pix, image_index=idx,
                                                                  image_weight=w, mask=mask))


def _rows(rng, spans_tokens, length):
    """Token rows: 4 text tokens, then per image its tokens and 3 text tokens; right-padded with 0."""
    ids, mask, starts = np.zeros((len(spans_tokens), length), np.int64), np.zeros((len(spans_tokens), length), bool), []
    for r, images in enumerate(spans_tokens):
        row, row_starts = list(rng.integers(1, 90, 4)), []
        for token, n in images:
            row_starts.append(len(row))
            row += [token] * n + list(rng.integers(1, 90, 3))
        ids[r, : len(row)], mask[r, : len(row)] = row, True
        starts.append(row_starts)
    return ids, mask, starts


def _compare(torch, hf_model, loaded, ids, mask, pixels, spans, hf_inputs, image_cfg, ours_ids=None):
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                       **hf_inputs).logits.numpy()
    maps = [place_maps(ids.shape[1], row, tiles_per_slot=image_cfg.tiles, patches_per_tile=image_cfg.side ** 2,
                       max_images=image_cfg.max_images, taps=image_cfg.taps) for row in spans]
    index, weight = np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps])
    ours_ids = ids if ours_ids is None else ours_ids
    out = _apply(loaded.config)(loaded.params, ours_ids, pixels, index, weight, mask)
    err = float(np.abs(np.asarray(out) - ref)[mask].max())
    print(f"max |logit difference| vs transformers: {err:.2e}")
    assert err <= TOL, err
    return err


@pytest.mark.parity
def test_llava_logits_match_transformers_multi_and_no_image(tmp_path):
    torch = _torch()
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=_clip(), text_config=_text_config("llama"),
                                                   image_token_index=IMG))
    loaded = _saved(hf, tmp_path)
    assert loaded.config.tower_depth == 2 and loaded.config.drop_cls
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    counts = [[(IMG, 16)], [(IMG, 16), (IMG, 16)], []]  # one image, two images, text only
    ids, mask, starts = _rows(rng, counts, 48)
    cfg = dataclasses.replace(loaded.image, max_images=2)
    pixels = np.zeros((3, 2, 1, 28, 28, 3), np.uint8)
    pixels[0, 0, 0], pixels[1, 0, 0], pixels[1, 1, 0] = images
    spans = [[(s, slot, process_media(images[0], cfg)[1]) for slot, s in enumerate(row)] for row in starts]
    hf_pixels = torch.tensor(im.normalize(images).transpose(0, 3, 1, 2))
    _compare(torch, hf, loaded, ids, mask, pixels, spans, {"pixel_values": hf_pixels}, cfg)
    # the plain (cumsum) packing needs no map and gives the same logits
    plain = jax.jit(lambda p: Llava(loaded.config).apply({"params": p}, ids, pixels, mask=mask))(loaded.params)
    maps = _apply(loaded.config)(loaded.params, ids, pixels, *_maps_for(ids, spans, cfg), mask)
    np.testing.assert_allclose(plain, maps, atol=1e-6)


def _maps_for(ids, spans, cfg):
    maps = [place_maps(ids.shape[1], row, tiles_per_slot=cfg.tiles, patches_per_tile=cfg.side ** 2,
                       max_images=cfg.max_images, taps=cfg.taps) for row in spans]
    return np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps])


# (w, h): wide, tall, square, very wide, small (below the tile size), the classic off-by-one size scaled down
NEXT_SIZES = [(40, 30), (30, 70), (60, 60), (100, 20), (20, 25), (64, 63)]


@pytest.mark.parity
def test_llava_next_anyres_logits_match_transformers(tmp_path):
    torch = _torch()
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    hf_pins = [[h, w] for w, h in anyres.LLAVA_NEXT_PINPOINTS_HF]  # the 336 pinpoints as HF stores them (h, w)
    hf_pins = [[h // 12, w // 12] for h, w in hf_pins]  # scaled to 28px tiles
    hf = LlavaNextForConditionalGeneration(LlavaNextConfig(
        vision_config=_clip(), text_config=_text_config("llama"), image_token_index=IMG,
        image_grid_pinpoints=hf_pins))
    loaded = _saved(hf, tmp_path)
    cfg = loaded.image
    assert cfg.pinpoints == tuple((w, h) for h, w in hf_pins) and cfg.tiles == 5
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in NEXT_SIZES]
    processed = [process_media(x, cfg) for x in images]
    for (w, h), (tiles, tmap) in zip(NEXT_SIZES, processed):
        assert tmap.num_tokens == cfg.layout(w, h).num_tokens and len(tiles) == cfg.layout(w, h).num_tiles
    ids, mask, starts = _rows(rng, [[(IMG, m.num_tokens)] for _, m in processed], 200)
    pixels = np.zeros((len(images), 1, cfg.tiles, 28, 28, 3), np.uint8)
    hf_pixels = np.zeros((len(images), cfg.tiles, 3, 28, 28), np.float32)
    for i, (tiles, _) in enumerate(processed):
        pixels[i, 0, : len(tiles)] = tiles
        hf_pixels[i, : len(tiles)] = im.normalize(tiles).transpose(0, 3, 1, 2)
    spans = [[(row[0], 0, m)] for row, (_, m) in zip(starts, processed)]
    hf_inputs = {"pixel_values": torch.tensor(hf_pixels),
                 "image_sizes": torch.tensor([[h, w] for w, h in NEXT_SIZES])}
    _compare(torch, hf, loaded, ids, mask, pixels, spans, hf_inputs, cfg)


def _onevision(tmp_path):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=40, patch_size=7, vision_use_head=False)  # 5x5: like 384/14
    pins = [[40 * i, 40 * j] for i in range(1, 7) for j in range(1, 7)]
    hf = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(
        vision_config=vision, text_config=_text_config("qwen2"), image_token_index=IMG, video_token_index=VID,
        image_grid_pinpoints=pins))
    return hf, _saved(hf, tmp_path)


# a 4x4-tile image (anyres_max_9 reduces its 20x20 map to 15x15), a wide one, a tall one, a small one
OV_SIZES = [(160, 160), (170, 70), (55, 135), (30, 20)]


@pytest.mark.parity
def test_onevision_anyres_max_and_multi_image_match_transformers(tmp_path):
    torch = _torch()
    hf, loaded = _onevision(tmp_path)
    assert not loaded.config.drop_cls and loaded.image.anyres_max == 9 and loaded.image.taps == 4
    assert loaded.config.lm.tie_embeddings
    rng = np.random.default_rng(2)
    cfg = dataclasses.replace(loaded.image, max_images=2, max_tiles=17)
    assert cfg.layout(160, 160).reduced_shape == (15, 15)
    singles = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in OV_SIZES]
    pair = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (70, 35, 3), dtype=np.uint8)]
    per_row = [[process_media(x, cfg)] for x in singles] + [[process_media(x, cfg, alone=False) for x in pair]]
    ids, mask, starts = _rows(rng, [[(IMG, m.num_tokens) for _, m in row] for row in per_row], 320)
    b = len(per_row)
    pixels = np.zeros((b, 2, cfg.tiles, 40, 40, 3), np.uint8)
    hf_images, sizes = [], []
    for r, row in enumerate(per_row):
        for slot, (tiles, _) in enumerate(row):
            pixels[r, slot, : len(tiles)] = tiles
            padded = np.zeros((cfg.tiles, 3, 40, 40), np.float32)
            padded[: len(tiles)] = im.normalize(tiles, anyres.SIGLIP_MEAN, anyres.SIGLIP_STD).transpose(0, 3, 1, 2)
            hf_images.append(padded)
    sizes = [[h, w] for w, h in OV_SIZES] + [[40, 60], [70, 35]]
    spans = [[(s, slot, m) for slot, (s, (_, m)) in enumerate(zip(st, row))] for st, row in zip(starts, per_row)]
    hf_inputs = {"pixel_values": torch.tensor(np.stack(hf_images)), "image_sizes": torch.tensor(sizes),
                 "batch_num_images": torch.tensor([1, 1, 1, 1, 2])}
    _compare(torch, hf, loaded, ids, mask, pixels, spans, hf_inputs, cfg)


@pytest.mark.parity
def test_onevision_video_pooling_matches_transformers(tmp_path):
    torch = _torch()
    hf, loaded = _onevision(tmp_path)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 3, 40, 40, 3), dtype=np.uint8)  # 2 videos of 3 frames
    vmap = video_map(3, 5)
    assert vmap.num_tokens == anyres.video_token_count(3, 5) == 3 * 9 + 1
    cfg = dataclasses.replace(loaded.image, max_tiles=3)
    ids, mask, starts = _rows(rng, [[(VID, vmap.num_tokens)]] * 2, 48)
    pixels = frames[:, None]
    spans = [[(row[0], 0, vmap)] for row in starts]
    hf_pixels = im.normalize(frames, anyres.SIGLIP_MEAN, anyres.SIGLIP_STD).transpose(0, 1, 4, 2, 3)
    ours_ids = np.where(ids == VID, IMG, ids)  # mmjax marks every image/video position with one id
    _compare(torch, hf, loaded, ids, mask, pixels, spans, {"pixel_values_videos": torch.tensor(hf_pixels)}, cfg,
             ours_ids=ours_ids)


def test_key_spellings_normalise_to_the_same_parts():
    assert _normalise("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == (
        "vision", "encoder.layers.0.mlp.fc1.weight")
    assert _normalise("model.vision_tower.embeddings.class_embedding") == ("vision", "embeddings.class_embedding")
    assert _normalise("language_model.model.norm.weight") == ("lm", "model.norm.weight")
    assert _normalise("model.language_model.layers.1.mlp.up_proj.weight") == ("lm", "model.layers.1.mlp.up_proj.weight")
    assert _normalise("language_model.lm_head.weight") == ("lm", "lm_head.weight")
    assert _normalise("lm_head.weight") == ("lm", "lm_head.weight")
    assert _normalise("model.image_newline") == ("newline", "image_newline")
    assert _normalise("something.else") is None


@pytest.mark.parity
def test_every_key_is_accounted_for(tmp_path):
    _torch()
    from safetensors.numpy import load_file
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration(LlavaNextConfig(vision_config=_clip(), text_config=_text_config("llama"),
                                                           image_token_index=IMG))
    hf.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    cfg, image = llava_config_from_hf(tmp_path)
    params, skipped = hf_to_params(tensors, cfg, image_size=image.size)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_skipped = sum(tensors[k].size for keys in skipped.values() for k in keys)
    assert n_params + n_skipped == sum(x.size for x in tensors.values())
    assert any("post_layernorm" in r for r in skipped) and any("beyond" in r for r in skipped)
    with pytest.raises(ValueError, match="not consumed"):
        hf_to_params({**tensors, "multi_modal_projector.linear_3.bias": np.zeros(64, np.float32)}, cfg,
                     image_size=image.size)
    broken = dict(tensors)
    broken.pop("image_newline")
    with pytest.raises(ValueError, match="image_newline"):
        hf_to_params(broken, cfg, image_size=image.size)
