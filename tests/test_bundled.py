"""The offline default: bundled encoders, the bridge, the shipped default model, and the CLI over them."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.cli import app
from engine.samples import write_photo_sample
from omnibridge import load_model
from omnibridge.backbones.bundled import BundledBackbone
from omnibridge.data import read_pairs
from omnibridge.evaluate import evaluate


def last_json(output: str) -> dict:
    """The JSON line of a command's output (the test runner mixes stderr in)."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def backbone():
    return BundledBackbone(device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return read_pairs(write_photo_sample(tmp_path_factory.mktemp("photos")))


def test_bundled_backbone_shapes_and_masks(backbone, photos):
    f = backbone.encode_images([photos.load_image(0), Image.new("L", (30, 50), 128)])
    assert f.states.shape == (2, 49, 1280) and f.mask.all() and f.shared.shape == (2, 384)
    t = backbone.encode_texts(["a cat", "a much longer caption about a cat on a mat"])
    assert t.states.shape[0] == 2 and t.states.shape[2] == 384
    assert t.mask[0].sum() < t.mask[1].sum()
    np.testing.assert_allclose(t.shared.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_bridge_puts_a_cat_photo_next_to_the_word_cat(backbone, photos):
    names = [p.stem for p in photos.images]
    f = backbone.encode_images([photos.load_image(names.index("chelsea")), photos.load_image(names.index("coffee"))])
    t = backbone.encode_texts(["a cat", "a cup of coffee"])
    sims = (t.shared @ f.shared.T).numpy()
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]


def test_text_embedding_does_not_depend_on_its_batch(backbone):
    alone = backbone.encode_texts(["a red bicycle"]).shared
    batched = backbone.encode_texts(["a red bicycle", "a much longer sentence that forces padding on the first"]).shared
    np.testing.assert_allclose(alone.numpy(), batched[:1].numpy(), atol=1e-5)


def test_default_model_beats_the_documented_bridge_on_real_captioned_photos(backbone, photos):
    default = evaluate(load_model("default", backbone=backbone), photos)["t2i"]
    baseline = evaluate(load_model("bridge-baseline"), photos)["t2i"]
    assert baseline["r1"] < 0.4 and baseline["r5"] < 0.8  # the floor of OFFLINE_MODELS.md, measured here
    assert default["r1"] > baseline["r1"] and default["r5"] > baseline["r5"]


def test_cli_eval_json_and_a_bad_line(tmp_path, photos):
    runner = CliRunner()
    pairs_file = photos.images[0].parent.parent / "pairs.jsonl"
    result = runner.invoke(app, ["eval", str(pairs_file), "--json"])
    assert result.exit_code == 0, result.output
    metrics = last_json(result.output)
    assert set(metrics) == {"t2i", "i2t", "queries", "images"} and metrics["images"] == len(photos.images)
    assert set(metrics["t2i"]) == {"r1", "r5", "r10"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pairs_file.read_text().replace('"caption"', '"captoin"', 1).replace("images/", str(pairs_file.parent) + "/images/"))
    result = runner.invoke(app, ["eval", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output and "--skip-bad" in result.output
    result = runner.invoke(app, ["eval", str(bad), "--skip-bad", "--json"])
    assert result.exit_code == 0 and last_json(result.output)["skipped"] == 1


def test_cli_align_then_eval_with_the_checkpoint(tmp_path, photos, monkeypatch):
    pairs_file = photos.images[0].parent.parent / "pairs.jsonl"
    out = tmp_path / "ckpt"
    runner = CliRunner()
    result = runner.invoke(app, ["align", str(pairs_file), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--views", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and "OMNIBRIDGE_MODEL" in result.output
    result = runner.invoke(app, ["align", str(pairs_file), "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output  # never overwrites a run silently
    from engine import settings

    monkeypatch.setenv("OMNIBRIDGE_MODEL", str(out))
    settings.get_settings.cache_clear()
    result = runner.invoke(app, ["eval", str(pairs_file), "--json"])
    settings.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    trained = last_json(result.output)
    assert trained["t2i"]["r1"] >= 0.5  # it has seen these pairs
