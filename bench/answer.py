"""Grounded answers over scikit-image's captioned photos: accuracy, abstention and latency of an answerer.

    python bench/answer.py [--answerer smollm2] [--min-score 0.35] [--k 3] [--scores-only]
                           [--data bench/out/answer-photos] [--out bench/out/answer.json]

Collection: the 21 photos written by engine/samples.py; an evidence item is a photo's caption (its docstring
summary, e.g. "Coffee cup.") and image, nothing else (no file name, which would give the answer away).
Retrieval is the real one: omnibridge.load_model("default"), the question encoded as a query, the photos as
documents, the top-k photos by dot product with their scores. `engine.answer.answer` then keeps the evidence whose
score reaches --min-score and asks the answerer.

TEST: 8 questions about photos of the collection (an expected keyword and photo each; retrieval misses the right
photo for 2 of them, on purpose) and 4 about things the collection does not hold. Metrics on TEST:
- accuracy: not abstained, the answer contains the keyword (case-insensitive) and cites the right photo;
- abstention rate on absent and on present questions (by score, without the model, or by the model's sentinel);
- latency p50 / p95 of `answer()` per question, model loaded and warmed up by one untimed answer.
DEV: 10 other questions, used to choose the prompt and --min-score; only their scores are printed.
The score table (right photo's rank and score, best score for absent questions), the min_score sweep and the
value `suggest` picks from the DEV sweep are what engine.answer.DEFAULT_MIN_SCORE rests on (bench/ANSWER_RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import omnibridge  # noqa: E402
from engine.answer import DEFAULT_MIN_SCORE, Evidence, answer, load_answerer  # noqa: E402
from engine.samples import write_photo_sample  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Question:
    text: str
    photo: str | None = None  # id of the photo that answers it; None: absent from the collection
    keyword: str | None = None  # must appear in the answer (case-insensitive)


TEST = [
    Question("What is the cat called?", "chelsea", "chelsea"),
    Question("What drink is in the cup?", "coffee", "coffee"),
    Question("What kind of wall is in the photo?", "brick", "brick"),
    Question("Which animal is shown as a silhouette?", "horse", "horse"),
    Question("Which company launched the rocket?", "rocket", "spacex"),
    Question("Whose eye is in the retina image?", "retina", "human"),
    Question("Who is the astronaut in the photo?", "astronaut", "eileen collins"),  # retrieval misses it
    Question("Where were the ancient coins found?", "coins", "pompeii"),  # retrieval misses it
    Question("What breed is the dog?"),
    Question("What colour is the sports car?"),
    Question("What is the giraffe eating?"),
    Question("Who is playing the guitar?"),
]
DEV = [
    Question("What rocket launched the DSCOVR spacecraft?", "rocket", "falcon"),
    Question("What animal is in the black and white silhouette?", "horse", "horse"),
    Question("What is the wall made of?", "brick", "brick"),
    Question("What is in the picture of the coffee?", "coffee", "coffee"),
    Question("What is the name of the cat?", "chelsea", "chelsea"),
    Question("What kind of document page is there?", "page", "scanned"),
    Question("What fruit is in the bowl?"),
    Question("What is the bird on the branch?"),
    Question("Which city is shown in the skyline at night?"),
    Question("What is the name of the dog in the park?"),
]
SWEEP = [0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60]


def retrieve(model, photos: list[dict], image_vectors: np.ndarray, questions: list[Question], k: int):
    """Per question: the top-k photos as Evidence (asset id = index in the collection), best first."""
    q = model.encode_texts([x.text for x in questions], role="query")  # questions x dim
    scores = q @ image_vectors.T  # questions x photos
    top = np.argsort(-scores, axis=1)[:, :k]
    return [[Evidence(int(i), float(s[i]), caption=photos[i]["caption"], image_path=photos[i]["path"]) for i in t]
            for t, s in zip(top, scores)]


def score_rows(questions: list[Question], evidence: list[list[Evidence]], names: list[str]) -> list[dict]:
    """Rank and score of the right photo among the top k (present questions), best score (all)."""
    rows = []
    for x, ev in zip(questions, evidence):
        ranks = [r for r, e in enumerate(ev, 1) if names[e.asset_id] == x.photo]
        rows.append({"question": x.text, "present": x.photo is not None, "best": ev[0].score,
                     "right_rank": ranks[0] if ranks else None,
                     "right_score": ev[ranks[0] - 1].score if ranks else None})
    return rows


def sweep(rows: list[dict]) -> list[dict]:
    """Per min_score: present questions whose right photo is still shown, absent questions abstained by score."""
    present, absent = [r for r in rows if r["present"]], [r for r in rows if not r["present"]]
    return [{"min_score": t,
             "present_right_photo_shown": sum(r["right_score"] is not None and r["right_score"] >= t for r in present),
             "present": len(present),
             "absent_abstained_by_score": sum(r["best"] < t for r in absent), "absent": len(absent)} for t in SWEEP]


def suggest(dev_sweep: list[dict]) -> float:
    """The min_score of the sweep maximising, on DEV, the share of retrieved right photos still shown plus the
    share of absent questions abstained by score; ties go to the lower threshold (fewer present answers lost)."""
    retrieved = max(s["present_right_photo_shown"] for s in dev_sweep)  # at the lowest threshold

    def gain(s: dict) -> float:
        return s["present_right_photo_shown"] / retrieved + s["absent_abstained_by_score"] / s["absent"]

    return max(dev_sweep, key=lambda s: (round(gain(s), 9), -s["min_score"]))["min_score"]


def run_answers(answerer, questions, evidence, names, min_score) -> list[dict]:
    answer(answerer, "What is in the photo?", evidence[0], min_score=-1.0)  # load + warm up, not timed
    rows = []
    for x, ev in zip(questions, evidence):
        start = time.perf_counter()
        result = answer(answerer, x.text, ev, min_score=min_score)
        seconds = time.perf_counter() - start
        cited = [names[i] for i in result.citations]
        keyword = x.keyword is not None and x.keyword in result.answer.lower()
        rows.append({
            "question": x.text, "expected_photo": x.photo, "keyword": x.keyword,
            "shown": [f"{names[e.asset_id]}:{e.score:.3f}" for e in result.evidence],
            "answer": result.answer, "cited": cited, "abstained": result.abstained,
            "model_called": bool(result.evidence), "seconds": seconds, "has_keyword": keyword,
            "cites_right": x.photo in cited, "correct": not result.abstained and keyword and x.photo in cited,
        })
        print(f"{seconds:5.1f}s {x.text[:45]:45s} -> {result.answer!r} {cited}", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    present, absent = [r for r in rows if r["expected_photo"]], [r for r in rows if not r["expected_photo"]]
    called = [r["seconds"] for r in rows if r["model_called"]]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {
        "accuracy_present": mean([r["correct"] for r in present]),
        "keyword_present": mean([r["has_keyword"] for r in present]),
        "cites_right_present": mean([r["cites_right"] for r in present]),
        "cites_anything_answered": mean([bool(r["cited"]) for r in rows if not r["abstained"]]),
        "abstained_absent": mean([r["abstained"] for r in absent]),
        "abstained_absent_by_score": mean([not r["model_called"] for r in absent]),
        "abstained_present": mean([r["abstained"] for r in present]),
        "latency_p50_s": float(np.percentile([r["seconds"] for r in rows], 50)),
        "latency_p95_s": float(np.percentile([r["seconds"] for r in rows], 95)),
        "latency_model_p50_s": float(np.percentile(called, 50)) if called else float("nan"),
        "latency_model_p95_s": float(np.percentile(called, 95)) if called else float("nan"),
        "present": len(present), "absent": len(absent), "model_calls": len(called),
    }


def markdown(scores: dict[str, list[dict]], sweeps: dict[str, list[dict]], rows, summary, args) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| set | question | right photo rank | right photo score | best score |", "|---|---|---|---|---|"]
    for name, rs in scores.items():
        out += [f"| {name} | {r['question']} | {r['right_rank'] or ('miss' if r['present'] else 'absent')} | "
                f"{fmt(r['right_score'])} | {r['best']:.3f} |" for r in rs]
    out += ["", "| set | min_score | present: right photo shown | absent: abstained by score |", "|---|---|---|---|"]
    for name, ss in sweeps.items():
        out += [f"| {name} | {s['min_score']:.2f} | {s['present_right_photo_shown']}/{s['present']} | "
                f"{s['absent_abstained_by_score']}/{s['absent']} |" for s in ss]
    out += ["", f"min_score suggested by DEV (bench/answer.py `suggest`): {suggest(sweeps['DEV']):.2f}"]
    if rows is None:
        return "\n".join(out)
    p, a = summary["present"], summary["absent"]
    out += ["", f"Answerer `{args.answerer}`, min_score {args.min_score}, top-{args.k} retrieval, TEST questions.", "",
            "| metric | value |", "|---|---|",
            f"| accuracy, present (keyword + right citation, not abstained) | {summary['accuracy_present']:.2f} "
            f"({round(summary['accuracy_present'] * p)}/{p}) |",
            f"| keyword in the answer, present | {summary['keyword_present']:.2f} |",
            f"| cites the right photo, present | {summary['cites_right_present']:.2f} |",
            f"| answers citing anything (of those not abstained) | {summary['cites_anything_answered']:.2f} |",
            f"| abstention rate, absent | {summary['abstained_absent']:.2f} "
            f"({round(summary['abstained_absent'] * a)}/{a}; by score {summary['abstained_absent_by_score']:.2f}) |",
            f"| abstention rate, present | {summary['abstained_present']:.2f} |",
            f"| latency p50 / p95, all answers | {summary['latency_p50_s']:.2f} s / {summary['latency_p95_s']:.2f} s |",
            f"| latency p50 / p95, answers that ran the model ({summary['model_calls']}) | "
            f"{summary['latency_model_p50_s']:.2f} s / {summary['latency_model_p95_s']:.2f} s |",
            "", "| question | evidence shown | answer | cited | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = ("correct" if r["correct"] else "wrong") if r["expected_photo"] else (
            "abstained" if r["abstained"] else "answered (should abstain)")
        answer_text = r["answer"].replace("|", "\\|").replace("\n", " ")
        out.append(f"| {r['question']} | {', '.join(r['shown']) or '-'} | {answer_text} | "
                   f"{', '.join(r['cited']) or '-'} | {verdict} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answerer", default="smollm2", help="smollm2 | qwen2-vl:MODEL[@LORA]")
    ap.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    ap.add_argument("--k", type=int, default=3, help="photos retrieved per question")
    ap.add_argument("--scores-only", action="store_true", help="print the score tables, answer nothing")
    ap.add_argument("--data", type=Path, default=OUT / "answer-photos")
    ap.add_argument("--out", type=Path, default=OUT / "answer.json")
    args = ap.parse_args()
    started = time.perf_counter()
    # 1. The collection and its vectors
    pairs = write_photo_sample(args.data)
    photos = [json.loads(line) for line in pairs.read_text().splitlines()]
    for p in photos:
        p["path"] = str(pairs.parent / p["image"])
    names = [p["id"] for p in photos]
    model = omnibridge.load_model("default")
    image_vectors = model.encode_images([Image.open(p["path"]).convert("RGB") for p in photos], role="document")
    # 2. Retrieval and the score distribution
    evidence = {name: retrieve(model, photos, image_vectors, qs, args.k) for name, qs in (("TEST", TEST), ("DEV", DEV))}
    scores = {name: score_rows(qs, evidence[name], names) for name, qs in (("TEST", TEST), ("DEV", DEV))}
    sweeps = {name: sweep(rs) for name, rs in scores.items()}
    # 3. Answers on TEST
    rows = summary = None
    if not args.scores_only:
        rows = run_answers(load_answerer(args.answerer), TEST, evidence["TEST"], names, args.min_score)
        summary = summarise(rows)
    table = markdown(scores, sweeps, rows, summary, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "suggested_min_score": suggest(sweeps["DEV"]),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1_5_15_min_at_end": os.getloadavg(), "seconds": time.perf_counter() - started,
            "answerer": args.answerer, "min_score": args.min_score, "k": args.k}
    args.out.write_text(json.dumps({"meta": meta, "scores": scores, "sweeps": sweeps, "answers": rows,
                                    "summary": summary, "markdown": table}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
