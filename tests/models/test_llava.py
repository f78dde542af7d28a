"""LLaVA model: projector, feature layer, AnyRes / OneVision / video token maps, splicing under jit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.llava_data import ImageConfig
from mmjax.layout import anyres
from mmjax.layout.token_maps import anyres_map, base_map, bilinear_taps, place_maps, video_map
from mmjax.models.llava import Llava, LlavaConfig
from mmjax.models.llava_packing import splice
from mmjax.models.lm import LM
from mmjax.models.projector import Projector, projector_depth
from mmjax.models.vit import ViT

TINY = dict(lm=dict(preset="tiny-llama"), vision=dict(preset="clip", width=32, depth=3, mlp_dim=64, num_heads=4,
                                                      patch_size=7), image_token_id=127)


def test_projector_names_and_depth():
    assert projector_depth("linear") == 1 and projector_depth("mlp2x_gelu") == 2 and projector_depth("mlp3x_gelu") == 3
    with pytest.raises(ValueError, match="unknown projector"):
        projector_depth("mlp_relu")
    params = Projector("mlp3x_gelu", 16).init(jax.random.key(0), jnp.ones((1, 8)))["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert sorted(shapes) == ["linear_1", "linear_2", "linear_3"]
    assert nn_unbox(shapes)["linear_1"]["kernel"] == (8, 16) and nn_unbox(shapes)["linear_3"]["kernel"] == (16, 16)
    x = jnp.linspace(-1, 1, 8)[None]
    p = nn_unbox(Projector("linear", 4).init(jax.random.key(1), x)["params"])
    np.testing.assert_allclose(Projector("linear", 4).apply({"params": p}, x),
                               x @ p["linear_1"]["kernel"] + p["linear_1"]["bias"], rtol=1e-6)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def test_feature_layer_runs_only_the_blocks_it_needs():
    """feature_layer -2 of a 3-block tower = output of block 2: the truncated tower equals the full one's
    hidden_states[-2] with the same weights."""
    cfg = LlavaConfig.from_dict(TINY)
    assert cfg.tower_depth == 2 and cfg.tower().dims()["depth"] == 2
    full = ViT(**(cfg.vision_dict | dict(final_norm="none")))
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 3))
    full_params = jax.jit(full.init)(jax.random.key(1), x)["params"]
    _, extras = jax.jit(full.apply)({"params": full_params}, x)
    sub = {k: v for k, v in full_params.items() if k != "encoder"}
    sub["encoder"] = {k: v for k, v in full_params["encoder"].items() if k != "block_2"}
    _, mine = jax.jit(cfg.tower().apply)({"params": sub}, x)
    np.testing.assert_allclose(mine["encoded"], extras["hidden_states"][-2], atol=1e-6)
    with pytest.raises(ValueError, match="feature_layer"):
        LlavaConfig.from_dict({**TINY, "feature_layer": -4})


def _reference_pack(feats: np.ndarray, layout, newline: np.ndarray) -> np.ndarray:
    """The reference algorithm written out directly: stitch, unpad, (resize), newline per row, base first."""
    n, (gh, gw) = layout.patches_per_side, layout.grid
    d = feats.shape[-1]
    grid = feats[1:1 + gh * gw].reshape(gh, gw, n, n, d).transpose(0, 2, 1, 3, 4).reshape(gh * n, gw * n, d)
    top, bottom, left, right = layout.unpad_box
    grid = grid[top:bottom, left:right]
    h, w = layout.reduced_shape
    if (h, w) != grid.shape[:2]:
        scale = jnp.array([h / grid.shape[0], w / grid.shape[1]])
        grid = np.asarray(jax.image.scale_and_translate(grid, (h, w, d), (0, 1), scale, jnp.zeros(2), "linear",
                                                        antialias=False))
    rows = np.concatenate([grid, np.broadcast_to(newline, (h, 1, d))], axis=1).reshape(-1, d)
    return np.concatenate([feats[0], rows])


def _pack_with_model(feats: np.ndarray, tmap, newline: np.ndarray) -> np.ndarray:
    """The model's path: place the map in a sequence and splice (all positions are image tokens)."""
    t, p, d = feats.shape
    index, weight = place_maps(tmap.num_tokens, [(0, 0, tmap)], tiles_per_slot=t, patches_per_tile=p,
                               max_images=1, taps=4)
    out = splice(jnp.zeros((1, tmap.num_tokens, d)), jnp.asarray(feats.reshape(1, t * p, d)), jnp.asarray(newline),
                 jnp.ones((1, tmap.num_tokens), bool), jnp.asarray(index[None]), jnp.asarray(weight[None]))
    return np.asarray(out[0])


@pytest.mark.parametrize("size", [(672, 672), (768, 767), (1500, 700), (333, 1000)])
@pytest.mark.parametrize("onevision", [False, True])
def test_anyres_maps_equal_the_reference_algorithm_and_the_layout_count(size, onevision):
    tile, pins = (384, anyres.ONEVISION_PINPOINTS) if onevision else (336, anyres.LLAVA_NEXT_PINPOINTS_HF)
    layout = anyres.anyres_token_layout(size, pins, tile, 14, max_tiles=9 if onevision else None)
    tmap = anyres_map(layout)
    assert tmap.num_tokens == layout.num_tokens and tmap.num_tiles == layout.num_tiles
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(layout.num_tiles, layout.patches_per_side ** 2, 4)).astype(np.float32)
    newline = rng.normal(size=4).astype(np.float32)
    np.testing.assert_allclose(_pack_with_model(feats, tmap, newline), _reference_pack(feats, layout, newline),
                               atol=1e-5)
    if size == (672, 672) and not onevision:
        assert tmap.num_tokens == 2928


def test_video_and_multi_image_maps():
    assert video_map(8, 27).num_tokens == anyres.video_token_count(8) == 8 * 196 + 1
    assert base_map(27, newline=True).num_tokens == anyres.multi_image_token_count() == 730
    i0, i1, w0, w1 = bilinear_taps(27, 14)  # torch: src = (dst + 0.5) * 27 / 14 - 0.5, clamped at 0
    src = np.maximum((np.arange(14) + 0.5) * 27 / 14 - 0.5, 0)
    np.testing.assert_allclose(i0 * w0 + i1 * w1, src, atol=1e-5)
    np.testing.assert_allclose(w0 + w1, 1.0)


def _pack_numpy(feats: np.ndarray, tmap, newline: np.ndarray) -> np.ndarray:
    """A token map applied in numpy (the same arithmetic as `splice`, without compiling per shape)."""
    buffer = np.concatenate([feats.reshape(-1, feats.shape[-1]), newline[None]])
    index = np.where(tmap.index == -1, len(buffer) - 1, tmap.index)
    return np.einsum("tk,tkd->td", tmap.weight, buffer[index])


def _tiny_batch(cfg: LlavaConfig, image_cfg: ImageConfig, sizes, length=260):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (len(sizes), 1, image_cfg.tiles, 28, 28, 3), dtype=np.uint8)
    ids = rng.integers(1, 100, (len(sizes), length)).astype(np.int32)
    maps = []
    for row, (w, h) in enumerate(sizes):
        tmap = anyres_map(image_cfg.layout(w, h))
        ids[row, 3:3 + tmap.num_tokens] = cfg.image_token_id
        maps.append(place_maps(length, [(3, 0, tmap)], tiles_per_slot=image_cfg.tiles, patches_per_tile=16,
                               max_images=1, taps=image_cfg.taps))
    return ids, pixels, np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps])


def test_one_compiled_program_serves_every_image_layout():
    """Layouts differ per image (grid, unpad crop, reduction) but live in the map arrays, not in shapes."""
    cfg = LlavaConfig.from_dict({**TINY, "image_newline": True})
    pins = tuple((28 * i, 28 * j) for i in range(1, 4) for j in range(1, 4))
    image_cfg = ImageConfig(mode="anyres", size=28, patch_size=7, pinpoints=pins, anyres_max=2, newline=True, taps=4)
    model = Llava(cfg)
    ids, pixels, index, weight = _tiny_batch(cfg, image_cfg, [(60, 40), (30, 90)])
    params = jax.jit(model.init)(jax.random.key(0), ids, pixels, image_index=index, image_weight=weight)["params"]
    run = jax.jit(lambda p, *a: model.apply({"params": p}, *a[:2], image_index=a[2], image_weight=a[3]))
    first = run(params, ids, pixels, index, weight)
    other = _tiny_batch(cfg, image_cfg, [(100, 100), (20, 25)])
    second = run(params, *other)
    assert run._cache_size() == 1
    assert first.shape == second.shape and np.all(np.isfinite(second))


def test_text_only_rows_are_the_plain_lm_and_images_only_touch_their_positions():
    cfg = LlavaConfig.from_dict(TINY)
    model = Llava(cfg)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 100, (2, 24)), jnp.int32)
    pixels = jnp.zeros((2, 1, 1, 28, 28, 3), jnp.uint8)
    params = jax.jit(model.init)(jax.random.key(0), ids, pixels)["params"]
    apply = jax.jit(lambda i, x: model.apply({"params": params}, i, x))
    lm_logits = jax.jit(lambda i: LM(cfg.lm).apply({"params": params["lm"]}, i))(ids)
    np.testing.assert_allclose(apply(ids, pixels), lm_logits, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda i: model.apply({"params": params}, i))(ids), lm_logits, atol=1e-5)
    with_image = ids.at[0, 2:18].set(cfg.image_token_id)
    out = apply(with_image, pixels)
    np.testing.assert_allclose(out[1], lm_logits[1], atol=1e-5)  # the other row is untouched
    np.testing.assert_allclose(out[0, :2], lm_logits[0, :2], atol=1e-5)  # causal: before the image unchanged
    assert not np.allclose(out[0, 18:], lm_logits[0, 18:], atol=1e-3)


def test_config_refuses_unknown_fields_and_cls_on_siglip():
    with pytest.raises(ValueError, match=r"unknown config\.model"):
        LlavaConfig.from_dict({**TINY, "projecter": "linear"})
    with pytest.raises(ValueError, match="class token"):
        LlavaConfig.from_dict({**TINY, "vision": {**TINY["vision"], "preset": "siglip"}})
    siglip = LlavaConfig.from_dict({**TINY, "vision": {**TINY["vision"], "preset": "siglip"}, "drop_cls": False})
    assert dataclasses.replace(siglip).vision_dict["pool_type"] == "none"


def _hf_pack(model, feats, size_wh, onevision):
    import torch

    w, h = size_wh
    args = ([torch.tensor(feats)], torch.tensor([[h, w]]))
    if onevision:
        out, _ = model.pack_image_features(*args, image_newline=model.image_newline)
    else:
        out, _ = model.pack_image_features(*args, "default", image_newline=model.image_newline)
    return out[0].detach().numpy()


@pytest.mark.parity
@pytest.mark.parametrize("onevision", [False, True])
def test_anyres_token_counts_and_values_equal_transformers_over_many_sizes(onevision):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextModel,
        LlavaOnevisionConfig,
        LlavaOnevisionModel,
        SiglipVisionConfig,
    )

    text = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2)
    if onevision:
        vision = SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=384, patch_size=14, vision_use_head=False)
        model = LlavaOnevisionModel(LlavaOnevisionConfig(vision_config=vision, text_config=text))
    else:
        vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=336, patch_size=14)
        model = LlavaNextModel(LlavaNextConfig(vision_config=vision, text_config=text))
    pins = tuple((w, h) for h, w in model.config.image_grid_pinpoints)  # HF stores (h, w)
    tile = vision.image_size
    rng = np.random.default_rng(0)
    sizes = [(768, 767), (767, 768), (672, 672), (1, 1000), (1000, 1), (4000, 3000)]
    sizes += [tuple(int(v) for v in rng.integers(16, 2500, 2)) for _ in range(14)]
    newline = model.image_newline.detach().numpy()
    for size in sizes:
        layout = anyres.anyres_token_layout(size, pins, tile, 14, max_tiles=9 if onevision else None)
        feats = rng.normal(size=(layout.num_tiles, layout.patches_per_side ** 2, 8)).astype(np.float32)
        want = _hf_pack(model, feats, size, onevision)
        assert anyres_map(layout).num_tokens == layout.num_tokens == len(want), size
        np.testing.assert_allclose(_pack_numpy(feats, anyres_map(layout), newline), want, atol=1e-5)
