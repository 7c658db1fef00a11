"""The extractive answerer: an answer built from the evidence's own words and measured facts, cited in code.

No language model. The question is read with a few rules (English):

- its *kind*: counting ("how many ..."), colour ("what colour ..."), comparison ("which is brighter, A or B?",
  "is A darker than B?"), "which ..." or a description question (what / who / where ...);
- its *subject*: the content words left after stop words, question words, the asked-for type ("what *drink*",
  "which *company*", "what kind of *dog*") and words about the kind itself (colour, image, photo, many ...),
  compared as Qdrant's BM25 terms (stemmed: "coins" finds "coin").

Each evidence item's matchable words are its caption, alt text, tags, OCR text, document text, file name, the
labels the classifier predicts and its measured colours (engine.visual). An item *matches* when it holds at least
half of the subject's terms; the answer comes only from matching items, so a subject nobody wrote or measured
(a giraffe in a collection of coins) yields no claim, and the answer abstains.

Answers by kind, each claim closed by a Cite of the items it quotes:
- description: the best matching item's caption (or the text field that matched, OCR text first);
- which: the matching items with the best coverage (up to three), one claim each;
- colour: the best matching item's measured dominant colours, said to be measured over the whole picture;
- counting: the number of retrieved images that hold every subject term ("3 images show cat (of the 20 retrieved)");
  one matching image with a number in its texts is quoted; one without is an abstention (nothing counts for us);
- comparison: the measured brightness or colourfulness of the two subjects' best items, with both values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from .grounding import Cite, Evidence

COUNT_K = 20  # evidence items a counting question retrieves (the Engine asks for at least this many)
MAX_WHICH = 3
SAME = 0.02  # measured values closer than this are "about the same"
STOP = {
    "what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was", "were", "do", "does",
    "did", "can", "could", "has", "have", "there", "the", "a", "an", "of", "in", "on", "at", "to", "for", "by",
    "with", "and", "or", "than", "it", "its", "this", "that", "these", "those", "be", "as", "from", "any", "some",
}
GENERIC = {
    "colour", "color", "colours", "colors", "coloured", "colored", "many", "number", "much", "image", "images",
    "photo", "photos", "picture", "pictures", "photograph", "emoji", "emojis", "icon", "icons", "show", "shows",
    "shown", "showing", "depict", "depicts", "depicted", "main", "mainly", "mostly", "kind", "type", "sort",
    "called", "named", "name", "collection", "one", "ones", "contain", "contains", "see", "seen", "visible",
    "brighter", "darker", "lighter", "more", "less", "colourful", "colorful", "saturated", "duller", "total",
    "thing", "things", "look", "looks", "like", "appear", "appears", "dominant", "mean", "average", "item", "items",
}
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
COMPARATIVES = {  # word(s) -> (measured fact, +1: the higher value wins, -1: the lower)
    "brighter": ("brightness", 1), "lighter": ("brightness", 1), "darker": ("brightness", -1),
    "more colourful": ("colourfulness", 1), "more colorful": ("colourfulness", 1),
    "less colourful": ("colourfulness", -1), "less colorful": ("colourfulness", -1),
    "more saturated": ("colourfulness", 1), "duller": ("colourfulness", -1),
}
COMPARE = re.compile(r"\b(" + "|".join(sorted(COMPARATIVES, key=len, reverse=True)) + r")\b")
FIELDS = ("caption", "ocr", "document", "alt", "tags", "filename", "labels", "colours")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", str(text).lower())


def terms(text: str) -> set[int]:
    """BM25 term ids of a text (stop words out, stemmed), as the keyword index sees them."""
    from .keywords import query_terms

    return set(query_terms(text).indices)


@dataclass
class Question:
    kind: str  # "count", "colour", "compare", "which" or "describe"
    subject: dict[int, str]  # term id -> the question's word for it
    sides: tuple[dict[int, str], dict[int, str]] | None = None  # comparison: the two subjects
    fact: str | None = None  # comparison: "brightness" or "colourfulness"
    direction: int = 1  # comparison: +1 the higher value wins, -1 the lower
    comparative: str = ""
    yes_no: bool = False  # comparison asked as "is A ... than B?"
    about_images: bool = False  # counting: asks how many images/emoji/photos (not objects in one picture)


def subject_of(text: str, skip_type: bool = True) -> dict[int, str]:
    """Content terms of a question fragment, without question words, kind words and the asked-for type."""
    ws = words(text)
    if skip_type and len(ws) > 1 and ws[0] in ("what", "which", "whose"):
        rest = ws[1:]
        if rest[:2] in (["kind", "of"], ["type", "of"], ["sort", "of"]):
            rest = rest[2:]
        elif rest[0] not in STOP:
            rest = rest[1:]  # "what drink ...", "which company ...": the asked-for type, not the subject
        ws = rest
    out: dict[int, str] = {}
    for w in ws:
        if w in STOP or w in GENERIC:
            continue
        for t in terms(w):
            out.setdefault(t, w)
    return out


def read_question(text: str) -> Question:
    low = " ".join(words(text))
    compare = COMPARE.search(low)
    if compare:
        fact, direction = COMPARATIVES[compare.group(1)]
        rest = low[:compare.start()] + " " + low[compare.end():]
        parts = [p for p in re.split(r"\b(?:or|than|and)\b", rest) if subject_of(p, skip_type=False)]
        if len(parts) >= 2:
            sides = (subject_of(parts[-2], skip_type=False), subject_of(parts[-1], skip_type=False))
            return Question("compare", {**sides[0], **sides[1]}, sides, fact, direction, compare.group(1),
                            yes_no=low.split()[0] in ("is", "are", "does", "do", "was"))
    if low.startswith("how many"):
        about = bool(re.search(r"\b(images?|photos?|pictures?|emojis?|icons?|items?)\b", low))
        return Question("count", subject_of(low.removeprefix("how many"), skip_type=False), about_images=about)
    if re.search(r"\bcolou?rs?\b", low):
        return Question("colour", subject_of(re.sub(r"\bcolou?rs?\b", " ", low), skip_type=False))
    return Question("which" if low.startswith("which") else "describe", subject_of(low))


def search_texts(question: str) -> list[str]:
    """What to search for to find the question's evidence: its subject, without the words about the question
    itself ("which emoji shows", "what colour is", "photo"), which no caption holds and which would dilute the
    keyword coverage of the words that matter; each side of a comparison on its own (one search for "the moon or
    the coins" finds neither well); the question itself when it has no subject word."""
    q = read_question(question)
    if q.kind == "compare":
        return [" ".join(side.values()) for side in q.sides]
    return [" ".join(dict.fromkeys(q.subject.values())) or question]


def wants_many(question: str) -> bool:
    """Whether the question counts images, so retrieval should bring COUNT_K items rather than a handful."""
    return read_question(question).kind == "count"


def field_texts(e: Evidence) -> dict[str, str]:
    out = {"caption": e.caption or "", **{k: e.texts.get(k, "") for k in ("ocr", "document", "alt", "tags",
                                                                          "filename")}}
    out["labels"], out["colours"] = ", ".join(e.labels), " ".join(e.colours)
    return {k: v for k, v in out.items() if v}


def coverage(subject: dict[int, str], e: Evidence) -> tuple[float, str | None]:
    """(share of the subject's terms the item holds, the field holding the most of them)."""
    if not subject:
        return 0.0, None
    have, best, best_n = set(), None, 0
    for name in FIELDS:
        text = field_texts(e).get(name)
        if not text:
            continue
        found = terms(text) & subject.keys()
        have |= found
        if len(found) > best_n:
            best, best_n = name, len(found)
    return len(have) / len(subject), best


def sentence(text: str) -> str:
    text = " ".join(text.split()).rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def quote(e: Evidence, where: str | None) -> str:
    """What an item says: the text field that matched (OCR, document, alt) or its caption, else its labels."""
    fields = field_texts(e)
    if where in ("ocr", "document", "alt"):
        label = {"ocr": "Text in the image", "document": "The document says", "alt": "Alt text"}[where]
        return f"{label}: {sentence(fields[where][:200])}"
    if e.caption:
        return sentence(e.caption)
    if e.labels:
        return f"A picture the classifier takes for {', '.join(e.labels[:3])}."
    return sentence(f"File {fields.get('filename', '?')}")


def name_of(e: Evidence) -> str:
    """A short name for an item: its caption without the final stop, else its file name."""
    return (e.caption or e.texts.get("filename") or f"asset {e.asset_id}").strip().rstrip(".")


class ExtractiveAnswerer:
    """Answers from the evidence's words and measured facts only; see the module docstring."""

    name = "extractive"

    def load(self) -> None:  # nothing to load: here so every answerer can be warmed up alike
        terms("warm up")

    def stream(self, question: str, evidence: Sequence[Evidence]) -> Iterator[str | Cite]:
        q = read_question(question)
        if not q.subject:
            return
        yield from getattr(self, f"_{q.kind}")(q, list(evidence))

    def _matches(self, subject: dict[int, str], evidence: list[Evidence]) -> list[tuple[float, int, str | None]]:
        """(coverage, evidence number, field) of the items holding at least half the subject, best first."""
        found = [(c, n, where) for n, e in enumerate(evidence, 1) for c, where in [coverage(subject, e)] if c >= 0.5]
        return sorted(found, key=lambda x: (-x[0], x[1]))

    def _describe(self, q: Question, evidence: list[Evidence]):
        matches = self._matches(q.subject, evidence)
        if matches:
            _, n, where = matches[0]
            yield quote(evidence[n - 1], where)
            yield Cite((n,))

    def _which(self, q: Question, evidence: list[Evidence]):
        matches = self._matches(q.subject, evidence)
        best = [m for m in matches if m[0] == matches[0][0]][:MAX_WHICH] if matches else []
        for _, n, where in best:
            yield quote(evidence[n - 1], where)
            yield Cite((n,))

    def _colour(self, q: Question, evidence: list[Evidence]):
        for _, n, _ in self._matches(q.subject, evidence)[:1]:
            e = evidence[n - 1]
            if e.colours:
                colours = " and ".join([", ".join(e.colours[:-1]), e.colours[-1]] if len(e.colours) > 1
                                       else e.colours)
                yield f"{name_of(e)}: the picture is mostly {colours} (measured over the whole picture)."
                yield Cite((n,))

    def _count(self, q: Question, evidence: list[Evidence]):
        full = [n for c, n, _ in self._matches(q.subject, evidence) if c == 1.0]
        what = " ".join(dict.fromkeys(q.subject.values()))
        if len(full) == 1 and not q.about_images:  # objects in one picture: only a number its texts state counts
            e = evidence[full[0] - 1]
            for name, text in field_texts(e).items():
                if name in ("caption", "ocr", "document", "alt", "tags") and (
                        re.search(r"\d", text) or set(words(text)) & set(NUMBER_WORDS[2:])):
                    yield f"{sentence(text)}"
                    yield Cite((full[0],))
                    return
            return
        if full:
            verb = "image shows" if len(full) == 1 else "images show"
            yield f"{len(full)} {verb} {what} (of the {len(evidence)} retrieved)."
            yield Cite(tuple(full))

    def _compare(self, q: Question, evidence: list[Evidence]):
        picks = []
        for side in q.sides:
            matches = [m for m in self._matches(side, evidence) if m[1] not in [p for p in picks]]
            if not matches:
                return
            picks.append(matches[0][1])
        a, b = (evidence[n - 1] for n in picks)
        va, vb = getattr(a, q.fact), getattr(b, q.fact)
        if va is None or vb is None:
            return
        if abs(va - vb) < SAME:
            yield (f"{name_of(a)} and {name_of(b)} measure about the same {q.fact} ({va:.2f} against {vb:.2f}).")
            yield Cite(tuple(picks))
            return
        win, lose = picks if (va - vb) * q.direction > 0 else picks[::-1]
        w, l_ = evidence[win - 1], evidence[lose - 1]
        verdict = ("Yes: " if win == picks[0] else "No: ") if q.yes_no else ""
        yield (f"{verdict}{name_of(w)} is {q.comparative} than {name_of(l_)} (measured {q.fact} "
               f"{getattr(w, q.fact):.2f} against {getattr(l_, q.fact):.2f}).")
        yield Cite((win, lose))
