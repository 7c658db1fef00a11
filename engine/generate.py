"""Generate similar: image-to-image variants of a retrieved image with any diffusers checkpoint.

Legend: b batch, s conditioning positions, d text-encoder width, q generation queries, n backbone tokens,
i backbone width.

No diffusion weights ship in any package, so a generator must be configured (`OMNIBRIDGE_GENERATOR` = a local
diffusers folder or a hub id); without one, `Generator.load` raises `GeneratorUnavailable` saying so. It never
returns a placeholder image.

Conditioning is the retrieved image's caption or the query, as a prompt. Where the pipeline allows it (one text
encoder, `prompt_embeds` accepted: Stable Diffusion 1.x/2.x img2img), OmniBridge generation queries can replace
the prompt: the aligner's BiTransformer output stands in for the text encoder's output (the official code does
this for HunyuanDiT's mT5 encoder). That needs an aligner trained for *this* pipeline's text encoder:
  - `d_model` = the text encoder's width d (768 for SD 1.x, 1024 for SD 2.x),
  - `num_generation_queries` = the tokenizer's `model_max_length` (77 for CLIP),
  - trained with `omnibridge.losses.generation_query_loss`, where for each caption
    `input_embeds = text_encoder.get_input_embeddings()(ids)` and `target = text_encoder(ids)[0]` (ids padded to
    max length), and `memory_states` are the backbone's image token states of the captioned image.
At generation, `generation_prompt_embeds(aligner, backbone.encode_images([image]).states, gen.pipe)` gives the
b q d tensor that `Generator.generate(..., prompt_embeds=...)` takes. The released OmniBridge checkpoint's queries
(256 x 2048, mT5-XL for HunyuanDiT) fit no img2img pipeline in diffusers, so they cannot feed this path.

Example:
    gen = Generator.load("stable-diffusion-v1-5/stable-diffusion-v1-5")
    outs = gen.generate(Image.open("hit.jpg"), "a red bicycle by a wall", GenerationParams(n=4, seed=7))
    outs[2].image.save("variant.png")  # outs[2].seed == 9 regenerates exactly this variant with n=1
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

from omnibridge.backbones.base import default_device, to_rgb

CONFIGURE = (
    "set OMNIBRIDGE_GENERATOR=<local diffusers folder or hub id> to an image-to-image capable checkpoint, "
    "e.g. a Stable Diffusion one (stable-diffusion-v1-5/stable-diffusion-v1-5); a hub id downloads on first use, "
    "which needs HF_HUB_OFFLINE=0"
)


class GeneratorUnavailable(RuntimeError):
    """No generator is configured, or the configured one cannot load; the message names the fix."""


@dataclass
class GenerationParams:
    n: int = 4  # variants to generate, 1..16
    seed: int = 0  # variant i uses seed + i
    strength: float = 0.6  # how far from the source image, 0 < strength <= 1 (1 = from pure noise)
    steps: int = 30  # scheduler steps at strength 1; img2img runs about steps * strength of them
    guidance_scale: float = 7.5  # classifier-free guidance, 0..50 (<= 1 turns it off)

    def check(self) -> "GenerationParams":
        """Raise ValueError naming the field and its allowed range; returns self."""
        rules = [
            ("n", _integer(self.n) and 1 <= self.n <= 16, "an integer in 1..16"),
            ("seed", _integer(self.seed) and 0 <= self.seed < 2**63 - 16, "an integer in 0..2**63-17"),
            ("strength", _number(self.strength) and 0 < self.strength <= 1, "a number with 0 < strength <= 1"),
            ("steps", _integer(self.steps) and 1 <= self.steps <= 200, "an integer in 1..200"),
            ("guidance_scale", _number(self.guidance_scale) and 0 <= self.guidance_scale <= 50, "a number in 0..50"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if int(self.steps * self.strength) < 1:  # the img2img scheduler would run no step at all
            raise ValueError(
                f"steps * strength must be >= 1 denoising step, got {self.steps} * {self.strength}; "
                "raise steps or strength"
            )
        return self


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class Output:
    image: Image.Image
    seed: int  # this variant's seed: GenerationParams(seed=seed, n=1) regenerates it
    prompt: str
    model: str  # the generator spec it came from
    params: dict[str, Any]  # GenerationParams fields + "conditioning": "prompt" or "generation_queries"
    nsfw: bool | None = None  # the checkpoint's safety checker blanked the image; None = it has no checker


def text_encoder_width(pipe) -> int:
    """Width d of the pipeline's text-encoder output, the width `prompt_embeds` must have."""
    config = getattr(getattr(pipe, "text_encoder", None), "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)  # CLIP / T5 configs
    if width is None:
        raise ValueError(f"{type(pipe).__name__} has no text encoder with a known width; condition it with a prompt")
    return int(width)


def generation_prompt_embeds(aligner, memory_states: torch.Tensor, pipe, memory_mask=None) -> torch.Tensor:
    """OmniBridge generation queries for `pipe`: b q d, run in eval mode without gradients.

    aligner: an `omnibridge.Aligner` trained with the generation-query objective against `pipe`'s text encoder
    (see the module docstring). memory_states: b n i backbone image token states, memory_mask: b n bool.
    """
    width = text_encoder_width(pipe)
    if not aligner.cfg.num_generation_queries:
        raise ValueError("this aligner has no generation queries; train one with num_generation_queries > 0")
    if aligner.cfg.d_model != width:
        raise ValueError(
            f"aligner d_model {aligner.cfg.d_model} != {type(pipe).__name__} text-encoder width {width}; "
            "train the generation queries against this pipeline's text encoder"
        )
    was_training = aligner.training
    aligner.eval()
    try:
        with torch.no_grad():
            return aligner.generation_queries(memory_states, memory_mask)  # b q d
    finally:
        aligner.train(was_training)


class Generator:
    """One loaded diffusers image-to-image pipeline. Build it with `Generator.load`."""

    def __init__(self, pipe, spec: str, device: torch.device):
        self.pipe, self.spec, self.device = pipe, spec, device
        self._call_args = set(inspect.signature(pipe.__call__).parameters)

    @classmethod
    def load(cls, spec: str | None, device: str | torch.device | None = None) -> "Generator":
        """Load a diffusers checkpoint (local folder or hub id) as img2img; on CUDA in float16 when present."""
        if not spec:
            raise GeneratorUnavailable(f"no generator is configured; {CONFIGURE}")
        device = torch.device(device) if device else default_device()
        try:
            pipe = _load_img2img(spec, torch.float16 if device.type == "cuda" else torch.float32)
        except Exception as e:
            raise GeneratorUnavailable(_load_failure(spec, e)) from e
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, spec, device)

    def generate(
        self,
        image: Image.Image,  # the retrieved image, any mode and size
        prompt: str,  # its caption or the query; with prompt_embeds it is only recorded
        params: GenerationParams | None = None,
        prompt_embeds: torch.Tensor | None = None,  # 1 s d generation queries (see generation_prompt_embeds)
        on_step: Callable[[int, int], None] | None = None,  # called (variant, step) after each denoising step
    ) -> list[Output]:
        """params.n image-to-image variants of `image`, variant i seeded with params.seed + i."""
        # 1. Check inputs
        params = (params or GenerationParams()).check()
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image (open the retrieved file first), got {type(image).__name__}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string (the caption or the query), got {type(prompt).__name__}")
        conditioning = {"prompt": prompt} if prompt_embeds is None else self._embeds_conditioning(prompt_embeds)
        if on_step is not None and "callback_on_step_end" not in self._call_args:
            raise ValueError(f"{type(self.pipe).__name__} takes no step callback; call generate without on_step")
        used = "generation_queries" if "prompt_embeds" in conditioning else "prompt"
        record = {**dataclasses.asdict(params), "conditioning": used}
        # 2. Source image at the model's native resolution
        source = _fit(to_rgb(image), _native_side(self.pipe), 8 * getattr(self.pipe, "vae_scale_factor", 8))
        # 3. One call per variant, each with its own CPU-seeded generator, so a variant's seed alone reproduces it
        outputs = []
        for i in range(params.n):
            seed = params.seed + i
            extra = {}
            if on_step is not None:
                extra["callback_on_step_end"] = _step_callback(on_step, i)
            result = self.pipe(
                image=source,
                strength=params.strength,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed),
                **conditioning,
                **extra,
            )
            flags = getattr(result, "nsfw_content_detected", None)
            outputs.append(
                Output(
                    image=result.images[0],
                    seed=seed,
                    prompt=prompt,
                    model=self.spec,
                    params=dict(record),
                    nsfw=bool(flags[0]) if flags else None,
                )
            )
        return outputs

    def _embeds_conditioning(self, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """prompt_embeds (and, if needed, a negative) for the pipeline in place of the prompt."""
        name = type(self.pipe).__name__
        if "prompt_embeds" not in self._call_args or "pooled_prompt_embeds" in self._call_args:
            raise ValueError(
                f"{name} cannot be conditioned by generation queries alone (it needs pooled or second-encoder "
                "embeddings); use a single-text-encoder checkpoint such as Stable Diffusion 1.x/2.x, or the prompt"
            )
        if embeds.ndim != 3 or embeds.shape[0] != 1:
            raise ValueError(f"prompt_embeds must be 1 s d (one per source image), got {tuple(embeds.shape)}")
        width = text_encoder_width(self.pipe)
        if embeds.shape[-1] != width:
            raise ValueError(
                f"prompt_embeds width {embeds.shape[-1]} != {name} text-encoder width {width}; "
                f"use generation queries trained against this pipeline's text encoder (d_model={width})"
            )
        embeds = embeds.to(self.device, self.pipe.text_encoder.dtype)  # 1 s d
        out = {"prompt_embeds": embeds}
        # The negative for classifier-free guidance: the pipeline encodes the empty prompt at length s itself,
        # which the text encoder can do only up to its position count; beyond it, zeros.
        positions = getattr(self.pipe.text_encoder.config, "max_position_embeddings", None)
        if positions is not None and embeds.shape[1] > positions:
            out["negative_prompt_embeds"] = torch.zeros_like(embeds)
        return out


def _load_img2img(spec: str, dtype: torch.dtype):
    """The checkpoint's image-to-image pipeline; a pipeline the auto mapping does not know by its class name is
    loaded as itself and converted with `from_pipe` (text-to-image -> image-to-image, sharing its modules)."""
    from diffusers import AutoPipelineForImage2Image, DiffusionPipeline

    try:
        return AutoPipelineForImage2Image.from_pretrained(spec, dtype=dtype)
    except ValueError as e:  # "AutoPipeline can't find a pipeline linked to ..."
        try:
            return AutoPipelineForImage2Image.from_pipe(DiffusionPipeline.from_pretrained(spec, dtype=dtype))
        except Exception:
            raise e from None


def _step_callback(on_step: Callable[[int, int], None], variant: int):
    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        on_step(variant, step)
        return tensors

    return callback


def _native_side(pipe) -> int:
    """The longer image side (pixels) the checkpoint was trained at: latent sample size x VAE scale factor."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    config = getattr(denoiser, "config", None)
    latent = getattr(pipe, "default_sample_size", None) or getattr(config, "sample_size", None)
    if isinstance(latent, (list, tuple)):
        latent = max(latent)
    return int(latent or 64) * getattr(pipe, "vae_scale_factor", 8)


def _fit(image: Image.Image, side: int, multiple: int) -> Image.Image:
    """Resize so the longer side is `side` (aspect kept) and both sides are multiples of `multiple`."""
    scale = side / max(image.size)
    w, h = (max(multiple, round(x * scale / multiple) * multiple) for x in image.size)
    return image if (w, h) == image.size else image.resize((w, h), Image.Resampling.LANCZOS)


def _load_failure(spec: str, error: Exception) -> str:
    """The message for a generator that does not load: the value, the error and the fix."""
    path = Path(spec).expanduser()
    reason = f"{type(error).__name__}: {str(error).strip().rstrip('.')}"
    if isinstance(error, ImportError):
        fix = "pip install the missing package named above (generation itself needs: pip install diffusers)"
    elif path.is_dir() and not (path / "model_index.json").is_file():
        fix = (
            f"{spec} is not a diffusers pipeline folder (no model_index.json); point OMNIBRIDGE_GENERATOR at a folder "
            "written by pipeline.save_pretrained(...) or at a hub id"
        )
    elif path.exists():
        fix = f"check that {spec} is a complete diffusers pipeline with an image-to-image variant; {CONFIGURE}"
    elif spec.startswith(("/", ".", "~")) or spec.count("/") != 1:
        fix = f"no folder {spec} exists; point OMNIBRIDGE_GENERATOR at an existing diffusers folder or a hub id"
    elif hub_constants.HF_HUB_OFFLINE:
        fix = (
            f"hub id {spec} is not in the local cache and HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 once to download it, "
            "or download it elsewhere and set OMNIBRIDGE_GENERATOR to that folder"
        )
    else:
        fix = f"check the hub id {spec} (owner/name of a diffusers checkpoint) and that the hub is reachable"
    return f"could not load generator OMNIBRIDGE_GENERATOR={spec!r}: {reason}. Fix: {fix}"
