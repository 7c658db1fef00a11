"""Training objectives as modules.

Legend: b batch, e embedding width, q generation queries, d d_model.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn


def _soft_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against row-normalised multi-positive targets. logits, positives: b b'."""
    targets = positives / positives.sum(1, keepdim=True)
    terms = torch.where(targets > 0, targets * logits.log_softmax(-1), 0.0)  # masked (-inf) logits add nothing
    return -terms.sum(1).mean()


class ContrastiveLoss(nn.Module):
    """Multi-positive InfoNCE: L = L_i2t + L_t2i + t2t_weight * L_t2t, positives = same image id.

    As in the official loss but with the t2t self-similarity removed from the softmax denominator
    (the official code keeps it, which only adds a constant pull towards itself).
    """

    def __init__(self, t2t_weight: float = 0.05):
        super().__init__()
        self.t2t_weight = t2t_weight

    def forward(
        self,
        image_embeds: torch.Tensor,  # b e, unit norm, one image per caption (repeats allowed)
        text_embeds: torch.Tensor,  # b e, unit norm
        image_ids: torch.Tensor,  # b long
        logit_scale: torch.Tensor,  # scalar log-scale
        caption_ids: torch.Tensor | None = None,  # b long; the same caption text on other images is positive too
    ) -> torch.Tensor:
        s = logit_scale.float().exp()
        img, txt = image_embeds.float(), text_embeds.float()
        pos = image_ids[:, None] == image_ids[None, :]  # b b
        if caption_ids is not None:
            pos = pos | (caption_ids[:, None] == caption_ids[None, :])
        pos = pos.float()
        loss = _soft_ce(s * img @ txt.T, pos) + _soft_ce(s * txt @ img.T, pos)
        eye = torch.eye(len(pos), dtype=torch.bool, device=pos.device)
        t2t_pos = pos.masked_fill(eye, 0)
        rows = t2t_pos.sum(1) > 0  # captions with another caption of the same image in the batch
        if self.t2t_weight and rows.any():
            t2t = (s * txt @ txt.T).masked_fill(eye, float("-inf"))
            loss = loss + self.t2t_weight * _soft_ce(t2t[rows], t2t_pos[rows])
        return loss


# The official replacement-rate schedule (`mask_random_number`): a coded value -> how r is drawn.
SCHEDULE = {
    0: (0.0, 0.0),
    0.005: (0.005, 0.005),
    0.15: (0.15, 0.15),
    0.75: (0.15, 0.75),
    0.99: (0.15, 1.0),
    1: (0.75, 1.0),
}


def replacement_rate(stage: float, rng: random.Random) -> float:
    """Draw the share of text-encoder inputs replaced by generation queries for a schedule stage.

    Stages follow the official code; any stage > 1 replaces everything (inference). Unlike the official
    code, an uncoded stage is an error instead of an UnboundLocalError.
    """
    if stage > 1:
        return 1.0
    if stage not in SCHEDULE:
        raise ValueError(f"unknown replacement stage {stage}; use one of {sorted(SCHEDULE)} or a value > 1")
    lo, hi = SCHEDULE[stage]
    return lo if lo == hi else rng.uniform(lo, hi)


class GenerationQueryLoss(nn.Module):
    """MSE between the BiTransformer's output and a frozen text encoder's output on the same text.

    The BiTransformer reads the text encoder's input embeddings with a share r of positions replaced by the
    learned generation queries (progressively more as training advances) and cross-attends to the backbone
    states, so that at inference the queries alone stand in for the text encoder. Padded target positions are
    masked out (the official loss includes them).
    """

    def forward(
        self,
        prediction: torch.Tensor,  # b q d, BiTransformer output
        target: torch.Tensor,  # b q d, frozen text-encoder output
        mask: torch.Tensor | None = None,  # b q bool, True = real token
    ) -> torch.Tensor:
        err = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(-1)  # b q
        if mask is None:
            return err.mean()
        return (err * mask).sum() / mask.sum().clamp(min=1)


def generation_query_loss(
    aligner,  # omnibridge.model.Aligner with generation queries
    input_embeds: torch.Tensor,  # b q d, the frozen text encoder's input token embeddings of the prompt
    target: torch.Tensor,  # b q d, the frozen text encoder's output on the same prompt
    memory_states: torch.Tensor,  # b n i, backbone states the BiTransformer cross-attends to
    memory_mask: torch.Tensor | None = None,  # b n bool
    target_mask: torch.Tensor | None = None,  # b q bool, real (non-padding) prompt tokens
    stage: float = 0.75,  # replacement schedule stage (see SCHEDULE)
    rng: random.Random | None = None,
) -> torch.Tensor:
    """One step of the generation-query objective: replace a share of the inputs by the learned queries, run the
    BiTransformer and regress the text encoder's output."""
    rate = replacement_rate(stage, rng or random.Random())
    prediction = aligner.generation_queries(memory_states, memory_mask, inputs_embeds=input_embeds, rate=rate)
    return GenerationQueryLoss()(prediction, target, target_mask)
