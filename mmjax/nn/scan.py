"""Layer stacks: `nn.scan` over a block (one compiled layer, params stacked on a 'layers' axis) with a named
rematerialisation policy, or a plain Python loop of named blocks (`<name>_<i>`).

Scanning keeps compile time flat in depth (important for 24-48 layer models on pods); remat trades recompute for
activation memory. Policies are named so configs can pick them (`config.model.remat_policy=dots`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

# The fused attention kernels' forward primitives (jax.nn.dot_product_attention's cuDNN path): their outputs are the
# attention output and the softmax statistics that the backward kernel needs.
_ATTENTION_KERNELS = frozenset({"dot_product_attention_fwd_wrapper", "dot_product_attention_fwd"})


def _dots_and_attention(prim: Any, *args: Any, **params: Any) -> bool:
    """Saves every matmul without batch dimensions (projections, MLP) and the fused attention kernel's outputs;
    recomputes norms, activations and residual adds, which are elementwise and cheap to redo."""
    if getattr(prim, "name", "") in _ATTENTION_KERNELS:
        return True
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation at all
    "full": None,  # recompute everything in the backward pass (save only the block inputs)
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # names tagged with `checkpoint_name` in mmjax.nn.attention
    "qkv_attention_out": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out"),
    "everything": jax.checkpoint_policies.everything_saveable,
    # projections + attention kernel saved (the XLA attention path also keeps its tagged output)
    "dots_and_attention": jax.checkpoint_policies.save_from_both_policies(
        _dots_and_attention, jax.checkpoint_policies.save_only_these_names("attention_out")),
}


def maybe_remat(block: type[nn.Module], policy: str, *, static_argnums: tuple[int, ...] = (),
                prevent_cse: bool = True) -> type[nn.Module]:
    """The block class wrapped in `nn.remat` with a named policy, or unchanged for 'none'.

    `static_argnums` counts `self` as 0. Under `nn.scan`, pass prevent_cse=False (scan already prevents CSE).
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; known: {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse, static_argnums=static_argnums)


def scanned(block: type[nn.Module], length: int, *, in_axes: Any = (), out_axes: int = 0) -> type[nn.Module]:
    """`nn.scan` over `length` copies of `block`, params stacked on a leading axis named 'layers'.

    The block's `__call__(carry, *broadcast_args)` must return `(carry, y)`; extra args are broadcast.
    """
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=in_axes, out_axes=out_axes, length=length,
                   metadata_params={nn.PARTITION_NAME: "layers"})
