"""Pairs reading, evaluation, checkpoints and the align loop, on a tiny deterministic backbone."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnibridge import create_model
from omnibridge.checkpoint import load_model, read_checkpoint_config, save_checkpoint
from omnibridge.data import PairsError, read_pairs
from omnibridge.evaluate import evaluate, recall_at_k
from omnibridge.train import AlignConfig, align
from tests.utils import TinyBackbone, write_colour_pairs


# -- pairs ------------------------------------------------------------------------------------------
def test_pairs_group_captions_by_image(tmp_path):
    path = write_colour_pairs(tmp_path, per_colour=2)
    with path.open("a") as f:
        f.write(json.dumps({"image": "img/red0.png", "caption": "crimson"}) + "\n")
    pairs = read_pairs(path)
    assert len(pairs.images) == 8 and len(pairs.captions) == 9
    assert pairs.caption_image[-1] == pairs.caption_image[0]


@pytest.mark.parametrize(
    "line,reason",
    [
        ("{not json", "not valid JSON"),
        ('{"caption": "x"}', 'missing "image"'),
        ('{"image": "img/red0.png"}', 'missing or empty "caption"'),
        ('{"image": "img/none.png", "caption": "x"}', "image not found"),
        ('{"image": "broken.png", "caption": "x"}', "unreadable image"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_lines_are_named_or_counted_never_dropped(tmp_path, line, reason):
    path = write_colour_pairs(tmp_path, per_colour=1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = path.read_text().splitlines()
    path.write_text("\n".join(good[:2] + [line] + good[2:]) + "\n")
    with pytest.raises(PairsError, match=rf"pairs.jsonl:3: .*{reason}.*--skip-bad"):
        read_pairs(path)
    pairs = read_pairs(path, skip_bad=True)
    assert len(pairs.captions) == 4 and len(pairs.skipped) == 1 and ":3:" in pairs.skipped[0]


# -- evaluation --------------------------------------------------------------------------------------
def test_recall_counts_the_best_ranked_positive():
    sims = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    # query 0: positives {1, 2} -> best rank 1 (index 1); query 1: positive {0} -> rank 2
    assert recall_at_k(sims, [{1, 2}, {0}], ks=(1, 2, 3)) == {"r1": 0.0, "r2": 0.5, "r3": 1.0}


# -- align, checkpoints -------------------------------------------------------------------------------
CFG = AlignConfig(epochs=8, batch_size=8, lr=3e-3, views=2, seed=0)


def _train(tmp_path, out_name="ckpt", cfg=CFG, resume=False, backbone=None):
    pairs = read_pairs(write_colour_pairs(tmp_path / "data"))
    model = create_model("tiny", backbone or TinyBackbone())
    align(model, pairs, tmp_path / out_name, cfg, resume=resume, progress=False)
    return model, pairs


def test_align_learns_and_the_checkpoint_reloads_identically(tmp_path):
    pairs = read_pairs(write_colour_pairs(tmp_path / "data"))
    untrained = create_model("tiny", TinyBackbone())
    untrained.blend.trained = True  # judge the untrained aligner on its own vectors: familiarity 1 everywhere
    untrained.prototypes = {"image": torch.ones(1, 32), "text": torch.ones(1, 32)}
    untrained.blend.image_low = untrained.blend.text_low = -2.0
    untrained.blend.image_high = untrained.blend.text_high = -1.0
    before = evaluate(untrained, pairs)["i2t"]["r1"]
    model, _ = _train(tmp_path)
    after = evaluate(model, pairs)
    assert after["i2t"]["r1"] == 1.0 and after["i2t"]["r1"] > before
    loaded = load_model(tmp_path / "ckpt", backbone=TinyBackbone())
    texts = ["a red square", "something else"]
    np.testing.assert_allclose(loaded.encode_texts(texts, role="query"), model.encode_texts(texts, role="query"), atol=1e-6)
    config = read_checkpoint_config(tmp_path / "ckpt")
    assert config["backbone"]["name"] == "tiny-test" and config["training"]["epochs_done"] == 8
    assert not list((tmp_path / "ckpt").glob("*.pt")) and not list((tmp_path / "ckpt").glob("*.bin"))


def test_align_is_deterministic_and_resume_replays_the_same_run(tmp_path):
    full, _ = _train(tmp_path, "full")
    again, _ = _train(tmp_path, "again")
    resumed_dir = tmp_path / "crash"
    pairs = read_pairs(tmp_path / "data" / "pairs.jsonl")

    def crash_after_two(epoch, loss):  # the run dies once epoch 2 is written
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        align(create_model("tiny", TinyBackbone()), pairs, resumed_dir, CFG, progress=False, on_epoch=crash_after_two)
    assert read_checkpoint_config(resumed_dir)["training"]["epochs_done"] == 2
    resumed = create_model("tiny", TinyBackbone(), seed=123)  # a different init: resume must overwrite it
    align(resumed, pairs, resumed_dir, CFG, resume=True, progress=False)
    for (name, a), b, c in zip(full.aligner.state_dict().items(), again.aligner.state_dict().values(),
                               resumed.aligner.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"not deterministic: {name}")
        torch.testing.assert_close(a, c, msg=f"resume differs: {name}")


def test_resume_with_other_settings_is_refused(tmp_path):
    _train(tmp_path)
    with pytest.raises(ValueError, match="cannot resume .*batch_size"):
        _train(tmp_path, cfg=AlignConfig(**{**vars(CFG), "batch_size": 4}), resume=True)


def test_checkpoint_refuses_a_different_backbone(tmp_path):
    model = create_model("tiny", TinyBackbone())
    save_checkpoint(model, tmp_path / "ck")
    other = TinyBackbone()
    other.name = "another-backbone"
    with pytest.raises(ValueError, match="was trained on backbone .*tiny-test.* but the backbone given is .*another-backbone"):
        load_model(tmp_path / "ck", backbone=other)


def test_load_model_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an OmniBridge checkpoint"):
        load_model(tmp_path / "empty")


def test_familiarity_gate_keeps_unfamiliar_items_on_the_shared_space(tmp_path):
    model, pairs = _train(tmp_path)
    texts = model.backbone.encode_texts(["a red square", "quantum tax law"])
    assert model.familiarity(texts, "text").tolist() == [1.0, 0.0]
    stripes = Image.fromarray((np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8))  # nothing like the squares
    images = model.backbone.encode_images([pairs.load_image(0), stripes])
    g = model.familiarity(images, "image")
    assert g[0] == 1.0 and g[1] < 0.5
    # an unfamiliar pair is scored by the shared space alone: score == <s_q, s_d>
    q = model.text_vectors(model.backbone.encode_texts(["quantum tax law"]), "query")
    d = model.image_vectors(images, "document")
    torch.testing.assert_close(q @ d.T, texts.shared[1:] @ images.shared.T)


def test_scores_interpolate_between_the_two_spaces(tmp_path):
    model, pairs = _train(tmp_path)
    t = model.backbone.encode_texts(["a red square"])
    i = model.backbone.encode_images([pairs.load_image(0)])
    g = model.familiarity(t, "text") * model.familiarity(i, "image")
    e_t = model.aligner.encode_text(t.states, t.mask)["embeds"]
    e_i = model.aligner.encode_image(i.states, i.mask)["embeds"]
    expected = (1 - g) * (t.shared @ i.shared.T) + g * (e_t @ e_i.T)
    torch.testing.assert_close(model.text_vectors(t, "query") @ model.image_vectors(i, "document").T, expected)


def test_truncated_images_and_conflicting_ids_are_caught(tmp_path):
    path = write_colour_pairs(tmp_path, per_colour=1)
    full = (tmp_path / "img" / "red0.png").read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(full[: len(full) // 2])  # a half-written file
    with path.open("a") as f:
        f.write(json.dumps({"image": "img/cut.png", "caption": "half"}) + "\n")
    with pytest.raises(PairsError, match=r":5: unreadable image .*cut.png"):
        read_pairs(path)
    path.write_text("\ufeff" + path.read_text().splitlines()[0] + "\n"  # a BOM is fine
                    + json.dumps({"image": "img/red0.png", "caption": "again", "id": "other"}) + "\n")
    with pytest.raises(PairsError, match=r":2: image 'img/red0.png' has id 'other' here but 'red0' on line 1"):
        read_pairs(path)


def test_resume_refuses_changed_data(tmp_path):
    _train(tmp_path)
    pairs = read_pairs(tmp_path / "data" / "pairs.jsonl")
    pairs.captions[0] = "a different caption"
    model = create_model("tiny", TinyBackbone())
    with pytest.raises(ValueError, match="cannot resume .*the pairs differ"):
        align(model, pairs, tmp_path / "ckpt", CFG, resume=True, progress=False)


def test_resuming_a_finished_run_returns_the_trained_model(tmp_path):
    model, pairs = _train(tmp_path)
    again = create_model("tiny", TinyBackbone(), seed=5)
    align(again, pairs, tmp_path / "ckpt", CFG, resume=True, progress=False)
    assert again.blend.trained and set(again.prototypes) == {"image", "text"}
    np.testing.assert_allclose(again.encode_texts(["a red square"], role="query"),
                               model.encode_texts(["a red square"], role="query"), atol=1e-6)
