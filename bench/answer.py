"""The answer benchmark: grounded answers through the real product, per answerer, on two collections.

    python bench/answer.py [--answerers extractive smollm2 extractive+smollm2] [--split test|dev|all] [--k 5]
                           [--out bench/out/answer.json]

Collections, ingested into a fresh temporary OMNIBRIDGE_HOME through the product (`ingest.pipeline.run_inline`,
embedded default: SQLite + Qdrant Edge, the bundled default model; captions, tags, file names and keyword index):
- photos: scikit-image's 21 captioned photos (`engine.samples.write_photo_sample`), copied as IMG_0001.png ... so
  that only captions and pixels can find and answer a question (the sample's own file names name most answers);
- emoji: 197 Twitter emoji (npm `emoji-datasource-twitter`, art CC-BY-4.0, fetched by bench/datasets.py into
  ~/.cache/omnibridge-bench) from ten subcategories (fruit, vegetables, drinks, birds, air transport, flowers,
  cat faces, hearts, musical instruments, sea animals), with transparency, named by code point (1f34c.png),
  captioned with their Unicode name and tagged with their subcategory.

QUESTIONS: 104, each with its kind (describe, which, colour, count, compare, absent), the accepted answers (any
one, case-insensitive, whole words) and the supporting image(s); absent ones have none and must be abstained.
Ground truth was written from the captions and from looking at the pictures (object colours as a person names
them: a banana is yellow), never from an answerer's output. Counts are the images whose caption holds the word.
Split: DEV / TEST by a hash of the question text; the answerers' rules were designed on DEV, TEST is reported.

Per answerer, every question goes through `Engine.stream_answer(question, collection, k=K)` (evidence: the hybrid
search's likely matches; a counting question asks for 20; a comparison searches each side) after one untimed
warm-up answer. Reported:
- accuracy (answerable): not abstained, an accepted answer in the text, and a supporting image cited;
- citation precision: cited images that support the question / all cited images (absent questions' citations
  count as unsupported); citation recall: mean over answerable questions of supporting images cited / supporting;
- abstention on absent questions; wrong abstentions on answerable ones;
- latency: first piece of text (first token) and total, p50 / p95, warm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from engine.engine import Engine  # noqa: E402
from engine.samples import write_photo_sample  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
EMOJI_SUBCATEGORIES = ("food-fruit", "food-vegetable", "drink", "animal-bird", "transport-air", "plant-flower",
                       "cat-face", "heart", "musical-instrument", "animal-marine")


@dataclass
class Q:
    collection: str
    kind: str  # describe, which, colour, count, compare, absent
    text: str
    accept: list[str] = field(default_factory=list)  # any one of these, whole words, case-insensitive
    support: list[str] = field(default_factory=list)  # ids of the images that support the answer

    @property
    def split(self) -> str:
        return "dev" if zlib.crc32(self.text.encode()) % 2 == 0 else "test"


def P(kind, text, accept=(), support=()):
    return Q("photos", kind, text, list(accept), list(support))


def E(kind, text, accept=(), support=()):
    return Q("emoji", kind, text, list(accept), list(support))


RED, GREEN, BLUE = ["red"], ["green"], ["blue"]
QUESTIONS = [
    # photos: what / who / where
    P("describe", "What is the cat called?", ["chelsea"], ["chelsea"]),
    P("describe", "What drink is in the cup?", ["coffee"], ["coffee"]),
    P("describe", "What kind of wall is in the photo?", ["brick"], ["brick"]),
    P("describe", "Which company launched the rocket?", ["spacex"], ["rocket"]),
    P("describe", "Whose eye is in the retina image?", ["human"], ["retina"]),
    P("describe", "Who is the astronaut in the photo?", ["eileen collins"], ["astronaut"]),
    P("describe", "Where were the ancient coins found?", ["pompeii"], ["coins"]),
    P("describe", "What rocket launched the DSCOVR spacecraft?", ["falcon"], ["rocket"]),
    P("describe", "What is the wall made of?", ["brick"], ["brick"]),
    P("describe", "What is in the picture of the coffee?", ["coffee"], ["coffee"]),
    P("describe", "What is the name of the cat?", ["chelsea"], ["chelsea"]),
    P("describe", "What kind of document page is there?", ["scanned"], ["page"]),
    P("describe", "Who is the astronaut?", ["eileen collins"], ["astronaut"]),
    P("describe", "What is in the coffee photo?", ["coffee"], ["coffee"]),
    # photos: which image
    P("which", "Which animal is shown as a silhouette?", ["horse"], ["horse"]),
    P("which", "Which image shows a cat?", ["cat"], ["chelsea"]),
    P("which", "Which photo shows a clock?", ["clock"], ["clock"]),
    P("which", "Which image shows the surface of the moon?", ["moon"], ["moon"]),
    P("which", "Which image shows a brick wall?", ["brick"], ["brick"]),
    P("which", "Which picture shows gravel?", ["gravel"], ["gravel"]),
    P("which", "Which image shows a human retina?", ["retina"], ["retina"]),
    P("which", "Which image shows a cell in saline?", ["cell"], ["cell"]),
    # photos: colour of the whole picture, as a person sees it
    P("colour", "What is the main colour of the rocket photo?", BLUE, ["rocket"]),
    P("colour", "What colour is the cat?", ["orange", "brown"], ["chelsea"]),
    P("colour", "What colour is the retina image?", ["red", "orange"], ["retina"]),
    P("colour", "What colours is the horse silhouette?", ["black", "white"], ["horse"]),
    P("colour", "What colour is the surface of the moon?", ["grey", "gray"], ["moon"]),
    P("colour", "What colour is the coffee cup?", ["red", "brown", "orange"], ["coffee"]),
    # photos: counting images (objects inside one photo are not counted by anything here: abstain)
    P("count", "How many images show a cat?", ["1", "one"], ["chelsea"]),
    P("count", "How many gray-level images are there?", ["3", "three"], ["camera", "microaneurysms", "text"]),
    P("count", "How many photos show the moon?", ["1", "one"], ["moon"]),
    P("count", "How many images show a brick wall?", ["1", "one"], ["brick"]),
    # photos: comparisons of measurable facts, pairs whose answer is plain to the eye
    P("compare", "Which is darker, the Hubble deep field or the scanned page?", ["hubble"],
      ["hubble_deep_field", "page"]),
    P("compare", "Which is brighter, the horse silhouette or the Hubble deep field?", ["horse"],
      ["horse", "hubble_deep_field"]),
    P("compare", "Which is more colourful, the retina or the moon?", ["retina"], ["retina", "moon"]),
    P("compare", "Which is more colourful, the coffee cup or the Greek coins?", ["coffee"], ["coffee", "coins"]),
    P("compare", "Is the scanned page brighter than the Hubble deep field?", ["yes"], ["page", "hubble_deep_field"]),
    P("compare", "Which is darker, the rocket launch or the scanned page?", ["launch", "rocket"], ["rocket", "page"]),
    # photos: absent subjects, and what nothing here measures
    P("absent", "What breed is the dog?"),
    P("absent", "What colour is the sports car?"),
    P("absent", "What is the giraffe eating?"),
    P("absent", "Who is playing the guitar?"),
    P("absent", "What fruit is in the bowl?"),
    P("absent", "What is the bird on the branch?"),
    P("absent", "Which city is shown in the skyline at night?"),
    P("absent", "What is the name of the dog in the park?"),
    P("absent", "What brand is the car?"),
    P("absent", "How many coins are there?"),  # one photo of coins; nothing counts them
    P("absent", "Which image shows a bicycle?"),
    P("absent", "How many dogs are there?"),
    # emoji: which
    E("which", "Which emoji shows a penguin?", ["penguin"], ["penguin"]),
    E("which", "Which emoji shows a violin?", ["violin"], ["violin"]),
    E("which", "Which emoji is a flamingo?", ["flamingo"], ["flamingo"]),
    E("which", "Which emoji shows an octopus?", ["octopus"], ["octopus"]),
    E("which", "Which emoji shows a helicopter?", ["helicopter"], ["helicopter"]),
    E("which", "Which emoji shows a sunflower?", ["sunflower"], ["sunflower"]),
    E("which", "Which emoji shows a broken heart?", ["broken heart"], ["broken heart"]),
    E("which", "Which emoji shows a crying cat?", ["crying cat"], ["crying cat face"]),
    E("which", "Which emoji shows a glass of milk?", ["milk"], ["glass of milk"]),
    E("which", "Which emoji shows a hot pepper?", ["hot pepper"], ["hot pepper"]),
    E("which", "Which emoji shows a whale?", ["whale"], ["whale", "spouting whale"]),
    E("which", "Which emoji shows a rocket?", ["rocket"], ["rocket"]),
    E("which", "Which emoji shows a saxophone?", ["saxophone"], ["saxophone"]),
    E("which", "Which emoji shows a cherry blossom?", ["cherry blossom"], ["cherry blossom"]),
    # emoji: colour of the object, as a person names it
    E("colour", "What colour is the banana?", ["yellow"], ["banana"]),
    E("colour", "What colour is the carrot?", ["orange"], ["carrot"]),
    E("colour", "What colour is the broccoli?", GREEN, ["broccoli"]),
    E("colour", "What colour is the lemon?", ["yellow"], ["lemon"]),
    E("colour", "What colour is the strawberry?", RED, ["strawberry"]),
    E("colour", "What colour is the aubergine?", ["purple"], ["aubergine"]),
    E("colour", "What colour is the cucumber?", GREEN, ["cucumber"]),
    E("colour", "What colour is the tangerine?", ["orange"], ["tangerine"]),
    E("colour", "What colour is the green apple?", GREEN, ["green apple"]),
    E("colour", "What colour is the red apple?", RED, ["red apple"]),
    E("colour", "What colour is the blue heart?", BLUE, ["blue heart"]),
    E("colour", "What colour is the purple heart?", ["purple"], ["purple heart"]),
    E("colour", "What colour is the flamingo?", ["pink"], ["flamingo"]),
    E("colour", "What colour is the lime?", GREEN, ["lime"]),
    E("colour", "What colour is the tomato?", RED, ["tomato"]),
    E("colour", "What colour is the dolphin?", BLUE + ["grey", "gray"], ["dolphin"]),
    # emoji: counting images
    E("count", "How many emoji show a cat face?", ["9", "nine"], [
        "smiling cat face with open mouth", "grinning cat face with smiling eyes", "cat face with tears of joy",
        "smiling cat face with heart-shaped eyes", "cat face with wry smile", "kissing cat face with closed eyes",
        "weary cat face", "crying cat face", "pouting cat face"]),
    E("count", "How many emoji show an airplane?", ["4", "four"],
      ["airplane", "small airplane", "airplane departure", "airplane arriving"]),
    E("count", "How many emoji show a chick?", ["3", "three"],
      ["hatching chick", "baby chick", "front-facing baby chick"]),
    E("count", "How many emoji show a whale?", ["2", "two"], ["whale", "spouting whale"]),
    E("count", "How many emoji show a pepper?", ["2", "two"], ["hot pepper", "bell pepper"]),
    E("count", "How many emoji show a drum?", ["2", "two"], ["drum with drumsticks", "long drum"]),
    E("count", "How many emoji show an apple?", ["2", "two"], ["red apple", "green apple"]),
    E("count", "How many emoji show a beer mug?", ["2", "two"], ["beer mug", "clinking beer mugs"]),
    # emoji: comparisons
    E("compare", "Which is brighter, the lemon or the aubergine?", ["lemon"], ["lemon", "aubergine"]),
    E("compare", "Which is darker, the black heart or the white heart?", ["black heart"],
      ["black heart", "white heart"]),
    E("compare", "Is the banana brighter than the broccoli?", ["yes"], ["banana", "broccoli"]),
    E("compare", "Which is more colourful, the grey heart or the red apple?", ["red apple"],
      ["grey heart", "red apple"]),
    E("compare", "Which is darker, the black bird or the dove?", ["black bird"], ["black bird", "dove"]),
    E("compare", "Is the white heart darker than the black heart?", ["no"], ["white heart", "black heart"]),
    # emoji: absent subjects
    E("absent", "What colour is the giraffe?"),
    E("absent", "Which emoji shows a motorcycle?"),
    E("absent", "How many emoji show a pizza?"),
    E("absent", "What colour is the bus?"),
    E("absent", "Which emoji shows a football?"),
    E("absent", "Which is brighter, the tiger or the zebra?"),
    E("absent", "Which emoji shows a hammer?"),
    E("absent", "What is the dog doing?"),
    E("absent", "Which emoji shows a castle?"),
    E("absent", "How many emoji show a train?"),
]


def load_uptime() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def photo_pairs(folder: Path) -> Path:
    """The photo sample copied as IMG_0001.png ... with the same captions and ids."""
    pairs = write_photo_sample(folder / "sample")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    dest = folder / "photos"
    (dest / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for n, r in enumerate(rows, 1):
        name = f"images/IMG_{n:04d}.png"
        shutil.copy(pairs.parent / r["image"], dest / name)
        out.append({"image": name, "caption": r["caption"], "id": r["id"]})
    (dest / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    return dest / "pairs.jsonl"


def emoji_pairs(folder: Path) -> Path:
    """Twitter emoji of EMOJI_SUBCATEGORIES with transparency: caption = name, tags = subcategory, id = name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_datasets", Path(__file__).resolve().parent / "datasets.py")
    datasets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(datasets)
    package = datasets.fetch_emoji_package("twitter")
    entries = json.loads((package / "emoji.json").read_text())
    dest = folder / "emoji"
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for e in sorted(entries, key=lambda e: e["sort_order"]):
        src = package / "img" / "twitter" / "64" / e["image"]
        if e["subcategory"] in EMOJI_SUBCATEGORIES and e.get("has_img_twitter") and src.exists():
            shutil.copy(src, dest / "images" / e["image"])
            rows.append({"image": f"images/{e['image']}", "caption": e["name"].lower(), "id": e["name"].lower(),
                         "tags": e["subcategory"].replace("-", " ")})
    (dest / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest / "pairs.jsonl"


def ingest(svc, pairs: Path, collection: str) -> dict[int, str]:
    """Ingest through the product; asset id -> image id."""
    from sqlalchemy import select

    from engine.db import Asset, Collection
    from ingest.pipeline import run_inline

    job = run_inline(svc, [str(pairs)], collection)
    if job["failed"]:
        raise SystemExit(f"ingest failed: {job}")
    by_file = {str((pairs.parent / json.loads(line)["image"]).resolve()): json.loads(line)["id"]
               for line in pairs.read_text().splitlines()}
    with svc.session() as db:
        coll = db.scalar(select(Collection).where(Collection.name == collection))
        return {a.id: by_file[str(Path(a.uri).resolve())]
                for a in db.scalars(select(Asset).where(Asset.collection_id == coll.id))}


def says(answer: str, accept: list[str]) -> bool:
    text = " ".join(re.findall(r"[a-z0-9]+", answer.lower()))
    return any(re.search(rf"\b{re.escape(' '.join(re.findall(r'[a-z0-9]+', a.lower())))}\b", text) for a in accept)


def ask(engine: Engine, q: Q, names: dict[int, str], k: int) -> dict:
    t0 = time.perf_counter()
    first = None
    for item in engine.stream_answer(q.text, q.collection, k=k):
        if first is None:
            first = time.perf_counter() - t0
        final = item
    total = time.perf_counter() - t0
    cited = [names[i] for i in final.citations]
    support = set(q.support)
    answerable = q.kind != "absent"
    return {
        "collection": q.collection, "kind": q.kind, "split": q.split, "question": q.text, "accept": q.accept,
        "support": q.support, "answer": final.answer, "abstained": final.abstained, "cited": cited,
        "shown": [names[e.asset_id] for e in final.evidence],
        "correct": answerable and not final.abstained and says(final.answer, q.accept) and bool(support & set(cited)),
        "cited_supporting": sum(c in support for c in cited), "cited_total": len(cited),
        "recall": len(support & set(cited)) / len(support) if answerable else None,
        "first_s": first, "total_s": total,
    }


def summarise(rows: list[dict]) -> dict:
    answerable = [r for r in rows if r["kind"] != "absent"]
    absent = [r for r in rows if r["kind"] == "absent"]
    cited = sum(r["cited_total"] for r in rows)
    pct = lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan")  # noqa: E731
    first, total = [r["first_s"] for r in rows], [r["total_s"] for r in rows]
    by_kind = {}
    for kind in ("describe", "which", "colour", "count", "compare"):
        rs = [r for r in answerable if r["kind"] == kind]
        by_kind[kind] = f"{sum(r['correct'] for r in rs)}/{len(rs)}"
    return {
        "answerable": len(answerable), "absent": len(absent),
        "accuracy": sum(r["correct"] for r in answerable) / max(len(answerable), 1),
        "correct": sum(r["correct"] for r in answerable), "by_kind": by_kind,
        "citation_precision": sum(r["cited_supporting"] for r in rows) / cited if cited else float("nan"),
        "citations": cited,
        "citation_recall": float(np.mean([r["recall"] for r in answerable])) if answerable else float("nan"),
        "abstention_absent": sum(r["abstained"] for r in absent) / max(len(absent), 1),
        "abstained_answerable": sum(r["abstained"] for r in answerable),
        "first_p50_s": pct(first, 50), "first_p95_s": pct(first, 95),
        "total_p50_s": pct(total, 50), "total_p95_s": pct(total, 95),
    }


def markdown(results: dict[str, dict], split: str) -> str:
    out = [f"| answerer | accuracy, answerable ({split}) | describe / which / colour / count / compare | "
           "citation precision | citation recall | abstention, absent | wrong abstentions | first piece p50 / p95 | "
           "total p50 / p95 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["summary"][split]
        kinds = " / ".join(s["by_kind"].values())
        out.append(f"| {name} | {s['accuracy']:.2f} ({s['correct']}/{s['answerable']}) | {kinds} | "
                   f"{s['citation_precision']:.2f} ({s['citations']} cited) | {s['citation_recall']:.2f} | "
                   f"{s['abstention_absent']:.2f} ({s['absent']}) | {s['abstained_answerable']} | "
                   f"{s['first_p50_s']:.2f} / {s['first_p95_s']:.2f} s | {s['total_p50_s']:.2f} / "
                   f"{s['total_p95_s']:.2f} s |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answerers", nargs="+", default=["extractive", "smollm2", "extractive+smollm2"])
    ap.add_argument("--split", default="test", choices=["test", "dev", "all"], help="questions to run")
    ap.add_argument("--k", type=int, default=5, help="evidence items per answer (the product's default: 5)")
    ap.add_argument("--out", type=Path, default=OUT / "answer.json")
    args = ap.parse_args()
    from engine.answer import load_answerer
    from engine.services import Services
    from engine.settings import load_settings
    from omnibridge import load_model

    started, load_start = time.perf_counter(), load_uptime()
    questions = [q for q in QUESTIONS if args.split == "all" or q.split == args.split]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-answer-") as tmp:
        svc = Services(load_settings(home=Path(tmp) / "home", batch_size=8))
        svc._model = load_model("default", device="cpu")
        names = {**ingest(svc, photo_pairs(Path(tmp)), "photos"), **ingest(svc, emoji_pairs(Path(tmp)), "emoji")}
        try:
            for spec in args.answerers:
                engine = Engine(svc)
                engine._answerer = load_answerer(spec)
                engine.answerer()  # loaded before timing
                engine.answer(QUESTIONS[0].text, "photos", k=args.k)  # warm-up, not timed
                load_before = load_uptime()
                rows = []
                for q in questions:
                    rows.append(ask(engine, q, names, args.k))
                    r = rows[-1]
                    verdict = "ok" if r["correct"] or (q.kind == "absent" and r["abstained"]) else "WRONG"
                    print(f"{spec:20s} {r['total_s']:5.2f}s {verdict:5s} [{q.split}/{q.kind}] {q.text} -> "
                          f"{r['answer']} {r['cited']}", file=sys.stderr, flush=True)
                splits = {s: [r for r in rows if r["split"] == s] for s in ("dev", "test")}
                results[spec] = {"rows": rows, "load": f"{load_before} -> {load_uptime()}",
                                 "summary": {s: summarise(rs) for s, rs in splits.items() if rs}}
        finally:
            svc.close()
    tables = {s: markdown(results, s) for s in ("test", "dev") if all(s in r["summary"] for r in results.values())}
    text = "\n\n".join(f"{s.upper()}:\n\n{t}" for s, t in tables.items())
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": load_start, "load_average_at_end": load_uptime(),
            "seconds": time.perf_counter() - started, "k": args.k,
            "questions": {s: sum(q.split == s for q in QUESTIONS) for s in ("dev", "test")}}
    args.out.write_text(json.dumps({"meta": meta, "results": results, "markdown": text}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
