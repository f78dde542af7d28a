"""Training-step workloads built from the project's configs and its trainer step.

Each workload loads a config file (as a user would), applies the benchmark's overrides (one device's share of the
paper batch, synthetic data), builds the real `Trainer` without a run directory and times `trainer.train_step`
on a synthetic batch of realistic content (`Task.synthetic_batch`). The PyTorch peer gets the same shapes.
"""

from __future__ import annotations

from typing import Any

import jax

from mmjax import configlib
from mmjax.bench import flops
from mmjax.bench.generation import lm_stack
from mmjax.bench.measure import peak_memory_gib, timed, utilisation

# Synthetic text needs no tokenizer file: byte-level ids (the model's vocabulary is unchanged).
ONEVISION_OVERRIDES = ("text.tokenizer=byte", "text.tokenizer_path=", "optim.frozen=('^vision_tower/',)",
                       "optim.lr_mult={}")
LLAVA15_OVERRIDES = ("text.tokenizer=byte", "text.tokenizer_path=")
# Fields the shipped configs leave at their module defaults, set by the workloads (then `--set` may change them):
# LLaVA-1.5-7B keeps bf16 LM parameters (with them, AdamW's state is bf16 too: 7B x (2 + 2 + 4) bytes = 54 GB, which
# leaves a 141 GB GPU room for the activations; float32 needs 112 GB before any activation).
LLAVA15_FIELDS = {"model.lm.param_dtype": "bfloat16"}
# ViT-L/14 at 336 px on one GPU: the 577 tokens padded once to 584 so every layer runs cuDNN's fused kernel with a
# key length (instead of a pad and a slice per layer), the layers unrolled (a scanned stack spends its time in the
# stacked-gradient bookkeeping on one GPU), and matmul outputs + the attention kernel's outputs kept for the
# backward while norms and GELU are recomputed (batch 128 then fits next to the peer's memory).
VIT_FIELDS = {"model.token_multiple": 8, "model.scan": False, "model.remat_policy": "dots_and_attention"}


def set_fields(config: Any, fields: dict[str, Any]) -> Any:
    """Sets dotted `fields` on a locked config, adding those its file does not declare."""
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        with node.unlocked():
            node[leaf] = value
    return config


def build(config_spec: str, overrides: list[str], fields: dict[str, Any] | None = None) -> Any:
    from mmjax.train.trainer import Trainer

    config = set_fields(configlib.load_config_file(config_spec), fields or {})
    config = configlib.apply_overrides(config, overrides)
    trainer = Trainer(config, workdir=None)
    trainer.build()
    return trainer


def time_steps(trainer: Any, iters: int = 10, seed: int = 0) -> tuple[float, dict[str, float]]:
    """Median seconds per train step on one synthetic batch, and the step's last metrics."""
    state = trainer.init_state()
    batch = trainer.synthetic_batch(seed)
    holder = [state, None]

    def run():
        holder[0], holder[1] = trainer.train_step(holder[0], batch)
        return holder[1]["loss"]

    sec, _ = timed(run, warmup=2, iters=iters)
    return sec, {k: float(v) for k, v in jax.device_get(holder[1]).items() if getattr(v, "ndim", 0) == 0}


def _result(trainer: Any, sec: float, metrics: dict[str, float], train_flops: float, ceiling: float | None,
            **extra: Any) -> dict[str, Any]:
    return {"ms": sec * 1e3, **extra, **utilisation(train_flops, sec, ceiling), "peak_gib": peak_memory_gib(),
            "loss": metrics.get("loss"), "params": trainer.num_params}


def showo(res: int, stage: int, *, ceiling: float | None = None, iters: int = 10,
          overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One device's bundle of the paper's mix ([t2i; lm; mmu] rows) with configs/showo/pretrain.py as shipped;
    image tokens arrive pre-computed on both sides (as with pre-tokenized shards), so the tokenizer is not timed."""
    trainer = build(f"configs/showo/pretrain.py:stage={stage},res={res},devices=1",
                    ["tokenizer.pretokenize=True", "mesh.fsdp=1", *overrides])
    task = trainer.task
    sec, metrics = time_steps(trainer, iters)
    mix = task.mix
    rows, seq = sum(mix.values()), task.s + task.n + 3
    stack = lm_stack(task.lm_config)
    out = _result(trainer, sec, metrics, flops.train(stack, rows, seq), ceiling, rows=rows, seq=seq,
                  padded_seq=task.row_len, tokens_per_s=rows * seq / sec)
    v = task.vocab
    peer = {"hidden": stack.width, "layers": stack.layers, "heads": task.lm_config.num_heads, "mlp": stack.mlp,
            "vocab": v.vocab_size, "rows": dict(mix), "max_text_len": task.s, "image_tokens": task.n,
            "seq_len": seq, "lr": trainer.config.optim.lr, "weight_decay": trainer.config.optim.weight_decay,
            "coeffs": {p: float(getattr(trainer.config.showo, f"{p}_coeff")) for p in mix},
            "special_ids": {"pad": v.pad_id, "soi": v.soi_id, "eoi": v.eoi_id, "t2i": v.t2i_id, "mmu": v.mmu_id,
                            "bos": v.bos_id, "eos": v.eos_id, "mask": v.mask_id, "image_offset": v.image_offset}}
    return {"result": out, "peer": ("showo_step", peer)}


def llava_onevision(*, config: str = "configs/llava/onevision.py:size=0.5b,stage=2", batch: int = 4,
                    seq: int = 4000, ceiling: float | None = None, iters: int = 10,
                    overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """LLaVA-OneVision-0.5B, one 768 px AnyRes image per sample, SigLIP frozen, projector + Qwen2 trained.
    Text is tokenized byte-level (the Qwen2 tokenizer file is not needed for timing; the vocabulary stays)."""
    trainer = build(config, [f"batch_size={batch}", f"text.max_len={seq}", *ONEVISION_OVERRIDES, *overrides])
    cfg = trainer.task.model_cfg
    sec, metrics = time_steps(trainer, iters)
    from mmjax.models.vit import ViT

    tower = ViT(**cfg.vision_dict).dims()
    side = trainer.task.image_cfg.size
    per_tile = (side // tower["patch_size"][0]) ** 2
    tiles = int(trainer.synthetic_batch(0)["pixels"].shape[2])  # tiles of the one 768 px image
    vis = flops.Stack(layers=cfg.tower_depth, width=tower["width"], mlp=tower["mlp_dim"],
                      extra_matmul_params=3 * tower["patch_size"][0] ** 2 * tower["width"])
    projector = tower["width"] * cfg.lm.hidden_size + cfg.lm.hidden_size ** 2
    total = (flops.train(lm_stack(cfg.lm), batch, seq) + flops.forward(vis, batch * tiles, per_tile)
             + 6.0 * projector * batch * tiles * per_tile)
    out = _result(trainer, sec, metrics, total, ceiling, tokens_per_s=batch * seq / sec, samples_per_s=batch / sec)
    peer = {"batch": batch, "seq_len": seq, "image_size": [768, 768], "lr": trainer.config.optim.lr}
    return {"result": out, "peer": ("llava_ov_step", peer)}


def vit(variant: str = "L/14", res: int = 336, batch: int = 128, *, ceiling: float | None = None,
        iters: int = 10, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """CLIP ViT-L/14 at 336 px with a class token and a 1000-way head (configs/vit/i1k.py's recipe)."""
    trainer = build(f"configs/vit/i1k.py:variant={variant},batch_size={batch}",
                    [f"augment.image_size={res}", "model.pool_type=tok", "augment.mixup_alpha=0.0", *overrides],
                    VIT_FIELDS)
    sec, metrics = time_steps(trainer, iters)
    d = trainer.task.model.dims()
    patch = d["patch_size"][0]
    tokens = (res // patch) ** 2 + 1
    stack = flops.Stack(layers=d["depth"], width=d["width"], mlp=d["mlp_dim"], head=1000,
                        extra_matmul_params=3 * patch * patch * d["width"])
    out = _result(trainer, sec, metrics, flops.train(stack, batch, tokens), ceiling, images_per_s=batch / sec)
    peer = {"batch": batch, "image_size": res, "patch": patch, "hidden": d["width"], "layers": d["depth"],
            "heads": d["num_heads"], "mlp": d["mlp_dim"], "classes": 1000, "lr": trainer.config.optim.lr}
    return {"result": out, "peer": ("vit_step", peer)}



def llava15(*, size: str = "7b", batch: int = 8, ceiling: float | None = None, iters: int = 5,
            overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """LLaVA-1.5 stage 2 (CLIP-L/336 frozen, projector + Vicuna trained, FSDP rules as for a pod) on the devices
    at hand. On one 141 GB GPU the 7B model's float32 parameters, gradients and Adam state (112 GB) leave no room
    for activations, so the LM keeps bf16 parameters here (`LLAVA15_FIELDS`); batch as given. The peer
    (scripts/peers/llava15_step.py) keeps bf16 parameters and optimizer state too.
    The FLOPs counted are the LM's training step; the frozen tower's forward is left out on both sides."""
    trainer = build(f"configs/llava/llava15.py:stage=2,size={size}",
                    [f"batch_size={batch}", *LLAVA15_OVERRIDES, *overrides], LLAVA15_FIELDS)
    cfg = trainer.task.model_cfg
    sec, metrics = time_steps(trainer, iters)
    seq = trainer.config.text.max_len
    out = _result(trainer, sec, metrics, flops.train(lm_stack(cfg.lm), batch, seq), ceiling,
                  tokens_per_s=batch * seq / sec, samples_per_s=batch / sec)
    lm = cfg.lm
    peer = {"batch": batch, "seq_len": seq, "lr": trainer.config.optim.lr, "hidden": lm.hidden_size,
            "layers": lm.num_layers, "heads": lm.num_heads, "mlp": lm.mlp_dim, "vocab": lm.vocab_size}
    return {"result": out, "peer": ("llava15_step", peer)}
