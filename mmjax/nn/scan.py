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

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing, recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def remat_policy(name: str) -> Callable | None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; known: none, {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def maybe_remat(block: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
    """The block class wrapped in `nn.remat` unless the policy is 'none'."""
    if policy == "none":
        return block
    return nn.remat(block, policy=remat_policy(policy), prevent_cse=False, static_argnums=static_argnums)


def scanned(block: type[nn.Module], length: int, *, in_axes: Any = (), out_axes: int = 0) -> type[nn.Module]:
    """`nn.scan` over `length` copies of `block`, params stacked on a leading axis named 'layers'.

    The block's `__call__(carry, *broadcast_args)` must return `(carry, y)`; extra args are broadcast.
    """
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=in_axes, out_axes=out_axes, length=length,
                   metadata_params={nn.PARTITION_NAME: "layers"})
