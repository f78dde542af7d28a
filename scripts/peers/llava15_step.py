"""`llava15_step`: one LLaVA-1.5 stage-2 training step with transformers' LlavaForConditionalGeneration: CLIP
ViT-L/14-336 (frozen, features of the second-to-last layer, class token dropped: 576 image tokens), the
`mlp2x_gelu` projector and Vicuna-7B (LLaMA) trained, LM layers gradient-checkpointed (mmjax: `remat_policy=full`).
Parameters are bf16, so AdamW's state is bf16 too: the same memory plan as the mmjax workload on one GPU. Each
sequence is exactly `seq_len` tokens: a short prompt, the image tokens, then supervised text.
"""

from __future__ import annotations

from typing import Any

import common
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

DEFAULT_SPEC: dict[str, Any] = {
    "batch": 8, "seq_len": 2048, "lr": 2e-5, "prompt_tokens": 35,  # vicuna_v1 system prompt + "USER:" before the image
    # Vicuna-7B v1.5 (LLaMA-2 7B)
    "hidden": 4096, "layers": 32, "heads": 32, "mlp": 11008, "vocab": 32000,
    # CLIP ViT-L/14 at 336 px
    "vision_hidden": 1024, "vision_layers": 24, "vision_heads": 16, "vision_mlp": 4096, "patch": 14,
    "image_size": 336,
}


def build_model(spec: dict[str, Any], device: torch.device) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=spec["vision_hidden"], num_hidden_layers=spec["vision_layers"],
        num_attention_heads=spec["vision_heads"], intermediate_size=spec["vision_mlp"], patch_size=spec["patch"],
        image_size=spec["image_size"], hidden_act="quick_gelu", projection_dim=768)
    text = LlamaConfig(
        hidden_size=spec["hidden"], num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        intermediate_size=spec["mlp"], vocab_size=spec["vocab"] + 1, max_position_embeddings=4096,
        rms_norm_eps=1e-5)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=spec["vocab"], projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", attn_implementation=spec["attention"])
    with torch.device(device):
        return LlavaForConditionalGeneration(config).to(torch.bfloat16)


def make_batch(spec: dict[str, Any], image_tokens: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), each row `seq_len` long: prompt, image tokens, supervised text."""
    batch, length, prompt = spec["batch"], spec["seq_len"], spec["prompt_tokens"]
    answer = length - prompt - image_tokens
    if answer < 2:
        raise ValueError(f"seq_len {length} leaves {answer} text tokens after {prompt} prompt and {image_tokens} "
                         "image tokens; at least 2 are needed for a next-token loss")
    ids = torch.cat([torch.randint(0, spec["vocab"], (batch, prompt), generator=gen),
                     torch.full((batch, image_tokens), spec["vocab"]),
                     torch.randint(0, spec["vocab"], (batch, answer), generator=gen)], dim=1)
    labels = ids.clone()
    labels[:, :prompt + image_tokens] = common.IGNORE
    return ids, labels


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    model = build_model(spec, bench.device).train()
    model.model.vision_tower.requires_grad_(False)
    model.model.language_model.gradient_checkpointing_enable()
    gen = torch.Generator().manual_seed(spec["seed"])
    size = spec["image_size"]
    image_tokens = (size // spec["patch"]) ** 2
    pixels = torch.randn(spec["batch"], 3, size, size, generator=gen).to(bench.device, torch.bfloat16)
    input_ids, labels = (t.to(bench.device) for t in make_batch(spec, image_tokens, gen))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = common.adamw(trainable, bench.device, spec["lr"])

    def loss_fn() -> torch.Tensor:
        return model(input_ids=input_ids, pixel_values=pixels, labels=labels, use_cache=False).loss

    times, losses = common.time_training(loss_fn, optimizer, bench, spec["compile_mode"])
    return common.result(
        "llava15_step", bench, times, attention=model.config.text_config._attn_implementation,
        dtype="bf16 params and AdamW state", spec=spec, tokens=spec["batch"] * spec["seq_len"],
        images=spec["batch"], image_tokens=image_tokens, trainable_params=sum(p.numel() for p in trainable),
        loss=losses[-1], losses=losses)
