"""`llava_ov_step`: one LLaVA-OneVision-0.5B training step with transformers' LlavaOnevisionForConditionalGeneration:
SigLIP-so400m/14-384 tower (frozen), 2-layer GELU projector and Qwen2-0.5B trained, bf16 autocast over fp32 master
weights, AdamW. One anyres_max_9 image per sample, its tiles laid out as the HF processor gives them; each
sequence is exactly `seq_len` tokens holding exactly as many image tokens as the model makes features.
"""

from __future__ import annotations

from typing import Any

import common
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

DEFAULT_SPEC: dict[str, Any] = {
    "batch": 4, "seq_len": 4000, "image_size": [768, 768], "lr": 1e-5, "vision_frozen": True,  # image: [h, w]
    # Qwen2-0.5B
    "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "mlp": 4864, "vocab": 151936, "rope_theta": 1e6,
    "image_token_id": 151646, "video_token_id": 151647,
    # SigLIP-so400m/14-384 as HF's llava-onevision-qwen2-0.5b-ov config has it: 26 layers (the 27th dropped),
    # features of the last one (vision_feature_layer -1), no pooling head
    "vision_hidden": 1152, "vision_layers": 26, "vision_heads": 16, "vision_mlp": 4304, "patch": 14, "tile": 384,
    "max_grid": 6,  # image_grid_pinpoints: every (a x b) grid of tiles, 1 <= a, b <= max_grid
    "prompt_tokens": 14,  # text before the image (system + user turn header), unsupervised
}


def build_model(spec: dict[str, Any], device: torch.device) -> LlavaOnevisionForConditionalGeneration:
    vision = SiglipVisionConfig(
        hidden_size=spec["vision_hidden"], num_hidden_layers=spec["vision_layers"],
        num_attention_heads=spec["vision_heads"], intermediate_size=spec["vision_mlp"], patch_size=spec["patch"],
        image_size=spec["tile"], vision_use_head=False)
    text = Qwen2Config(
        hidden_size=spec["hidden"], num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"], intermediate_size=spec["mlp"], vocab_size=spec["vocab"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]}, tie_word_embeddings=True,
        max_position_embeddings=32768)
    pinpoints = [[spec["tile"] * a, spec["tile"] * b] for a in range(1, spec["max_grid"] + 1)
                 for b in range(1, spec["max_grid"] + 1)]
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=spec["image_token_id"],
        video_token_index=spec["video_token_id"], projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=pinpoints,
        tie_word_embeddings=True, attn_implementation=spec["attention"])
    with torch.device(device):
        return LlavaOnevisionForConditionalGeneration(config)


def image_tokens(model: LlavaOnevisionForConditionalGeneration, pixel_values: torch.Tensor,
                 image_sizes: torch.Tensor) -> list[int]:
    """Image tokens per sample as the model itself counts them: its own get_image_features (tiles -> projector ->
    unpad -> anyres_max_9 interpolation -> newlines), run once before timing."""
    with torch.no_grad(), common.autocast(pixel_values.device):
        features = model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes).pooler_output
    return [int(f.shape[0]) for f in features]


def make_batch(spec: dict[str, Any], counts: list[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of `seq_len` tokens: prompt, the image tokens, then the supervised text."""
    length, prompt = spec["seq_len"], spec["prompt_tokens"]
    text_high = min(spec["image_token_id"], spec["video_token_id"])  # text ids below the image/video ids
    rows, labels = [], []
    for count in counts:
        answer = length - prompt - count
        if answer < 2:
            raise ValueError(f"seq_len {length} leaves {answer} text tokens after {prompt} prompt and {count} image "
                             "tokens; at least 2 are needed for a next-token loss")
        row = torch.cat([torch.randint(0, text_high, (prompt,), generator=gen),
                         torch.full((count,), spec["image_token_id"]),
                         torch.randint(0, text_high, (answer,), generator=gen)])
        rows.append(row)
        labels.append(torch.cat([torch.full((prompt + count,), common.IGNORE), row[prompt + count:]]))
    return torch.stack(rows), torch.stack(labels)


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    batch, (height, width) = spec["batch"], spec["image_size"]
    model = build_model(spec, bench.device).train()
    if spec["vision_frozen"]:
        model.model.vision_tower.requires_grad_(False)
    tiles = image_size_to_num_patches(image_size=(height, width), grid_pinpoints=model.config.image_grid_pinpoints,
                                      patch_size=spec["tile"])  # base view + grid tiles, as the processor cuts them
    gen = torch.Generator().manual_seed(spec["seed"])
    pixel_values = torch.randn(batch, tiles, 3, spec["tile"], spec["tile"], generator=gen).to(bench.device)
    image_sizes = torch.tensor([[height, width]] * batch, device=bench.device)
    counts = image_tokens(model, pixel_values, image_sizes)
    input_ids, labels = (t.to(bench.device) for t in make_batch(spec, counts, gen))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = common.adamw(trainable, bench.device, spec["lr"])

    def loss_fn() -> torch.Tensor:
        with common.autocast(bench.device):
            return model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes, labels=labels,
                         use_cache=False).loss

    times, losses = common.time_training(loss_fn, optimizer, bench, spec["compile_mode"])
    return common.result(
        "llava_ov_step", bench, times, attention=model.config.text_config._attn_implementation,
        dtype="bf16-autocast/fp32-master", spec=spec, tokens=batch * spec["seq_len"], images=batch, tiles=tiles,
        image_tokens=counts, trainable_params=sum(p.numel() for p in trainable), loss=losses[-1], losses=losses)
