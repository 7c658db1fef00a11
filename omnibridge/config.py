"""Aligner configuration: one dataclass, named configurations as JSON files in `configs/`.

The official configuration (`official.json`) reproduces the modules OmniBridge adds on top of Qwen2-VL-7B;
the small ones run on a laptop CPU over the bundled encoders. One code path serves all of them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass
class AlignerConfig:
    # --- backbone side -------------------------------------------------------------------------------
    image_input_dim: int = 1280  # width of the backbone's image token states
    text_input_dim: int = 384  # width of the backbone's text token states
    # --- BiTransformer (T5-encoder shaped, bidirectional) -------------------------------------------
    d_model: int = 256  # BiTransformer width (official: 2048)
    num_layers: int = 2  # number of blocks (official: 24)
    num_heads: int = 4  # attention heads (official: 32)
    d_kv: int = 64  # per-head width (official: 64)
    d_ff: int = 512  # gated-GELU feed-forward width (official: 5120)
    dropout: float = 0.1  # dropout after every sublayer and at the end (official: 0.1)
    layer_norm_eps: float = 1e-6  # T5 RMS norm epsilon
    relative_attention_num_buckets: int = 32  # T5 relative position buckets (16 per direction)
    relative_attention_max_distance: int = 128  # distance covered by the log-spaced buckets
    cross_attn_layer_ids: list[int] = field(default_factory=lambda: [0])  # blocks that cross-attend to the backbone
    # --- learnable queries ---------------------------------------------------------------------------
    num_generation_queries: int = 0  # `bilm.query_tokens` (official: 256); 0 = no generation queries
    num_image_queries: int = 16  # retrieval queries for images (official: 128)
    num_text_queries: int = 16  # retrieval queries for texts (official: 96)
    # --- retrieval heads -----------------------------------------------------------------------------
    pool_heads: int = 4  # heads of each attention-pooling block (official: 16)
    embed_dim: int = 256  # retrieval embedding width (official: 1024)
    pool_layer_norm_eps: float = 1e-5  # affine LayerNorms of the pooling blocks
    logit_scale_init: float = 2.6592600369262695  # log(1 / 0.07)
    init_std: float = 0.02  # std of the learnable queries at init

    def __post_init__(self) -> None:
        bad = [i for i in self.cross_attn_layer_ids if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"cross_attn_layer_ids {bad} are outside 0..{self.num_layers - 1}; "
                "list block indices of this BiTransformer"
            )
        if self.d_model % self.pool_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by pool_heads {self.pool_heads}")

    @property
    def shared_projection(self) -> bool:
        """One backbone->BiTransformer projection when both modalities have the same width (as in Qwen2-VL)."""
        return self.image_input_dim == self.text_input_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AlignerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown aligner config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def list_configs() -> list[str]:
    """Names of the bundled configurations."""
    return sorted(p.name[:-5] for p in resources.files("omnibridge.configs").iterdir() if p.name.endswith(".json"))


def load_config_file(name_or_path: str) -> dict:
    """The JSON of a named configuration (see `list_configs`) or of a path to a JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"config file {path} not found; pass an existing .json or one of {list_configs()}")
        return json.loads(path.read_text())
    res = resources.files("omnibridge.configs") / f"{name_or_path}.json"
    if not res.is_file():
        raise ValueError(f"unknown config {name_or_path!r}; choose one of {list_configs()} or pass a .json path")
    return json.loads(res.read_text())


def get_config(name_or_path: str) -> AlignerConfig:
    """The aligner configuration of a named configuration or JSON file (`{"aligner": {...}, ...}`)."""
    data = load_config_file(name_or_path)
    return AlignerConfig.from_dict(data.get("aligner", data))
