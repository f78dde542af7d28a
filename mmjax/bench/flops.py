"""One FLOP formula for mmjax and its PyTorch peers (so a ratio of times is a ratio of throughputs).

A transformer step over `rows` sequences of length `seq` costs, forward,
    2 * matmul_params * tokens  +  4 * layers * seq^2 * width * rows
(every matmul including the LM head, plus QK^T and AV; causal or masked attention is NOT discounted, on both
sides), and a training step three times that:
    6 * matmul_params * tokens  +  12 * layers * seq^2 * width * rows.
Counts are of real tokens at the reference's shapes: padding that mmjax adds for the hardware is not counted.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stack:
    """The shapes of one transformer stack that the formula needs."""

    layers: int
    width: int
    mlp: int
    q_width: int | None = None      # num_heads * head_dim (default: width)
    kv_width: int | None = None     # num_kv_heads * head_dim (default: q_width)
    mlp_matrices: int = 2           # 3 for SwiGLU
    head: int = 0                   # LM head / classifier outputs (0: none)
    extra_matmul_params: int = 0    # e.g. a patch embedding

    @property
    def matmul_params(self) -> int:
        q = self.q_width or self.width
        kv = self.kv_width or q
        per_layer = self.width * q + 2 * self.width * kv + q * self.width + self.mlp_matrices * self.width * self.mlp
        return self.layers * per_layer + self.width * self.head + self.extra_matmul_params


def forward(stack: Stack, rows: int, seq: int) -> float:
    return 2.0 * stack.matmul_params * rows * seq + 4.0 * stack.layers * seq * seq * stack.width * rows


def train(stack: Stack, rows: int, seq: int) -> float:
    return 3.0 * forward(stack, rows, seq)
