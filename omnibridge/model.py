"""The OmniBridge aligner: the modules OmniBridge adds on top of a frozen backbone.

Legend: b batch, n backbone tokens, i backbone width, d d_model, q queries, e embedding width.

Per modality m (image, text):
  h   = projection(states)                       b n d
  out = bilm(m_queries, memory=h, mask)          b q d   (query branch)
  q_m = normalize(m_proj(out))                   b e
  k_m = normalize(m_proj_1(h, mask))             b e     (backbone branch, padding masked)
  e_m = normalize(a q_m + (1 - a) k_m),  a = sigmoid(fusion_alpha_m)
Attribute names are the official checkpoint's, registered in its order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bitransformer import BiTransformer
from .config import AlignerConfig
from .heads import AttentionPooling


class Aligner(nn.Module):
    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.logit_scale = nn.Parameter(torch.tensor([cfg.logit_scale_init], dtype=torch.float32))
        self.image_queries = nn.Parameter(torch.randn(1, cfg.num_image_queries, d) * cfg.init_std)
        self.text_queries = nn.Parameter(torch.randn(1, cfg.num_text_queries, d) * cfg.init_std)
        self.fusion_alpha_image = nn.Parameter(torch.zeros(1))
        self.fusion_alpha_text = nn.Parameter(torch.zeros(1))
        self.downsampling_linear_layer = nn.Linear(cfg.image_input_dim, d, bias=False)
        if not cfg.shared_projection:  # backbones whose two towers differ in width (e.g. the bundled one)
            self.text_downsampling_linear_layer = nn.Linear(cfg.text_input_dim, d, bias=False)
        self.bilm = BiTransformer(cfg)
        pool = lambda: AttentionPooling(d, cfg.embed_dim, cfg.pool_heads, cfg.pool_layer_norm_eps)  # noqa: E731
        self.image_proj, self.image_proj_1 = pool(), pool()
        self.text_proj, self.text_proj_1 = pool(), pool()

    # -- encoders -----------------------------------------------------------------------------------
    def _encode(self, states, mask, proj, queries, head, head_1, alpha) -> dict[str, torch.Tensor]:
        b, n, _ = states.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=states.device)
        h = proj(states * mask.unsqueeze(-1).to(states.dtype))  # b n d, padded slots exactly zero
        out = self.bilm(queries.expand(b, -1, -1), h, mask)  # b q d
        q = F.normalize(head(out), dim=-1)  # b e
        k = F.normalize(head_1(h, mask), dim=-1)  # b e
        a = torch.sigmoid(alpha)
        return {"embeds": F.normalize(a * q + (1 - a) * k, dim=-1), "query_branch": q, "backbone_branch": k}

    def encode_image(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """states: b n i image token states, mask: b n bool. Returns unit `embeds` b e and both branches."""
        return self._encode(
            states,
            mask,
            self.downsampling_linear_layer,
            self.image_queries,
            self.image_proj,
            self.image_proj_1,
            self.fusion_alpha_image,
        )

    def encode_text(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """states: b n i text token states, mask: b n bool. Returns unit `embeds` b e and both branches."""
        proj = self.downsampling_linear_layer if self.cfg.shared_projection else self.text_downsampling_linear_layer
        return self._encode(
            states, mask, proj, self.text_queries, self.text_proj, self.text_proj_1, self.fusion_alpha_text
        )

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities, b_img x b_txt, computed in float32."""
        return self.logit_scale.float().exp() * image_embeds.float() @ text_embeds.float().T

    # -- generation queries ------------------------------------------------------------------------
    def generation_queries(
        self,
        memory_states: torch.Tensor,  # b n i backbone states (prompt-rewrite or image tokens)
        memory_mask: torch.Tensor | None = None,  # b n bool
        inputs_embeds: torch.Tensor | None = None,  # b q d text-encoder input embeddings, or None at inference
        rate: float = 1.0,  # share of positions replaced by the learned generation queries
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """BiTransformer output standing in for the diffusion model's text-encoder states: b q d."""
        b = memory_states.shape[0]
        q = self.cfg.num_generation_queries
        if inputs_embeds is None:
            inputs_embeds = memory_states.new_zeros(b, q, self.cfg.d_model)
        x = self.bilm.replace_with_queries(inputs_embeds, rate, generator)
        h = self.downsampling_linear_layer(memory_states)  # b n d
        return self.bilm(x, h, memory_mask)

    # -- training helpers ---------------------------------------------------------------------------
    def retrieval_parameters(self):
        """Parameters trained by latent-space alignment (everything but the generation queries)."""
        return [p for n, p in self.named_parameters() if n != "bilm.query_tokens"]
