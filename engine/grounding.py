"""Grounded answers, the part every answerer shares: evidence in, an answer whose citations are facts out.

A library module: it knows nothing of HTTP, Qdrant, SQL or any model. The caller retrieves the evidence (asset id,
relevance score, caption, texts, predicted labels, measured visual facts, image path); this module

1. keeps the evidence whose score reaches `min_score`, best first, and numbers it [1], [2], ...;
2. abstains without calling the answerer when nothing is left ("the collection holds nothing relevant enough");
3. runs the answerer, which yields text and `Cite` marks. **Citations are attached in code, never written by a
   model**: a `Cite(numbers)` closes a claim (the text since the previous Cite) and names the evidence numbers that
   support it; this module renders them as " [n]" after the claim. Any bracket in the answerer's text is removed,
   so a model cannot write a marker of its own; a Cite naming evidence that was not shown is a bug and raises.
   Text that no Cite closes is dropped (it is an unsupported claim), and an answer with no cited claim is an
   abstention ("the retrieved items do not answer this question"), as is a reply holding NOT IN EVIDENCE;
4. streams each cited claim with its markers as soon as it is closed, so the streamed text is the answer;
5. derives `citations` (asset ids) from the final text with `parse_citations`, the same parse every surface uses
   (the API's `citations`, the UI's "cited" marks), and checks that it equals what the Cites named.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence

SENTINEL = "NOT IN EVIDENCE"
NOTHING_RELEVANT = "The collection holds nothing relevant enough to answer this question."
NOT_ANSWERED = "The retrieved items do not answer this question."
TEXT_KINDS = {"alt": "Alt text", "tags": "Tags", "ocr": "Text in the image", "document": "Document"}
MAX_FIELD_CHARS = 300  # per evidence field, so a long OCR page cannot crowd the others out of a prompt
MARKER = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


@dataclass
class Evidence:
    asset_id: int
    score: float  # retrieval relevance, about [0, 1]
    caption: str | None = None
    texts: dict[str, str] = field(default_factory=dict)  # kind (tags, ocr, alt, filename, document) -> text
    labels: list[str] = field(default_factory=list)  # labels the bundled classifier predicts, most likely first
    image_path: str | None = None
    colours: list[str] = field(default_factory=list)  # measured dominant colours (engine.visual), most common first
    brightness: float | None = None  # measured mean luminance 0..1
    colourfulness: float | None = None  # measured mean saturation 0..1

    def __post_init__(self):
        if isinstance(self.asset_id, bool) or not isinstance(self.asset_id, int):
            raise ValueError(f"Evidence.asset_id must be an int, got {self.asset_id!r}")
        if not isinstance(self.score, (int, float)) or not math.isfinite(self.score):
            raise ValueError(f"Evidence.score must be a finite number, got {self.score!r} (asset {self.asset_id})")

    def describe(self) -> str:
        """One line of prompt text: caption, alt, tags, OCR, document text, labels, colours, file name."""
        parts = [_clip(self.caption)] if self.caption else []
        parts += [f"{TEXT_KINDS[k]}: {_clip(self.texts[k])}" for k in TEXT_KINDS if self.texts.get(k)]
        if self.labels:
            parts.append("Labels: " + _clip(", ".join(self.labels)))
        if self.colours:
            parts.append("Colours: " + ", ".join(self.colours))
        if self.texts.get("filename"):
            parts.append(f"File: {_clip(self.texts['filename'])}")
        return " ".join(p if p[-1] in ".!?" else p + "." for p in parts) or "(no description)"


@dataclass(frozen=True)
class Cite:
    """Closes a claim: the text an answerer yielded since its previous Cite is supported by these evidence
    numbers (1-based positions in the evidence it was given)."""

    numbers: tuple[int, ...]

    def __post_init__(self):
        if not self.numbers or not all(isinstance(n, int) and not isinstance(n, bool) for n in self.numbers):
            raise ValueError(f"Cite needs one or more evidence numbers, got {self.numbers!r}")


@dataclass
class Answer:
    answer: str
    citations: list[int]  # asset ids cited in the answer text, in order of first citation
    abstained: bool
    evidence: list[Evidence]  # what the answerer was shown (score >= min_score, best first); [n] is evidence[n - 1]

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "citations": list(self.citations),
            "abstained": self.abstained,
            "evidence": [asdict(e) for e in self.evidence],
        }


class Answerer(Protocol):
    name: str

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
        """Claim text as it is produced, each claim closed by a Cite of the evidence numbers ([1] is
        evidence[0]) that support it; brackets in the text are removed by the caller."""
        ...


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 3] + "..."


def evidence_block(evidence: Sequence[Evidence]) -> str:
    return "\n".join(f"[{n}] {e.describe()}" for n, e in enumerate(evidence, 1))


def parse_citations(text: str, evidence: Sequence[Evidence]) -> list[int]:
    """Asset ids of the evidence cited as [n] or [n, m] in text; unknown numbers dropped, repeats merged."""
    cited: list[int] = []
    for group in MARKER.findall(text):
        for number in map(int, re.split(r"\s*[,;]\s*", group)):
            if 1 <= number <= len(evidence) and evidence[number - 1].asset_id not in cited:
                cited.append(evidence[number - 1].asset_id)
    return cited


def is_abstention(text: str) -> bool:
    return not text.strip() or SENTINEL.lower() in " ".join(text.split()).lower()


def markers(numbers: Sequence[int]) -> str:
    return "".join(f"[{n}]" for n in dict.fromkeys(numbers))


def stream_answer(
    answerer: Answerer | None, question: str, evidence: Sequence[Evidence], min_score: float
) -> Iterator[str | Answer]:
    """Yields the answer's cited claims as they are closed, then the final `Answer` (always the last item)."""
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
    # 3. Nothing relevant enough: say so without calling the answerer
    if not shown:
        yield Answer(NOTHING_RELEVANT, [], abstained=True, evidence=[])
        return
    # 4. Claims closed by the answerer's Cites, markers attached here
    claims, pending, named = [], [], []
    for item in answerer.stream(question.strip(), shown):
        if not isinstance(item, Cite):
            pending.append(str(item).replace("[", "").replace("]", ""))
            continue
        if not all(1 <= n <= len(shown) for n in item.numbers):
            raise RuntimeError(f"answerer {getattr(answerer, 'name', answerer)!r} cited {item.numbers} with only "
                               f"{len(shown)} evidence items shown; an answerer must cite positions in its evidence")
        text = " ".join("".join(pending).split())
        pending = []
        if not text or is_abstention(text):
            continue
        claim = f"{text} {markers(item.numbers)}"
        named += [shown[n - 1].asset_id for n in item.numbers]
        yield claim if not claims else " " + claim
        claims.append(claim)
    # 5. The final answer: its citations parsed from its text, which must be what the Cites named
    text = " ".join(claims)
    if not claims:
        yield Answer(NOT_ANSWERED, [], abstained=True, evidence=shown)
        return
    citations = parse_citations(text, shown)
    assert citations == list(dict.fromkeys(named)), (citations, named)
    yield Answer(text, citations, abstained=False, evidence=shown)


def answer(answerer: Answerer | None, question: str, evidence: Sequence[Evidence], min_score: float) -> Answer:
    """The final Answer of `stream_answer`, without the stream."""
    *_, final = stream_answer(answerer, question, evidence, min_score)
    return final
