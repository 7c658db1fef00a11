import random

import pytest
import torch
import torch.nn.functional as F

from omnibridge.losses import ContrastiveLoss, GenerationQueryLoss, replacement_rate


def test_contrastive_loss_matches_a_hand_computed_single_positive_case():
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.arange(4)
    scale = torch.tensor([1.5])
    logits = scale.exp() * img @ txt.T
    expected = F.cross_entropy(logits, ids) + F.cross_entropy(logits.T, ids)  # no t2t positives
    torch.testing.assert_close(ContrastiveLoss()(img, txt, ids, scale), expected)


def test_multi_positive_targets_share_the_mass_between_captions_of_one_image():
    e = F.normalize(torch.randn(3, 8), dim=-1)
    img = torch.stack([e[0], e[0], e[1]])  # two captions of image 0, one of image 1
    txt = torch.stack([e[0], e[2], e[1]])
    ids = torch.tensor([0, 0, 1])
    s = torch.tensor([0.0])
    loss_fn = ContrastiveLoss(t2t_weight=0.0)
    logits = img @ txt.T
    targets = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    expected = -(targets * logits.log_softmax(-1)).sum(1).mean() - (targets * logits.T.log_softmax(-1)).sum(1).mean()
    torch.testing.assert_close(loss_fn(img, txt, ids, s), expected)


def test_t2t_term_excludes_self_and_stays_finite():
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])
    with_t2t = ContrastiveLoss(t2t_weight=0.05)(img, txt, ids, torch.tensor([2.0]))
    without = ContrastiveLoss(t2t_weight=0.0)(img, txt, ids, torch.tensor([2.0]))
    assert torch.isfinite(with_t2t) and with_t2t > without


def test_same_caption_on_other_images_counts_as_positive():
    e = F.normalize(torch.randn(2, 8), dim=-1)
    img, txt = e.clone(), e.clone()
    ids, caps = torch.tensor([0, 1]), torch.tensor([5, 5])
    plain = ContrastiveLoss(0.0)(img, txt, ids, torch.tensor([3.0]))
    shared = ContrastiveLoss(0.0)(img, txt, ids, torch.tensor([3.0]), caption_ids=caps)
    assert shared != plain


def test_contrastive_loss_trains_embeddings_together():
    torch.manual_seed(0)
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(8, 16, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.1)
    loss_fn, ids = ContrastiveLoss(), torch.arange(8)
    first = None
    for _ in range(50):
        loss = loss_fn(F.normalize(a, dim=-1), F.normalize(b, dim=-1), ids, torch.tensor([2.6]))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("stage,lo,hi", [(0, 0, 0), (0.005, 0.005, 0.005), (0.15, 0.15, 0.15), (0.75, 0.15, 0.75),
                                         (0.99, 0.15, 1.0), (1, 0.75, 1.0), (2, 1.0, 1.0)])
def test_replacement_schedule(stage, lo, hi):
    rng = random.Random(0)
    draws = [replacement_rate(stage, rng) for _ in range(200)]
    assert min(draws) >= lo and max(draws) <= hi
    if lo != hi:
        assert max(draws) - min(draws) > 0.5 * (hi - lo)


def test_unknown_replacement_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown replacement stage 0.5"):
        replacement_rate(0.5, random.Random(0))


def test_generation_loss_ignores_padded_positions():
    pred, target = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    target[0, 3] = 10.0  # only the padded slot differs
    mask = torch.tensor([[True, True, True, False]])
    loss = GenerationQueryLoss()
    assert loss(pred, target, mask) == 0
    assert loss(pred, target) > 0


def test_generation_queries_learn_to_stand_in_for_a_frozen_text_encoder():
    """Tiny T5 encoder as the frozen text encoder: with the schedule moving from 0.15 to full replacement, the
    BiTransformer's output approaches the encoder's, and at stage > 1 the queries alone carry the prompt."""
    from transformers import T5Config, T5EncoderModel

    from omnibridge import Aligner
    from omnibridge.losses import generation_query_loss
    from tests.test_model import tiny

    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, vocab_size=50,
                                      dropout_rate=0.0)).eval().requires_grad_(False)
    aligner = Aligner(tiny(dropout=0.0))
    ids = torch.randint(0, 50, (4, 12))  # 4 prompts of 12 tokens (= the 12 generation queries)
    embeds = encoder.get_input_embeddings()(ids)
    target = encoder(input_ids=ids).last_hidden_state  # b q d
    memory = torch.randn(4, 5, 32) + ids[:, :5, None].float()  # backbone states that identify the prompt
    opt = torch.optim.Adam(aligner.parameters(), lr=3e-3)
    rng = random.Random(0)
    losses = []
    for step in range(120):
        stage = 0.15 if step < 40 else (0.75 if step < 80 else 1)
        loss = generation_query_loss(aligner, embeds, target, memory, stage=stage, rng=rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = generation_query_loss(aligner, embeds, target, memory, stage=2).item()  # queries only
    initial = F.mse_loss(torch.zeros_like(target), target).item()
    assert losses[-1] < 0.5 * losses[0] and final < initial
