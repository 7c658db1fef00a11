"""Checkpoints: a folder with `config.json` and `model.safetensors` (no pickle anywhere).

config.json records the backbone spec and identity (name, model, widths), the aligner config and the blend;
model.safetensors holds the aligner's weights under the official names, plus `prototypes.image` and
`prototypes.text` (the familiarity gate's pooled training items) once trained. Loading into a backbone that differs from the recorded one fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .backbones import Backbone, build_backbone
from .config import AlignerConfig, load_config_file
from .model import Aligner
from .retrieval import BlendConfig, RetrievalModel

FORMAT = "omnibridge-checkpoint/1"
DEFAULT_DIR = Path(__file__).parent / "weights" / "default"
BUILTIN = {
    "default": "the shipped aligner over the bundled encoders",
    "bridge": "the untrained zero-shot bridge (class-name ensemble + colour mode)",
    "bridge-baseline": "the zero-shot bridge as documented in OFFLINE_MODELS.md, for comparison",
}
# Zero-shot presets: 'clip:MODEL' or 'siglip:MODEL' (a hub id or a local folder) used as they are, with no aligner
# training: their vectors are the checkpoint's own image-text space.
PRESETS = ("clip", "siglip")


def parse_preset(name: str) -> tuple[str, str] | None:
    """'clip:openai/clip-vit-base-patch32' -> ("clip", "openai/clip-vit-base-patch32"); None for other names."""
    kind, sep, model = str(name).partition(":")
    if not sep or kind not in PRESETS:
        return None
    if not model:
        raise ValueError(f"model {name!r} names no checkpoint; use {kind}:HUB_ID or {kind}:FOLDER, "
                         f"e.g. clip:openai/clip-vit-base-patch32")
    return kind, model


def load_preset(name: str, backbone: Backbone | None = None, device=None) -> RetrievalModel:
    """A zero-shot CLIP or SigLIP model (see PRESETS): its own space, no aligner weights (blend untrained)."""
    kind, model = parse_preset(name)
    backbone = backbone or build_backbone({"name": "clip", "model": model}, device=device)
    have = "siglip" if getattr(backbone, "siglip", False) else "clip"
    if have != kind:
        raise ValueError(f"model {name!r} asks for a {kind} checkpoint but {model!r} is a {have} model; "
                         f"use {have}:{model}")
    return create_model("bundled-small", backbone)


def save_checkpoint(model: RetrievalModel, out: str | Path, extra: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.aligner.state_dict().items()}
    for modality, protos in model.prototypes.items():
        tensors[f"prototypes.{modality}"] = protos.detach().cpu().contiguous()
    save_file(tensors, str(out / "model.safetensors.tmp"))  # replaced atomically: a crash leaves the old one
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    config = {
        "format": FORMAT,
        "backbone": model.backbone.spec(),
        "backbone_identity": model.backbone.identity,
        "aligner": model.aligner.cfg.to_dict(),
        "blend": asdict(model.blend),
        **(extra or {}),
    }
    (out / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out / "config.json.tmp", out / "config.json")
    return out


def read_checkpoint_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / "model.safetensors").is_file():
        raise ValueError(
            f"{path} is not an OmniBridge checkpoint (expected config.json and model.safetensors); "
            f"name a folder written by `omnibridge align` or one of {sorted(BUILTIN)}"
        )
    config = json.loads(cfg_file.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} has format {config.get('format')!r}; this version reads {FORMAT!r}")
    return config


def check_backbone(config: dict, backbone: Backbone, where: str) -> None:
    want, have = config["backbone_identity"], backbone.identity
    if want != have:
        raise ValueError(
            f"checkpoint {where} was trained on backbone {want} but the backbone given is {have}; "
            "load it without a backbone (it rebuilds its own) or pass the backbone it was trained on"
        )


def load_model(name_or_path: str | Path = "default", backbone: Backbone | None = None, device=None) -> RetrievalModel:
    """A ready retrieval model: 'default', 'bridge', 'clip:MODEL' / 'siglip:MODEL' (zero-shot presets), or a
    checkpoint folder written by `omnibridge align`."""
    if parse_preset(str(name_or_path)):
        return load_preset(str(name_or_path), backbone, device)
    if str(name_or_path) in ("bridge", "bridge-baseline"):
        spec = {"name": "bundled"} if str(name_or_path) == "bridge" else {"name": "bundled", "top_k": 10,
                                                                          "colour_weight": 0.0, "naming": "baseline"}
        return create_model("bundled-small", backbone or build_backbone(spec, device=device))
    path = DEFAULT_DIR if str(name_or_path) == "default" else Path(name_or_path)
    if str(name_or_path) == "default" and not path.exists():
        raise ValueError(f"the default model is missing from this install ({path}); rebuild it with "
                         "`python bench/default_model.py DATA` or use --model bridge")
    if not path.exists():
        raise ValueError(f"model {str(name_or_path)!r} not found: pass a checkpoint folder, clip:MODEL, siglip:MODEL "
                         f"or one of {sorted(BUILTIN)}")
    config = read_checkpoint_config(path)
    backbone = backbone or build_backbone(config["backbone"], device=device)
    check_backbone(config, backbone, str(path))
    model = RetrievalModel(backbone, Aligner(AlignerConfig.from_dict(config["aligner"])))
    load_weights(model, path, config)
    return model


def load_weights(model: RetrievalModel, path: Path, config: dict) -> None:
    """Put a checkpoint's aligner weights, gate prototypes and blend into `model` (whose aligner has its config)."""
    tensors = load_file(str(path / "model.safetensors"))
    prototypes = {k.split(".", 1)[1]: tensors.pop(k) for k in list(tensors) if k.startswith("prototypes.")}
    missing, unexpected = model.aligner.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.prototypes, model.blend = prototypes, BlendConfig(**config.get("blend", {}))


def create_model(config_name: str, backbone: Backbone, seed: int = 0) -> RetrievalModel:
    """A fresh (untrained) retrieval model whose aligner widths are fitted to the backbone; seeded init."""
    data = load_config_file(config_name)
    cfg = dict(data.get("aligner", data))
    cfg.update(image_input_dim=backbone.image_dim, text_input_dim=backbone.text_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        aligner = Aligner(AlignerConfig.from_dict(cfg))
    return RetrievalModel(backbone, aligner)


def load_official_weights(aligner: Aligner, path: str | Path) -> list[str]:
    """Load the released OmniBridge checkpoint's added modules (safetensors shards) by name; returns missing keys."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    own = aligner.state_dict()
    found = {}
    for f in files:
        found.update({k: v for k, v in load_file(str(f)).items() if k in own})
    if not found:
        raise ValueError(f"no OmniBridge aligner weights found in {path}; expected keys like 'bilm.block.0...'")
    bad = [k for k, v in found.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:5]}: is the aligner built with the 'official' config?")
    aligner.load_state_dict({k: v.to(own[k].dtype) for k, v in found.items()}, strict=False)
    return sorted(set(own) - set(found))


def param_table(aligner: Aligner) -> list[tuple[str, str]]:
    """(checkpoint name, shape like 2048x3584) for every aligner parameter, in registration order."""
    return [(n, "x".join(map(str, p.shape))) for n, p in aligner.named_parameters()]


def meta_aligner(config_name: str) -> Aligner:
    """Build an aligner on the meta device: full structure, no memory."""
    from .config import get_config

    with torch.device("meta"):
        return Aligner(get_config(config_name))
