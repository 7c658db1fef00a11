"""OmniBridge: latent-space alignment of frozen image and text encoders with a bidirectional transformer.

A library: importing it loads no weights and touches no files. Start with `load_model("default")`.
"""

from .checkpoint import create_model, load_model, save_checkpoint
from .config import AlignerConfig, get_config, list_configs
from .model import Aligner
from .retrieval import BlendConfig, RetrievalModel

__all__ = [
    "Aligner",
    "AlignerConfig",
    "BlendConfig",
    "RetrievalModel",
    "create_model",
    "get_config",
    "list_configs",
    "load_model",
    "save_checkpoint",
]
