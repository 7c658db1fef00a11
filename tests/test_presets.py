"""Zero-shot CLIP / SigLIP presets (`OMNIBRIDGE_MODEL=clip:MODEL` or `siglip:MODEL`) end to end, on the tiny random
checkpoints of test_backbones_hub: no download, no align step, the checkpoint's own image-text space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.relevance import CALIBRATION_DIR, calibration_path, load_calibration
from omnibridge import load_model
from omnibridge.checkpoint import parse_preset
from tests.test_backbones_hub import dual_dirs  # noqa: F401  (the tiny CLIP and SigLIP checkpoints)

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("clip", "siglip")


def omnibridge(*args, home: Path, model: str, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBRIDGE_HOME": str(home), "OMNIBRIDGE_MODEL": model, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def pictures(folder: Path) -> list[Path]:
    """Four distinct pictures (no two alike to the near-duplicate check): noise, stripes, a gradient, a checkerboard."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:40, 0:48]
    arrays = {
        "noise": np.random.default_rng(0).integers(0, 256, (40, 48, 3)),
        "stripes": np.stack([(x // 6 % 2) * 220, y * 0 + 40, (x // 6 % 2) * 30], -1),
        "gradient": np.stack([x * 5, y * 6, 255 - x * 5], -1),
        "checker": np.repeat(((x // 8 + y // 8) % 2 * 230)[..., None], 3, -1),
    }
    paths = []
    for name, a in arrays.items():
        Image.fromarray(a.astype(np.uint8)).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def test_parse_preset_names_and_errors():
    assert parse_preset("clip:openai/clip-vit-base-patch32") == ("clip", "openai/clip-vit-base-patch32")
    assert parse_preset("siglip:/models/siglip") == ("siglip", "/models/siglip")
    assert parse_preset("default") is None and parse_preset("/ckpt/a:b") is None
    with pytest.raises(ValueError, match="clip:HUB_ID or clip:FOLDER"):
        parse_preset("clip:")


@pytest.mark.parametrize("kind", KINDS)
def test_preset_vectors_are_the_checkpoints_own_space(kind, dual_dirs, tmp_path):  # noqa: F811
    model = load_model(f"{kind}:{dual_dirs[kind]}", device="cpu")
    assert model.zero_shot and model.blend.trained is False
    images = [Image.open(p) for p in pictures(tmp_path)]
    docs = model.encode_images(images, role="document")  # n D
    queries = model.encode_texts(["stripes", "a noisy picture"], role="query")  # q D
    s = model.backbone.shared_dim
    shared_i = model.backbone.encode_images(images).shared.numpy()
    shared_t = model.backbone.encode_texts(["stripes", "a noisy picture"]).shared.numpy()
    assert docs.shape == (4, model.dim) and not docs[:, s:].any()  # the aligned part is zero, not noise
    np.testing.assert_allclose(queries @ docs.T, shared_t @ shared_i.T, atol=1e-5)


def test_preset_kind_must_match_the_checkpoint(dual_dirs):  # noqa: F811
    with pytest.raises(ValueError, match=r"is a siglip model; use siglip:"):
        load_model(f"clip:{dual_dirs['siglip']}", device="cpu")


def test_preset_calibration_is_borrowed_until_fitted(dual_dirs):  # noqa: F811
    name = "clip:openai/clip-vit-base-patch32"
    assert calibration_path(name) == CALIBRATION_DIR / "clip-openai-clip-vit-base-patch32.json"
    borrowed = load_calibration(f"clip:{dual_dirs['clip']}")
    assert borrowed.calibrated is False and borrowed.params == load_calibration("default").params


@pytest.mark.parametrize("kind", KINDS)
def test_ingest_and_search_through_the_cli(kind, dual_dirs, tmp_path):  # noqa: F811
    home, lib, model = tmp_path / "home", tmp_path / "lib", f"{kind}:{dual_dirs[kind]}"
    pictures(lib)
    r = omnibridge("ingest", str(lib), "--collection", "tiny", home=home, model=model)
    assert r.returncode == 0, r.stderr
    assert "indexed 4" in r.stdout
    # an image query is its own nearest neighbour in the checkpoint's space
    for name in ("gradient", "noise"):
        r = omnibridge("search", "--image", str(lib / f"{name}.png"), "--collection", "tiny", "--mode", "vector",
                       "--min-relevance", "0", "--all-duplicates", "--json", home=home, model=model)
        assert r.returncode == 0, r.stderr
        hits = json.loads(r.stdout)["hits"]
        assert hits[0]["path"].endswith(f"{name}.png")
    r = omnibridge("search", "a red picture", "--collection", "tiny", "--mode", "vector", "--min-relevance", "0",
                   "--all-duplicates", "--json", home=home, model=model)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert len(answer["hits"]) == 4 and answer["calibrated"] is False
