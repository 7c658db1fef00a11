"""Hub backbones (CLIP, SigLIP, Qwen2-VL, Qwen2-VL + LoRA) on tiny random models built in tmp dirs: no download.

Legend: b batch, n tokens, i width.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from omnibridge.backbones.clip import ClipBackbone
from omnibridge.backbones.qwen2vl import Qwen2VLBackbone, preprocess_caption

CORPUS = [
    "system user assistant You are a helpful assistant.",
    "a dog runs on the grass",
    "two people ride bikes in the city at night",
    "a red car parked near the beach",
]
SHORT, LONG = "a dog", "two people ride bikes in the city at night near a red car"
# Qwen2-VL-7B-Instruct's chat template (chat_template.json), verbatim.
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIALS += ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def byte_bpe(specials: list[str], bos_eos: tuple[str, str] | None = None, **kw) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in a few ms on CORPUS; specials get the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    if bos_eos:
        bos, eos = bos_eos
        single = f"{bos} $A {eos}"
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


def same_valid(f_one, f_many, k: int = 0, row: int = 0) -> None:
    """Item `row` of f_many has the same valid states (and mask) as item k of f_one."""
    n = int(f_one.mask[k].sum())
    assert torch.equal(f_one.mask[k, :n], f_many.mask[row, :n]) and int(f_many.mask[row].sum()) == n
    torch.testing.assert_close(f_one.states[k, :n], f_many.states[row, :n], atol=1e-4, rtol=1e-4)


# -- CLIP / SigLIP ----------------------------------------------------------------------------------------------
TOWERS = dict(intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def dual_dirs(tmp_path_factory) -> dict[str, str]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dual")
    # CLIP: eos id 3 (id 2 would switch CLIP to its legacy argmax pooling), pad 0; saved as a CLIPProcessor.
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = byte_bpe(["<pad>", "<unk>", bos, eos], (bos, eos), pad_token="<pad>", unk_token="<unk>",
                   bos_token=bos, eos_token=eos, model_max_length=16)
    ids = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, max_position_embeddings=16, **ids, **TOWERS),
        vision_config=dict(hidden_size=24, image_size=32, patch_size=8, **TOWERS),
        projection_dim=16,
    )
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(cfg).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(root / "clip")
    # SigLIP: tokenizer and image processor saved side by side, no processor config (the fallback path).
    tok = byte_bpe(["<pad>", "<unk>", "</s>"], None, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                   model_max_length=12)
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, max_position_embeddings=12, projection_size=16, **TOWERS),
        vision_config=dict(hidden_size=16, image_size=32, patch_size=8, **TOWERS),  # SigLIP: pooled image = width
    )
    SiglipModel(cfg).save_pretrained(root / "siglip")
    tok.save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    return {"clip": str(root / "clip"), "siglip": str(root / "siglip")}


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual(request, dual_dirs) -> ClipBackbone:
    return ClipBackbone(dual_dirs[request.param], device="cpu")


IMAGE_DIM = {False: 24, True: 16}  # CLIP, SigLIP


def test_dual_dims_spec_and_frozen(dual):
    assert (dual.name, dual.image_dim, dual.text_dim, dual.shared_dim) == ("clip", IMAGE_DIM[dual.siglip], 32, 16)
    assert dual.spec() == {"name": "clip", "model": dual.model_id}
    assert not dual.net.training and not any(p.requires_grad for p in dual.net.parameters())


def test_dual_images(dual):
    a, b = image(40, 32, 0), image(64, 48, 1, mode="RGBA")
    f = dual.encode_images([a, b])
    n = 16 + (0 if dual.siglip else 1)  # (32/8)^2 patches, + CLS for CLIP
    assert f.states.shape == (2, n, IMAGE_DIM[dual.siglip]) and f.mask.shape == (2, n) and bool(f.mask.all())
    assert f.shared.shape == (2, 16)
    torch.testing.assert_close(f.shared.norm(dim=-1), torch.ones(2))
    one = dual.encode_images([a])
    same_valid(one, f)
    torch.testing.assert_close(one.shared[0], f.shared[0], atol=1e-4, rtol=1e-4)


def test_dual_texts(dual):
    f = dual.encode_texts([SHORT, LONG])
    lengths = [min(len(dual.tokenizer(t)["input_ids"]), dual.max_length) for t in (SHORT, LONG)]
    assert f.mask.sum(1).tolist() == lengths and f.states.shape[-1] == 32
    assert f.states.shape[1] == (12 if dual.siglip else max(lengths))  # SigLIP: always padded to its full length
    torch.testing.assert_close(f.shared.norm(dim=-1), torch.ones(2))
    one = dual.encode_texts([SHORT])
    same_valid(one, f)
    torch.testing.assert_close(one.shared[0], f.shared[0], atol=1e-4, rtol=1e-4)
    long = dual.encode_texts([" ".join(["dog"] * 100)])
    assert long.states.shape[1] == dual.max_length and bool(long.mask.all())  # truncated, not an error


def test_clip_shared_is_the_models_zero_shot_space(dual_dirs):
    bb = ClipBackbone(dual_dirs["clip"], device="cpu")
    ims, texts = [image(32, 32, 3)], [SHORT, LONG]
    tok = bb.tokenizer(texts, padding=True, return_tensors="pt")
    pix = bb.image_processor(images=ims, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = bb.net(**tok, pixel_values=pix)
    torch.testing.assert_close(bb.encode_texts(texts).shared, out.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bb.encode_images(ims).shared, out.image_embeds, atol=1e-5, rtol=1e-5)


def test_dual_errors(tmp_path, dual_dirs, qwen_dir):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=r"could not load CLIP/SigLIP model '.*no-such-model'.*local path"):
        ClipBackbone(missing, device="cpu")
    with pytest.raises(ValueError, match=r"'qwen2_vl' model, expected one of"):
        ClipBackbone(qwen_dir, device="cpu")


# -- Qwen2-VL ---------------------------------------------------------------------------------------------------
PIX = dict(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)  # 4..16 image tokens per image


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("qwen2vl")
    tok = byte_bpe(QWEN_SPECIALS, None, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = QWEN_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4},
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )  # head_dim 8: M-RoPE sections (t, h, w) = (2, 1, 1) rotary pairs
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    Qwen2VLImageProcessor().save_pretrained(root)
    config = json.loads((root / "preprocessor_config.json").read_text())  # as on the hub: min/max_pixels keys
    config.update(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # wide; the backbone must narrow them itself
    (root / "preprocessor_config.json").write_text(json.dumps(config))
    return str(root)


@pytest.fixture(scope="module")
def lora_dir(qwen_dir, tmp_path_factory) -> str:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0
    path = tmp_path_factory.mktemp("lora")
    get_peft_model(base, cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def qwen(qwen_dir) -> Qwen2VLBackbone:
    return Qwen2VLBackbone(qwen_dir, device="cpu", **PIX)


def test_qwen_dims_spec_and_frozen(qwen, qwen_dir):
    assert (qwen.name, qwen.image_dim, qwen.text_dim, qwen.shared_dim) == ("qwen2-vl", 32, 32, 0)
    assert qwen.spec() == {"name": "qwen2-vl", "model": qwen_dir, "lora": None, **PIX}
    assert not qwen.net.training and not any(p.requires_grad for p in qwen.net.parameters())


def test_qwen_images_per_sample_tokens_and_batching(qwen):
    small, big, huge = image(56, 56, 0), image(112, 84, 1, mode="L"), image(224, 224, 2)
    f = qwen.encode_images([small, big, huge])
    # 56x56 -> 4x4 patches -> 4 tokens; 112x84 -> 8x6 -> 12; 224x224 is capped by max_pixels -> 8x8 -> 16
    assert f.mask.sum(1).tolist() == [4, 12, 16] and f.states.shape == (3, 16, 32) and f.shared is None
    assert float(f.states[~f.mask].abs().sum()) == 0.0
    same_valid(qwen.encode_images([small]), f, row=0)  # padded in the batch, alone it is not
    same_valid(qwen.encode_images([big]), f, row=1)  # not sample 0: its own image-token offset
    two = qwen.encode_images([big, small])
    same_valid(two, f, k=0, row=1)
    same_valid(two, f, k=1, row=0)


def test_qwen_images_use_3d_mrope(qwen):
    """States equal a forward with get_rope_index's 3D positions, and differ from plain 1D positions."""
    im = image(112, 84, 1)
    got = qwen.encode_images([im]).states[0]  # n i
    vis = qwen.image_processor(images=[im], return_tensors="pt")
    n = int(vis["image_grid_thw"].prod() // 4)
    at = qwen.image_ids.index(qwen.image_token_id)
    ids = torch.tensor([qwen.image_ids[:at] + [qwen.image_token_id] * n + qwen.image_ids[at + 1 :]])
    types = (ids == qwen.image_token_id).int()
    pos3d, _ = qwen.net.get_rope_index(ids, types, vis["image_grid_thw"])
    pos1d = torch.arange(ids.shape[1]).expand(3, 1, -1)
    def run(pos):  # n i: states at the image tokens with the given positions
        with torch.no_grad():
            out = qwen.net(input_ids=ids, position_ids=pos, pixel_values=vis["pixel_values"],
                           image_grid_thw=vis["image_grid_thw"])
        return out.last_hidden_state[0][types[0].bool()]

    torch.testing.assert_close(got, run(pos3d), atol=1e-5, rtol=1e-5)
    assert (got - run(pos1d)).abs().max() > 1e-3


def test_qwen_texts_take_the_caption_tokens(qwen):
    texts = ["A Dog!", "Two people (ride) bikes: in the city at night."]
    f = qwen.encode_texts(texts)
    captions = [preprocess_caption(t) for t in texts]
    counts = [len(qwen.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in captions]
    assert f.mask.sum(1).tolist() == counts and f.states.shape == (2, max(counts), 32) and f.shared is None
    assert float(f.states[~f.mask].abs().sum()) == 0.0
    for k, caption in enumerate(captions):  # the states sit exactly at the caption's tokens inside the prompt
        ids = qwen.tokenizer(qwen._render([{"type": "text", "text": caption}]), add_special_tokens=False)["input_ids"]
        cap = qwen.tokenizer(caption, add_special_tokens=False)["input_ids"]
        start = next(s for s in range(len(ids)) if ids[s : s + len(cap)] == cap)
        with torch.no_grad():
            hidden = qwen.net(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(f.states[k, : counts[k]], hidden[start : start + len(cap)], atol=1e-4, rtol=1e-4)
    same_valid(qwen.encode_texts([texts[0]]), f)


def test_qwen_template_fallback_and_empty_inputs(qwen):
    rendered = qwen._render([{"type": "image"}])
    saved, qwen.tokenizer.chat_template = qwen.tokenizer.chat_template, None
    try:
        assert qwen._render([{"type": "image"}]) == rendered
    finally:
        qwen.tokenizer.chat_template = saved
    assert qwen.encode_texts([]).states.shape == (0, 0, 32) and qwen.encode_images([]).mask.shape == (0, 0)
    with pytest.raises(ValueError, match=r"caption '\.\.\. !' is empty after preprocessing"):
        qwen.encode_texts(["a dog", "... !"])


def test_states_feed_a_trainable_head(qwen):
    """no_grad (not inference_mode) features can enter autograd downstream."""
    head = torch.nn.Linear(32, 4)
    head(qwen.encode_texts([SHORT]).states).sum().backward()
    assert head.weight.grad is not None


def test_preprocess_caption():
    messy = 'A Dog! (running) "fast"; on: the~beach #1 *wow*.'
    assert preprocess_caption(messy) == "a dog running fast on the beach 1 wow"
    assert preprocess_caption("  Two\n\tcats   sit.  ") == "two cats sit"
    assert preprocess_caption(" ".join(f"w{k}" for k in range(60))) == " ".join(f"w{k}" for k in range(50))
    assert preprocess_caption('.!"()*#:;~') == ""


def test_qwen_lora(qwen, qwen_dir, lora_dir):
    from peft import PeftModel

    bb = Qwen2VLBackbone(qwen_dir, lora=lora_dir, device="cpu", **PIX)
    assert bb.spec()["lora"] == lora_dir
    assert not any("lora" in name for name, _ in bb.net.named_parameters())  # merged into the base weights
    texts, ims = [SHORT, LONG], [image(56, 56, 0), image(112, 84, 1)]
    f, base = bb.encode_texts(texts), qwen.encode_texts(texts)
    assert torch.equal(f.mask, base.mask) and (f.states - base.states).abs().max() > 1e-3
    assert bb.encode_images(ims).mask.sum(1).tolist() == [4, 12]
    # merged weights give what the unmerged adapter gives
    peft = PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir), lora_dir).eval()
    ids = torch.tensor([bb.tokenizer(bb.prefix + SHORT + bb.suffix, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = peft.base_model.model.model(input_ids=ids).last_hidden_state[0]  # L i
    n, p = int(f.mask[0].sum()), len(bb.prefix_ids)
    torch.testing.assert_close(f.states[0, :n], hidden[p : p + n], atol=1e-4, rtol=1e-4)


def test_qwen_errors(tmp_path, qwen_dir):
    with pytest.raises(ValueError, match=r"could not load Qwen2-VL model '.*no-such-model'.*local path"):
        Qwen2VLBackbone(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ValueError, match=r"could not load LoRA adapter '.*no-such-adapter'"):
        Qwen2VLBackbone(qwen_dir, lora=str(tmp_path / "no-such-adapter"), device="cpu")


@pytest.mark.hub
def test_real_clip_checkpoint_from_the_hub(monkeypatch):
    """Off by default (-m hub): a real CLIP checkpoint downloaded from the hub puts a red image next to 'red'."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once at import

    clip = ClipBackbone("openai/clip-vit-base-patch32", device="cpu")
    images = [Image.new("RGB", (224, 224), (230, 20, 20)), Image.new("RGB", (224, 224), (20, 20, 230))]
    sims = clip.encode_texts(["a red square", "a blue square"]).shared @ clip.encode_images(images).shared.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
