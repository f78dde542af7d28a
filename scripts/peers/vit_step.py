"""`vit_step`: one supervised training step of CLIP ViT-L/14 at 336 px (LLaVA-1.5's tower) with a linear classifier
on the pooled output: transformers' CLIPVisionModel, cross-entropy, bf16 autocast over fp32 master weights, AdamW.
"""

from __future__ import annotations

from typing import Any

import common
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

DEFAULT_SPEC: dict[str, Any] = {
    "batch": 128, "image_size": 336, "patch": 14, "hidden": 1024, "layers": 24, "heads": 16, "mlp": 4096,
    "classes": 1000, "lr": 1e-4,
}


class Classifier(torch.nn.Module):
    """CLIP vision tower -> pooled (post-LayerNorm CLS) -> linear head."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.tower = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=spec["hidden"], num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
            intermediate_size=spec["mlp"], patch_size=spec["patch"], image_size=spec["image_size"],
            hidden_act="quick_gelu", attention_dropout=0.0, attn_implementation=spec["attention"]))
        self.head = torch.nn.Linear(spec["hidden"], spec["classes"])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(pixel_values=pixel_values).pooler_output)


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    if spec["image_size"] % spec["patch"]:
        raise ValueError(f"image_size {spec['image_size']} is not a multiple of patch {spec['patch']}")
    gen = torch.Generator().manual_seed(spec["seed"])
    size, batch = spec["image_size"], spec["batch"]
    pixels = torch.randn(batch, 3, size, size, generator=gen).to(bench.device)
    labels = torch.randint(0, spec["classes"], (batch,), generator=gen).to(bench.device)
    with torch.device(bench.device):
        model = Classifier(spec).train()
    optimizer = common.adamw(model.parameters(), bench.device, spec["lr"])

    def loss_fn() -> torch.Tensor:
        with common.autocast(bench.device):
            return F.cross_entropy(model(pixels).float(), labels)

    times, losses = common.time_training(loss_fn, optimizer, bench, spec["compile_mode"])
    return common.result(
        "vit_step", bench, times, attention=model.tower.config._attn_implementation,
        dtype="bf16-autocast/fp32-master", spec=spec, images=batch,
        tokens=batch * ((size // spec["patch"]) ** 2 + 1), loss=losses[-1], losses=losses)
