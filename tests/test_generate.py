"""Generate similar on a tiny Stable Diffusion img2img pipeline built from configs with fixed seeds (no download)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoPipelineForImage2Image,
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from engine.generate import (  # noqa: E402
    GenerationParams,
    Generator,
    GeneratorUnavailable,
    generation_prompt_embeds,
    text_encoder_width,
)
from omnibridge import Aligner  # noqa: E402
from tests.test_model import tiny  # noqa: E402
from tests.utils import TinyBackbone  # noqa: E402

WIDTH = 32  # text-encoder width = UNet cross-attention width = the tiny aligner's d_model
FAST = GenerationParams(n=1, seed=0, strength=0.5, steps=4, guidance_scale=2.0)


def tiny_tokenizer(folder) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single letters (no merges): enough to tokenise any lower-case caption."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(c + "</w>" for c in letters)]:
        vocab[token] = len(vocab)
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_pipeline(tmp) -> StableDiffusionImg2ImgPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=4, norm_num_groups=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=64, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(tmp / "tok"), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    tiny_pipeline(tmp).save_pretrained(tmp / "tiny-sd")
    return tmp / "tiny-sd"


@pytest.fixture(scope="module")
def gen(folder) -> Generator:
    return Generator.load(str(folder), device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))  # 64 x 40: neither square nor native


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_loads_a_local_folder(gen, folder):
    assert type(gen.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert gen.spec == str(folder) and gen.device.type == "cpu"
    assert text_encoder_width(gen.pipe) == WIDTH


def test_a_text_to_image_checkpoint_loads_as_image_to_image(folder, tmp_path, monkeypatch, source):
    StableDiffusionPipeline(**StableDiffusionImg2ImgPipeline.from_pretrained(folder).components).save_pretrained(
        tmp_path / "t2i"
    )
    assert Generator.load(str(tmp_path / "t2i"), "cpu").pipe.__class__ is StableDiffusionImg2ImgPipeline

    def unmapped(*args, **kwargs):  # as for a checkpoint whose class name the auto mapping does not list
        raise ValueError("AutoPipeline can't find a pipeline linked to SomePipeline for None")

    monkeypatch.setattr(AutoPipelineForImage2Image, "from_pretrained", unmapped)
    gen = Generator.load(str(tmp_path / "t2i"), "cpu")  # DiffusionPipeline.from_pretrained + from_pipe
    assert gen.pipe.__class__ is StableDiffusionImg2ImgPipeline
    assert len(gen.generate(source, "a cat", FAST)) == 1


def test_variants_come_with_their_seeds_and_params(gen, source):
    outs = gen.generate(source, "a red cat", GenerationParams(n=3, seed=5, strength=0.5, steps=4))
    assert [o.seed for o in outs] == [5, 6, 7]
    for o in outs:
        assert isinstance(o.image, Image.Image) and o.image.mode == "RGB"
        assert o.image.size == (32, 16)  # longer side: sample_size 16 x VAE factor 2; sides on multiples of 16
        assert o.prompt == "a red cat" and o.model == gen.spec and o.nsfw is None
        assert o.params == {"n": 3, "seed": 5, "strength": 0.5, "steps": 4, "guidance_scale": 7.5,
                            "conditioning": "prompt"}


def test_same_seed_same_image_other_seed_other_image(gen, source):
    first = gen.generate(source, "a cat", FAST)[0].image
    batch = gen.generate(source, "a cat", replace(FAST, n=2))
    assert np.array_equal(pixels(first), pixels(batch[0].image))
    assert not np.array_equal(pixels(first), pixels(batch[1].image))
    alone = gen.generate(source, "a cat", replace(FAST, seed=batch[1].seed))[0]  # a variant's seed regenerates it
    assert np.array_equal(pixels(batch[1].image), pixels(alone.image))


@pytest.mark.parametrize("steps, strength, expected", [(4, 1.0, 4), (4, 0.5, 2), (6, 0.5, 3)])
def test_strength_and_steps_set_the_denoising_steps(gen, source, steps, strength, expected):
    seen = []
    gen.generate(source, "a cat", GenerationParams(n=2, steps=steps, strength=strength),
                 on_step=lambda variant, step: seen.append((variant, step)))
    assert seen == [(v, s) for v in range(2) for s in range(expected)]


def test_prompt_embeds_replace_the_prompt(gen, source):
    embeds = torch.randn(1, 12, WIDTH, generator=torch.Generator().manual_seed(0))
    a = gen.generate(source, "a cat", FAST, prompt_embeds=embeds)[0]
    b = gen.generate(source, "a dog", FAST, prompt_embeds=embeds)[0]
    by_prompt = gen.generate(source, "a cat", FAST)[0]
    assert a.params["conditioning"] == "generation_queries" and a.prompt == "a cat"
    assert np.array_equal(pixels(a.image), pixels(b.image))  # the prompt text is not used
    assert not np.array_equal(pixels(a.image), pixels(by_prompt.image))


def test_prompt_embeds_longer_than_the_text_encoder_get_a_zero_negative(gen, source):
    (out,) = gen.generate(source, "", FAST, prompt_embeds=torch.randn(1, 100, WIDTH))  # 100 > 77 positions
    assert out.image.size == (32, 16)


def test_prompt_embeds_of_the_wrong_width_are_refused(gen, source):
    with pytest.raises(ValueError, match=r"width 16 != StableDiffusionImg2ImgPipeline text-encoder width 32"):
        gen.generate(source, "a cat", FAST, prompt_embeds=torch.randn(1, 12, 16))
    with pytest.raises(ValueError, match=r"1 s d"):
        gen.generate(source, "a cat", FAST, prompt_embeds=torch.randn(2, 12, WIDTH))


def test_aligner_generation_queries_feed_the_pipeline(gen, source):
    aligner = Aligner(tiny()).train()  # d_model 32 = the tiny text encoder, 12 generation queries
    features = TinyBackbone().encode_images([source])
    embeds = generation_prompt_embeds(aligner, features.states, gen.pipe, features.mask)
    assert embeds.shape == (1, 12, WIDTH) and not embeds.requires_grad and aligner.training
    again = generation_prompt_embeds(aligner, features.states, gen.pipe, features.mask)
    assert torch.equal(embeds, again)  # eval mode: no dropout
    (out,) = gen.generate(source, "a cat", FAST, prompt_embeds=embeds)
    assert out.params["conditioning"] == "generation_queries"
    with pytest.raises(ValueError, match=r"d_model 64 != .* width 32"):
        generation_prompt_embeds(Aligner(tiny(d_model=64)), features.states, gen.pipe)
    with pytest.raises(ValueError, match=r"num_generation_queries > 0"):
        generation_prompt_embeds(Aligner(tiny(num_generation_queries=0)), features.states, gen.pipe)


@pytest.mark.parametrize("spec", [None, ""])
def test_no_generator_configured(spec):
    with pytest.raises(GeneratorUnavailable, match=r"OMNIBRIDGE_GENERATOR=<local diffusers folder or hub id>") as e:
        Generator.load(spec)
    assert "HF_HUB_OFFLINE=0" in str(e.value)


def test_a_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(GeneratorUnavailable) as e:
        Generator.load(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "model_index.json" in msg and "save_pretrained" in msg


def test_a_missing_folder_and_an_uncached_hub_id(tmp_path):
    with pytest.raises(GeneratorUnavailable, match=r"no folder .*missing exists"):
        Generator.load(str(tmp_path / "missing"))
    with pytest.raises(GeneratorUnavailable, match=r"HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0"):
        Generator.load("nobody-here/not-a-model")  # tests run with HF_HUB_OFFLINE=1 (conftest)


@pytest.mark.parametrize(
    "change, field",
    [({"n": 0}, "n"), ({"n": 17}, "n"), ({"n": 2.0}, "n"), ({"n": True}, "n"), ({"seed": -1}, "seed"),
     ({"strength": 0}, "strength"), ({"strength": 1.5}, "strength"), ({"steps": 0}, "steps"), ({"steps": 201}, "steps"),
     ({"guidance_scale": -1}, "guidance_scale"), ({"guidance_scale": "7"}, "guidance_scale")],
)
def test_bad_params_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        GenerationParams(**change).check()


def test_too_few_denoising_steps_and_bad_inputs_are_refused(gen, source):
    with pytest.raises(ValueError, match=r"steps \* strength must be >= 1"):
        gen.generate(source, "a cat", GenerationParams(steps=3, strength=0.2))
    with pytest.raises(ValueError, match=r"image must be a PIL image"):
        gen.generate(np.asarray(source), "a cat", FAST)
    with pytest.raises(ValueError, match=r"prompt must be a string"):
        gen.generate(source, None, FAST)
