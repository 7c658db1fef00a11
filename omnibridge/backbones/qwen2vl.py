"""Frozen Qwen2-VL backbone on OmniBridge's retrieval path: last-layer LLM states at image / caption tokens.

Legend: b batch, L prompt tokens, n image or caption tokens, i hidden size.

Both modalities go through the chat template (default system prompt, one user turn, assistant header):
  image: user turn = <|vision_start|><|image_pad|>*n<|vision_end|>, states taken at the image-pad tokens
  text:  user turn = preprocess_caption(caption),             states taken at the caption's own tokens
The states are the LLM's last hidden states (after its final RMSNorm), left-aligned into b x max_n x i with a mask.

Fixes of the official code's defects (see reference/OMNIBRIDGE_NOTES.md, section 5): prompts are always padded on
the right with a real attention mask, the model computes the 3D M-RoPE positions for every image prompt, image
tokens are located in each sample (not at sample 0's offset), and the caption span is found from the tokenised
template prefix and suffix (not a hard-coded 14) and checked against each sample's ids.

Inputs are built from the checkpoint's tokenizer + image processor rather than Qwen2VLProcessor, whose
transformers 5 class needs torchvision (for its video processor) even for images; the image-pad expansion is
the processor's rule: one pad per merged patch, grid_t * grid_h * grid_w / merge_size**2.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from PIL import Image

from .base import Backbone, Features, default_device, to_rgb

IMAGE_PAD = "<|image_pad|>"
VISION = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"
# Qwen2-VL's own template for one user turn; used only when the checkpoint ships no chat template.
DEFAULT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
MARKER = "\x00CAPTION\x00"  # stands in for the caption while the template is rendered and split
MAX_WORDS = 50


def preprocess_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """BLIP-style caption cleaning: lower-case, .!"()*#:;~ become spaces, whitespace collapsed, first 50 words."""
    words = re.sub(r'[.!"()*#:;~]', " ", text.lower()).split()
    return " ".join(words[:max_words])


class Qwen2VLBackbone(Backbone):
    name = "qwen2-vl"

    def __init__(
        self,
        model: str,
        lora: str | None = None,
        device: torch.device | str | None = None,
        min_pixels: int = 256 * 28 * 28,
        max_pixels: int = 1024 * 28 * 28,
    ):
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

        self.model_id, self.lora = str(model), (str(lora) if lora else None)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        device = torch.device(device or default_device())
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            net = Qwen2VLForConditionalGeneration.from_pretrained(self.model_id, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            # min/max_pixels keys, not `size`: hub configs carry them and they would override a `size` kwarg
            self.image_processor = AutoImageProcessor.from_pretrained(
                self.model_id, min_pixels=min_pixels, max_pixels=max_pixels
            )
        except Exception as e:
            raise ValueError(
                f"could not load Qwen2-VL model {self.model_id!r}: {e}; "
                "pass a local path or a hub id reachable from this machine"
            ) from e
        if self.lora:
            net = self._merge_lora(net)
        self.net = net.model.eval().requires_grad_(False)  # Qwen2VLModel: vision tower + LLM, no lm_head
        self.image_dim = self.text_dim = net.config.text_config.hidden_size
        self.shared_dim = 0

        self.image_token_id = net.config.image_token_id
        if self.tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(
                f"tokenizer of {self.model_id!r} maps {IMAGE_PAD} to {self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)},"
                f" but the model's image_token_id is {self.image_token_id}; use the tokenizer saved with the model"
            )
        self.merge = self.image_processor.merge_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        image_prompt = self._render([{"type": "image"}])
        self.image_ids = self._ids(image_prompt)  # prompt with a single image pad, expanded per image
        if self.image_ids.count(self.image_token_id) != 1:
            raise ValueError(f"the chat template of {self.model_id!r} should hold one {IMAGE_PAD}: {image_prompt!r}")
        prefix, suffix = self._render([{"type": "text", "text": MARKER}]).split(MARKER)
        self.prefix, self.suffix = prefix, suffix
        self.prefix_ids, self.suffix_ids = self._ids(prefix), self._ids(suffix)
        self.to(device)

    def _merge_lora(self, net):
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(net, self.lora).merge_and_unload()
        except Exception as e:
            raise ValueError(
                f"could not load LoRA adapter {self.lora!r} onto {self.model_id!r}: {e}; "
                "pass the directory holding adapter_config.json trained on this base model"
            ) from e

    def _render(self, content: list[dict]) -> str:
        """The chat prompt for one user turn (default system prompt, assistant header appended)."""
        if self.tokenizer.chat_template is None:
            text = "".join(VISION if c["type"] == "image" else c["text"] for c in content)
            return DEFAULT_TEMPLATE.format(text)
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def spec(self) -> dict:
        return {
            "name": self.name,
            "model": self.model_id,
            "lora": self.lora,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pads token rows: ids b L and attention mask b L."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros(len(rows), width, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r)
            attn[k, : len(r)] = 1
        return ids.to(self.device), attn.to(self.device)

    @staticmethod
    def _gather(hidden: torch.Tensor, select: torch.Tensor) -> Features:
        """Left-aligns the selected positions (select: b L bool) of hidden (b L i) into b max_n i + mask."""
        counts = select.sum(1)  # b
        n = int(counts.max())
        mask = torch.arange(n, device=hidden.device) < counts[:, None]  # b n
        states = hidden.new_zeros(hidden.shape[0], n, hidden.shape[-1], dtype=torch.float32)
        states[mask] = hidden[select].float()  # both in row-major order: sample by sample, left to right
        return Features(states, mask, None)

    def _empty(self) -> Features:
        z = torch.zeros(0, 0, self.image_dim, device=self.device)
        return Features(z, torch.zeros(0, 0, dtype=torch.bool, device=self.device), None)

    @torch.no_grad()  # not inference_mode: trainable heads must be able to save these tensors for backward
    def encode_images(self, images: Sequence[Image.Image]) -> Features:
        if len(images) == 0:
            return self._empty()
        vis = self.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        grid = vis["image_grid_thw"]  # b 3 (t, h, w) in patches
        counts = (grid.prod(-1) // self.merge**2).tolist()
        at = self.image_ids.index(self.image_token_id)
        rows = [self.image_ids[:at] + [self.image_token_id] * c + self.image_ids[at + 1 :] for c in counts]
        ids, attn = self._pad(rows)
        is_image = ids == self.image_token_id  # b L
        self.net.rope_deltas = None  # never reuse cached M-RoPE offsets from an earlier call
        hidden = self.net(
            input_ids=ids,
            attention_mask=attn,
            pixel_values=vis["pixel_values"].to(self.device, self.net.dtype),  # (sum of patches) x patch_dim
            image_grid_thw=grid.to(self.device),
            mm_token_type_ids=is_image.int(),  # lets the model build the 3D M-RoPE positions
            use_cache=False,
        ).last_hidden_state  # b L i, after the final norm
        return self._gather(hidden, is_image)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Features:
        if len(texts) == 0:
            return self._empty()
        captions = [preprocess_caption(t) for t in texts]
        for text, caption in zip(texts, captions):
            if not caption:
                raise ValueError(f"caption {text!r} is empty after preprocessing; drop it or give it words")
        rows = self.tokenizer([self.prefix + c + self.suffix for c in captions], add_special_tokens=False)["input_ids"]
        p, s = len(self.prefix_ids), len(self.suffix_ids)
        for caption, row in zip(captions, rows):
            if row[:p] != self.prefix_ids or row[len(row) - s :] != self.suffix_ids:
                raise ValueError(f"caption {caption!r} merges with the chat template when tokenised; reword it")
        ids, attn = self._pad(rows)
        pos = torch.arange(ids.shape[1], device=self.device)
        lengths = attn.sum(1, keepdim=True)  # b 1
        is_caption = (pos >= p) & (pos < lengths - s)  # b L: between the prefix and <|im_end|> + assistant header
        self.net.rope_deltas = None
        hidden = self.net(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # b L i
        return self._gather(hidden, is_caption)
