"""Backbones by name: `bundled` (offline default), `clip` (CLIP or SigLIP), `qwen2-vl` (the official one)."""

from __future__ import annotations

from .base import Backbone, Features

NAMES = ("bundled", "clip", "qwen2-vl")


def build_backbone(spec: dict, device=None) -> Backbone:
    """Build a backbone from its spec: {"name": "bundled"} | {"name": "clip", "model": ID} | {"name": "qwen2-vl", "model": ID, "lora": DIR}."""
    name = spec.get("name")
    if name == "bundled":
        from .bundled import BundledBackbone

        return BundledBackbone(device=device, top_k=spec.get("top_k", 10), colour_weight=spec.get("colour_weight", 0.5),
                               naming=spec.get("naming", "ensemble"))
    if name in ("clip", "qwen2-vl") and not spec.get("model"):
        raise ValueError(f"backbone {name!r} needs a model: a hub id or a local path (e.g. --backbone {name}:PATH)")
    if name == "clip":
        from .clip import ClipBackbone

        return ClipBackbone(spec["model"], device=device)
    if name == "qwen2-vl":
        from .qwen2vl import Qwen2VLBackbone

        sizes = {k: spec[k] for k in ("min_pixels", "max_pixels") if k in spec}
        return Qwen2VLBackbone(spec["model"], lora=spec.get("lora"), device=device, **sizes)
    raise ValueError(f"unknown backbone {name!r}; choose one of {list(NAMES)}")


def parse_backbone(text: str) -> dict:
    """'bundled' | 'clip:MODEL' | 'qwen2-vl:MODEL[@LORA_DIR]' -> a backbone spec."""
    name, _, model = text.partition(":")
    spec: dict = {"name": name}
    if model:
        model, _, lora = model.partition("@")
        spec["model"] = model
        if lora:
            spec["lora"] = lora
    return spec


__all__ = ["Backbone", "Features", "build_backbone", "parse_backbone", "NAMES"]
