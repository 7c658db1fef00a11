"""The BiTransformer: a T5-encoder-shaped bidirectional transformer with learnable queries.

Legend: b batch, q queries (the BiTransformer's own sequence), n backbone tokens, d d_model, h heads, k d_kv.

Parameter names follow the official `GenBiTransformer` (`block.{i}.layer.{j}.SelfAttention.q`, ...) so that
the released checkpoint loads by name. Blocks listed in `cross_attn_layer_ids` hold a cross-attention
sublayer (`layer.1.EncDecAttention`) and their feed-forward moves to `layer.2`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AlignerConfig


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bidirectional buckets: half per direction, exact for small distances, log-spaced up to max_distance."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    n = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class Attention(nn.Module):
    """T5 attention (no 1/sqrt(k) scaling, no biases); optional relative position bias table."""

    def __init__(self, cfg: AlignerConfig, has_relative_bias: bool = False):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.num_heads, self.d_kv, self.dropout = cfg.num_heads, cfg.d_kv, cfg.dropout
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, cfg.num_heads)

    def position_bias(self, q_len: int, k_len: int) -> torch.Tensor:
        device = self.relative_attention_bias.weight.device
        rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]  # q k
        buckets = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # 1 h q k

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        split = lambda t: t.view(b, -1, self.num_heads, self.d_kv).transpose(1, 2)  # noqa: E731  b h n k
        q, k, v = split(self.q(x)), split(self.k(kv)), split(self.v(kv))
        p = self.dropout if self.training else 0.0  # dropout on the attention weights, as in T5
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=1.0)  # b h q k
        return self.o(out.transpose(1, 2).reshape(b, -1, self.num_heads * self.d_kv))  # b q d


class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: AlignerConfig, has_relative_bias: bool):
        super().__init__()
        self.SelfAttention = Attention(cfg, has_relative_bias)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(x)
        return x + self.dropout(self.SelfAttention(h, h, bias))


class CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.EncDecAttention = Attention(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), memory, bias))


class GatedFF(nn.Module):
    """Gated-GELU feed-forward: wo(gelu(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class FFLayer(nn.Module):
    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.DenseReluDense = GatedFF(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class Block(nn.Module):
    def __init__(self, cfg: AlignerConfig, index: int):
        super().__init__()
        self.has_cross = index in cfg.cross_attn_layer_ids
        layers: list[nn.Module] = [SelfAttentionLayer(cfg, has_relative_bias=index == 0)]
        if self.has_cross:
            layers.append(CrossAttentionLayer(cfg))
        layers.append(FFLayer(cfg))
        self.layer = nn.ModuleList(layers)

    def forward(self, x, self_bias, memory, cross_bias):
        x = self.layer[0](x, self_bias)
        if self.has_cross:
            x = self.layer[1](x, memory, cross_bias)
        return self.layer[-1](x)


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """b n bool (True = valid) -> b 1 1 n additive bias (0 or the dtype's minimum)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)[
        :, None, None, :
    ]


class BiTransformer(nn.Module):
    """Bidirectional T5-style stack over query embeddings that cross-attends to backbone states."""

    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.num_generation_queries:
            self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_generation_queries, cfg.d_model) * cfg.init_std)
        self.block = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # b q d
        memory: torch.Tensor,  # b n d, the projected backbone states
        memory_mask: torch.Tensor | None = None,  # b n bool, True = valid token
        self_mask: torch.Tensor | None = None,  # b q bool, True = valid query
    ) -> torch.Tensor:
        x = self.dropout(inputs_embeds)
        q_len = x.shape[1]
        # The relative bias lives in block 0 and is shared by every block, as in T5.
        self_bias = self.block[0].layer[0].SelfAttention.position_bias(q_len, q_len).to(x.dtype)  # 1 h q q
        pad = mask_to_bias(self_mask, x.dtype)
        if pad is not None:
            self_bias = self_bias + pad  # b h q q
        cross_bias = mask_to_bias(memory_mask, x.dtype)
        if cross_bias is None:
            cross_bias = torch.zeros(1, 1, 1, memory.shape[1], dtype=x.dtype, device=x.device)
        for blk in self.block:
            x = blk(x, self_bias, memory, cross_bias)
        return self.dropout(self.final_layer_norm(x))  # b q d

    def replace_with_queries(self, inputs_embeds: torch.Tensor, rate: float, generator=None) -> torch.Tensor:
        """Replace each position of `inputs_embeds` (b q d) by its generation query with probability `rate`."""
        if not self.cfg.num_generation_queries:
            raise ValueError("this configuration has no generation queries; set num_generation_queries > 0")
        b, q, _ = inputs_embeds.shape
        if q != self.cfg.num_generation_queries:
            raise ValueError(
                f"expected {self.cfg.num_generation_queries} input positions, got {q}; "
                "pad or truncate the text-encoder input to num_generation_queries"
            )
        replace = torch.rand(b, q, 1, generator=generator, device=inputs_embeds.device) < rate  # b q 1
        return torch.where(replace, self.query_tokens.to(inputs_embeds.dtype), inputs_embeds)
