"""Fit the keyword side of hybrid relevance: p_keyword = KEYWORD_FULL * coverage ** KEYWORD_POWER (engine.relevance).

    python bench/keyword_weight.py          # needs the emoji package: bench/datasets.py fetches it (npm)

Held-out data with independent wording: the 1,911 Twitter emoji of npm `emoji-datasource-twitter` are the
collection, each with its Unicode name as caption; the queries are their *short names* ("heart_eyes_cat",
"raised_hands", "mailbox_with_no_mail"), written separately from the names, so a query shares some, all or none of
its emoji's caption words, as a person's words do. Short names whose words equal the name's are left out (trivial),
and so are the flags (their short names are country codes). The relevant item of a query is its own emoji.

Every (query, emoji) pair whose caption holds at least one query term is a candidate (pairs with no shared term have
p_keyword = 0 whatever the weights); an emoji holding every query term counts as relevant too ("cat" finds every
cat). KEYWORD_FULL (the relevance of a complete keyword match) stays a rule, 0.9: on this data a complete match is
relevant by that definition. What the data decides is how partial coverage counts: KEYWORD_POWER is the
maximum-likelihood grid point on the partial-coverage pairs of the "cal" half (queries split in two halves by a hash
of their text). The "test" half reports log-loss, Brier and, at the text threshold of
engine/calibration/default.json (keyword evidence alone), precision and recall of "likely" for the fitted power and
for the linear rule it replaces.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.keywords import query_terms  # noqa: E402
from engine.relevance import KEYWORD_FULL  # noqa: E402


def pairs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_datasets", ROOT / "bench" / "datasets.py")
    datasets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(datasets)
    entries = json.loads((datasets.fetch_emoji_package("twitter") / "emoji.json").read_text())
    entries = [e for e in entries if e["category"] != "Flags"]
    names = [set(query_terms(e["name"].lower()).indices) for e in entries]
    out = {"cal": ([], []), "test": ([], [])}  # split -> (coverages, labels)
    for i, e in enumerate(entries):
        for short in e["short_names"]:
            words = short.replace("_", " ").replace("-", " ")
            q = set(query_terms(words).indices)
            if not q or q == names[i]:
                continue
            split = "cal" if zlib.crc32(words.encode()) % 2 == 0 else "test"
            for j, terms in enumerate(names):
                shared = len(q & terms)
                if shared:
                    out[split][0].append(shared / len(q))
                    out[split][1].append(j == i or shared == len(q))  # its emoji, or one holding every word
    return {k: (np.array(c), np.array(y, dtype=float)) for k, (c, y) in out.items()}


def loss(p, y):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def main() -> None:
    data = pairs()
    cov, y = data["cal"]
    partial = cov < 1  # full coverage is relevant by the rule (KEYWORD_FULL); the data decides partial coverage
    w = KEYWORD_FULL
    g = min(np.arange(0.5, 6.0001, 0.1), key=lambda g: loss(w * cov[partial] ** g, y[partial]))
    threshold = json.loads((ROOT / "engine" / "calibration" / "default.json").read_text())["fit"]["text"]["threshold"]
    report = {"fit": {"keyword_full": w, "keyword_power": round(float(g), 1)},
              "cal": {"queries_pairs": int(len(y)), "relevant": int(y.sum())}}
    for name, (w_, g_) in {"fitted": (w, g), "before (linear)": (w, 1.0)}.items():
        c, t = data["test"]
        p = w_ * c ** g_
        likely = p >= threshold
        report[name] = {"test_pairs": int(len(t)), "test_relevant": int(t.sum()), "log_loss": round(loss(p, t), 4),
                        "brier": round(float(np.mean((p - t) ** 2)), 4),
                        "likely_precision": round(float(t[likely].mean()), 3) if likely.any() else None,
                        "likely_recall": round(float(likely[t == 1].mean()), 3),
                        "likely_pairs": int(likely.sum())}
    base = data["test"][1].mean()
    report["constant"] = {"brier": round(float(np.mean((base - data["test"][1]) ** 2)), 4)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
