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
