"""The optimizer from the config: schedule, weight-decay mask, frozen groups, clipping, accumulation.

Config (`config.optim`):
  name: adamw | sgd | adafactor;  lr, b1, b2, eps, momentum, weight_decay
  schedule: cosine | linear | constant (after `warmup_steps` of linear warmup), `end_lr_frac`
  clip_norm: global-norm clipping (0 disables); grad_accum: number of micro-steps per update
  no_decay: regexes of parameter paths excluded from weight decay (norms, biases, embeddings by default)
  frozen: regexes of parameter paths that are never updated (LLaVA stage 1 freezes all but the projector)
  lr_mult: {regex: multiplier} per-group learning rates (e.g. the vision tower at a tenth of the LM's)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax

DEFAULT_NO_DECAY = (r"(^|/)bias$", r"(^|/)scale$", r"norm", r"embedding", r"pos_embedding", r"(^|/)cls$",
                    r"embed_tokens", r"image_newline")


def path_str(path: tuple) -> str:
    """A key path as 'encoder/block_0/kernel'; the `.value` of a logical-partitioning box is left out."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
            continue
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def path_labels(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A function mapping a param tree (boxed or not) to `fn(path_string)` per leaf, as optax masks/labels take."""
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: fn(path_str(p)), params)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, path) for p in patterns)


def frozen_mask(cfg: ml_collections.ConfigDict) -> Callable[[Any], Any]:
    """params -> a tree of bools, True where `cfg.frozen` matches the parameter's path."""
    frozen = tuple(cfg.get("frozen", ()))
    return path_labels(lambda p: _matches(p, frozen))


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to `lr * end_lr_frac`, or constant."""
    lr, warmup = cfg.lr, int(cfg.warmup_steps)
    end = lr * cfg.get("end_lr_frac", 0.0)
    decay_steps = max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=(end / lr) if lr else 0.0)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(lr, end, decay_steps)
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"config.optim.schedule: unknown {cfg.schedule!r} (cosine | linear | constant)")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _base(cfg: ml_collections.ConfigDict, lr: optax.Schedule, decay_mask: Any) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.name == "sgd":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                           optax.sgd(lr, momentum=cfg.momentum or None))
    if cfg.name == "adafactor":
        return optax.chain(optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                                           weight_decay_mask=decay_mask))
    raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r} (adamw | sgd | adafactor)")


def make_optimizer(cfg: ml_collections.ConfigDict, param_paths: Sequence[str], total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the full gradient transformation; `param_paths` (every parameter's path) validates the regexes."""
    accum = int(cfg.get("grad_accum", 1))
    # The inner optimizer updates once per `accum` micro-steps: its schedule spans the number of real updates.
    lr = schedule(cfg, max(1, total_steps // accum))
    no_decay = tuple(cfg.get("no_decay", DEFAULT_NO_DECAY))
    decay_mask = path_labels(lambda p: not _matches(p, no_decay))
    frozen = tuple(cfg.get("frozen", ()))
    lr_mult = dict(cfg.get("lr_mult", {}) or {})

    def label(path: str) -> str:
        if _matches(path, frozen):
            return "frozen"
        for pattern in lr_mult:
            if re.search(pattern, path):
                return pattern
        return "default"

    labels = path_labels(label)
    used = {label(p) for p in param_paths}
    if frozen and "frozen" not in used:
        raise ValueError(f"config.optim.frozen {frozen} matches no parameter")
    groups = {"default": _base(cfg, lr, decay_mask), "frozen": optax.set_to_zero()}
    for pattern, mult in lr_mult.items():
        groups[pattern] = _base(cfg, lambda step, m=mult: lr(step) * m, decay_mask)
    parts = []
    if "frozen" in used:
        # Zero frozen gradients first: clipping then ignores them and XLA drops their (dead) weight-gradient matmuls.
        freeze = {name: optax.identity() for name in groups} | {"frozen": optax.set_to_zero()}
        parts.append(optax.multi_transform(freeze, labels))
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.multi_transform(groups, labels) if used != {"default"} else groups["default"])
    tx = optax.chain(*parts)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
        return tx, lambda step: lr(step // accum)  # the trainer counts micro-steps
    return tx, lr


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `config.optim` section with every field a run may set, so overrides of unknown fields fail."""
    cfg = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=1e-4,
        schedule="cosine", warmup_steps=0, end_lr_frac=0.0, clip_norm=1.0, grad_accum=1,
        no_decay=DEFAULT_NO_DECAY, frozen=(), lr_mult={},
    ))
    cfg.update(overrides)
    return cfg
