"""HF CLIP / SigLIP vision tower import: config reading, key mapping round trips, prefixes, errors, and parity
with transformers' CLIPVisionModel / CLIPModel / SiglipVisionModel on every hidden state."""

import json
import re

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from mmjax.convert.hf_clip import (
    check_vit_matches_hf_config,
    clip_vit_config_from_hf,
    convert_hf_vision_tensors,
    detect_prefix,
    export_hf_vision_tensors,
    hf_image_size,
    load_hf_vision_tower,
    param_shapes,
)
from mmjax.convert.safetensors_io import save_safetensors
from mmjax.models.vit import ViT, clip_vit_l14

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28,
             patch_size=7)
CLIP_CFG = {"model_type": "clip_vision_model", **SMALL}
SIGLIP_CFG = {"model_type": "siglip_vision_model", **SMALL}
ATOL = 1e-4


def _random_params(model: ViT, seed: int = 0) -> dict:
    """Random values everywhere (norm scales != 1, biases != 0), so a swapped or mis-transposed tensor shows."""
    rng = np.random.default_rng(seed)
    flat = {p: (1.0 if p[-1] == "scale" else 0.0) + 0.3 * rng.standard_normal(s.shape)
            for p, s in param_shapes(model, 28).items()}
    return traverse_util.unflatten_dict({p: v.astype(np.float32) for p, v in flat.items()})


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _stack_blocks(params: dict, depth: int) -> dict:
    enc = params["encoder"]
    layers = jax.tree.map(lambda *xs: np.stack(xs), *[enc[f"block_{i}"] for i in range(depth)])
    return dict(params, encoder={"layers": layers})


def test_config_from_hf():
    clip = clip_vit_config_from_hf(CLIP_CFG)
    assert clip == dict(width=32, depth=2, mlp_dim=48, num_heads=4, patch_size=(7, 7), act="quick_gelu",
                        ln_eps=1e-5, patch_bias=False, cls_in_posemb=True, ln_pre=True, final_norm="pooled",
                        pool_type="tok", posemb="learned")
    assert clip_vit_config_from_hf({"model_type": "clip", "vision_config": CLIP_CFG}) == clip  # CLIPModel / LLaVA
    siglip = clip_vit_config_from_hf({**SIGLIP_CFG, "layer_norm_eps": 1e-5})
    assert siglip | dict(act="gelu_tanh", ln_eps=1e-5, patch_bias=True, cls_in_posemb=False, ln_pre=False,
                         final_norm="all", pool_type="none") == siglip
    # Fields left at HF's defaults may be absent from a Hub config: CLIPVisionConfig() is ViT-B/32 at 224.
    assert clip_vit_config_from_hf({"model_type": "clip_vision_model"})["patch_size"] == (32, 32)
    assert hf_image_size({"vision_config": {**CLIP_CFG, "image_size": [336, 336]}}) == (336, 336)
    ViT(**clip)  # every key is a ViT field
    with pytest.raises(ValueError, match="hidden_act 'relu2'"):
        clip_vit_config_from_hf({**CLIP_CFG, "hidden_act": "relu2"})
    with pytest.raises(ValueError, match="siglip2_vision_model"):
        clip_vit_config_from_hf({"model_type": "siglip2_vision_model"})
    check_vit_matches_hf_config(ViT(**clip), CLIP_CFG)
    l14_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, patch_size=14, image_size=336)  # LLaVA-1.5's tower
    check_vit_matches_hf_config(clip_vit_l14(336), {"vision_config": l14_336})
    with pytest.raises(ValueError, match="act: model has 'gelu'"):
        check_vit_matches_hf_config(ViT(**(clip | dict(act="gelu"))), CLIP_CFG)


@pytest.mark.parametrize("config", [CLIP_CFG, SIGLIP_CFG], ids=["clip", "siglip"])
def test_round_trip_unrolled_and_scanned(config):
    model = ViT(**clip_vit_config_from_hf(config))
    params = _random_params(model)
    tensors = export_hf_vision_tensors(params)
    assert len(tensors) == (39 if config is CLIP_CFG else 37)  # the HF state dict sizes (without SigLIP's head)
    back, report = convert_hf_vision_tensors(tensors, model)
    _assert_trees_equal(back, params)
    assert report.prefix == "" and not report.skipped and set(report.consumed) == set(tensors)
    scanned, _ = convert_hf_vision_tensors(tensors, model.clone(scan=True))
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}  # many released towers are bf16
    from_bf16, _ = convert_hf_vision_tensors(bf16, model)
    rounded = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    _assert_trees_equal(from_bf16, rounded)
    assert from_bf16["embedding"]["kernel"].dtype == np.float32
    _assert_trees_equal(scanned, _stack_blocks(params, 2))
    assert export_hf_vision_tensors(scanned).keys() == tensors.keys()


def test_prefixes_and_report():
    model = ViT(**clip_vit_config_from_hf(CLIP_CFG))
    params = _random_params(model)
    tower = export_hf_vision_tensors(params)
    extras = {"text_model.final_layer_norm.weight": np.ones(8), "text_projection.weight": np.ones((4, 8)),
              "visual_projection.weight": np.ones((4, 32)), "logit_scale": np.ones(())}
    full = {**export_hf_vision_tensors(params, "vision_model."), **extras}
    back, report = convert_hf_vision_tensors(full, model)
    _assert_trees_equal(back, params)
    assert report.prefix == "vision_model."
    skipped = {k for keys in report.skipped.values() for k in keys}
    assert skipped == set(extras)
    assert any("text tower" in reason for reason in report.skipped)
    with pytest.raises(ValueError, match=re.escape("not consumed:\n    foo.bar")):
        convert_hf_vision_tensors({**full, "foo.bar": np.ones(1)}, model)

    nested = "model.vision_tower.vision_model."  # LLaVA (transformers v5 layout)
    llava = {**export_hf_vision_tensors(params, nested), "model.language_model.embed_tokens.weight": np.ones((5, 8)),
             "model.multi_modal_projector.linear_1.weight": np.ones((8, 32)), "lm_head.weight": np.ones((5, 8))}
    back, report = convert_hf_vision_tensors(llava, model)
    _assert_trees_equal(back, params)
    assert report.prefix == nested and len(report.consumed) == len(tower)
    assert sum(len(k) for k in report.skipped.values()) == 3
    with pytest.raises(ValueError, match=re.escape("model.multi_modal_projector.linear_1.weight")):
        convert_hf_vision_tensors(llava, model, allow_outside_keys=False)
    back, _ = convert_hf_vision_tensors(llava, model, prefix=nested)
    _assert_trees_equal(back, params)
    with pytest.raises(ValueError, match="2 candidate prefixes"):
        detect_prefix({**tower, **llava})


def test_errors_name_the_key(tmp_path):
    model = ViT(**clip_vit_config_from_hf(CLIP_CFG))
    tensors = export_hf_vision_tensors(_random_params(model), "vision_model.")
    missing = dict(tensors)
    del missing["vision_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match=re.escape("missing:\n    vision_model.encoder.layers.1.mlp.fc2.bias")):
        convert_hf_vision_tensors(missing, model)
    bad = dict(tensors, **{"vision_model.encoder.layers.0.self_attn.q_proj.weight": np.zeros((32, 16))})
    with pytest.raises(ValueError, match=r"q_proj.weight: expected \(32, 32\), found \(32, 16\)"):
        convert_hf_vision_tensors(bad, model)
    with pytest.raises(ValueError, match=re.escape("position_embedding.weight: expected")):  # wrong image size
        convert_hf_vision_tensors(tensors, model, image_size=42)
    with pytest.raises(ValueError, match=r"(?s)no HF CLIP/SigLIP counterpart.*head/kernel"):
        convert_hf_vision_tensors(tensors, model.clone(num_classes=3))
    with pytest.raises(ValueError, match=re.escape("consumed:\n    vision_model.encoder.layers.1.layer_norm1.bias")):
        convert_hf_vision_tensors(tensors, model.clone(depth=1))  # a shallower model needs truncate=True
    short, report = convert_hf_vision_tensors(tensors, model.clone(depth=1), truncate=True)
    assert set(short["encoder"]) == {"block_0"} and len(next(iter(report.skipped.values()))) == 16

    save_safetensors(tensors, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": CLIP_CFG}))
    loaded = load_hf_vision_tower(tmp_path, scan=True)
    assert loaded.model.scan and loaded.params["encoder"]["layers"]["ln1"]["scale"].shape == (2, 32)
    with pytest.raises(ValueError, match="ln_eps: model has 1e-06"):
        load_hf_vision_tower(tmp_path, model.clone(ln_eps=1e-6))


# ----------------------------------------------------------------------------------------------- parity with HF
def _torch_setup():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    return torch


def _perturb(torch, module, seed: int = 0) -> None:
    """HF inits LayerNorms to (1, 0) and zero biases; random offsets make every tensor's mapping matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 28, 28, 3)).astype(np.float32)


def _compare_hidden_states(ref, extras) -> float:
    """Max abs diff over every layer: HF hidden_states[0] is the encoder input, [i] the output of layer i."""
    ours = np.asarray(extras["hidden_states"])
    assert ours.shape[0] == len(ref.hidden_states)
    return max(float(np.abs(ours[i] - h.numpy()).max()) for i, h in enumerate(ref.hidden_states))


@pytest.mark.parity
@pytest.mark.parametrize("layout", ["standalone-unrolled", "clipmodel-scanned"])
def test_clip_parity(tmp_path, layout):
    torch = _torch_setup()
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    if layout == "standalone-unrolled":
        hf = CLIPVisionModel(CLIPVisionConfig(**SMALL)).eval()
        tower = hf
    else:
        text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        hf = CLIPModel(CLIPConfig(text_config=text, vision_config=SMALL, projection_dim=16)).eval()
        tower = hf.vision_model
    _perturb(torch, hf)
    hf.save_pretrained(tmp_path)
    model, params, report = load_hf_vision_tower(tmp_path, scan=layout.endswith("scanned"))
    images = _images()
    with torch.no_grad():
        ref = tower(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
    pooled, extras = model.apply({"params": params}, images)
    hidden_diff = _compare_hidden_states(ref, extras)
    pooled_diff = float(np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max())
    print(f"CLIP {layout}: hidden states max|diff| {hidden_diff:.2e}, pooled {pooled_diff:.2e}")
    assert hidden_diff <= ATOL and pooled_diff <= ATOL
    if layout == "clipmodel-scanned":
        assert report.prefix == "vision_model."
        skipped = {k for keys in report.skipped.values() for k in keys}
        assert {"visual_projection.weight", "logit_scale", "text_projection.weight"} <= skipped
        assert "text_model.final_layer_norm.weight" in skipped


@pytest.mark.parity
def test_siglip_parity(tmp_path):
    torch = _torch_setup()
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(**SMALL)).eval()  # with the attention-pooling head
    _perturb(torch, hf)
    hf.save_pretrained(tmp_path)
    model, params, report = load_hf_vision_tower(tmp_path / "model.safetensors")
    assert (model.pool_type, model.final_norm, model.act) == ("none", "all", "gelu_tanh")
    assert sum(len(keys) for reason, keys in report.skipped.items() if "head" in reason) == 11
    images = _images(1)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
    tokens, extras = model.apply({"params": params}, images)
    hidden_diff = _compare_hidden_states(ref, extras)
    last_diff = float(np.abs(np.asarray(tokens) - ref.last_hidden_state.numpy()).max())
    print(f"SigLIP: hidden states max|diff| {hidden_diff:.2e}, last_hidden_state {last_diff:.2e}")
    assert hidden_diff <= ATOL and last_diff <= ATOL


@pytest.mark.parity
def test_llava_checkpoint_tower_parity(tmp_path):
    """The tower nested in a real LlavaForConditionalGeneration save (transformers v5 writes `vision_tower.`,
    Hub llava-hf files `vision_tower.vision_model.`), loaded from the LLaVA config.json, truncated to the layer
    LLaVA reads (hidden_states[-2])."""
    torch = _torch_setup()
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2)
    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=CLIPVisionConfig(**SMALL), text_config=text,
                                                   image_token_index=96)).eval()
    _perturb(torch, hf)
    hf.save_pretrained(tmp_path)
    model, params, report = load_hf_vision_tower(tmp_path, depth=1, truncate=True)
    outside = {k for reason, keys in report.skipped.items() if "outside" in reason for k in keys}
    assert any(k.startswith("multi_modal_projector.") for k in outside) and len(report.consumed) == 23
    images = _images(2)
    with torch.no_grad():
        ref = hf.model.vision_tower(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                    output_hidden_states=True)
    _, extras = model.apply({"params": params}, images)
    diff = float(np.abs(np.asarray(extras["hidden_states"][-1]) - ref.hidden_states[-2].numpy()).max())
    print(f"LLaVA tower ({report.prefix!r}, truncated): hidden_states[-2] max|diff| {diff:.2e}")
    assert diff <= ATOL
