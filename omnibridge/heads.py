"""Attention-pooling retrieval head (the official `AttentionPoolingBlock`), with padding masked.

Legend: b batch, n tokens, d input width, h heads, e output width.

The pooling query is the mean of the input tokens; it attends over the tokens and is projected to `e`.
The official head averages and attends over zero padding, so an item's embedding changes with the longest
item in its batch. Here the mean and the attention both skip masked positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoolingAttention(nn.Module):
    """Multi-head attention of one query over n tokens, projected to the output width."""

    def __init__(self, dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = k.shape
        h = self.num_heads
        q = self.q(q).view(b, 1, h, d // h).transpose(1, 2)  # b h 1 d/h
        k = self.k(k).view(b, n, h, d // h).transpose(1, 2)  # b h n d/h
        v = self.v(v).view(b, n, h, d // h).transpose(1, 2)  # b h n d/h
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # b h 1 d/h
        return self.proj(out.transpose(1, 2).reshape(b, d))  # b e


class AttentionPooling(nn.Module):
    def __init__(self, dim: int, out_dim: int, num_heads: int, eps: float = 1e-5):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=eps)
        self.norm1_k = nn.LayerNorm(dim, eps=eps)
        self.norm1_v = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = PoolingAttention(dim, out_dim, num_heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: b n d, mask: b n bool (True = valid). Returns b e (not normalised)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        w = mask.to(x.dtype).unsqueeze(-1)  # b n 1
        q0 = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)  # b 1 d, masked mean
        return self.cross_attn(self.norm1_q(q0), self.norm1_k(x), self.norm1_v(x), mask)
