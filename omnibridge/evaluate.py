"""Retrieval evaluation with multi-positive ranks.

Text->image: one query per distinct caption; its positives are every image it is paired with, and the query
counts as a hit at K when the best-ranked of them is in the top K. Image->text: one query per image; positives
are its captions.
"""

from __future__ import annotations

import numpy as np

from .data import Pairs
from .retrieval import RetrievalModel

KS = (1, 5, 10)


def recall_at_k(sims: np.ndarray, positives: list[set[int]], ks=KS) -> dict[str, float]:
    """sims: queries x candidates. The rank of a query is the best rank among its positives."""
    order = np.argsort(-sims, axis=1, kind="stable")
    ranks = np.empty(len(sims), dtype=np.int64)
    for q, pos in enumerate(positives):
        hit = np.isin(order[q], list(pos))
        ranks[q] = int(np.argmax(hit))
    return {f"r{k}": round(float((ranks < k).mean()), 4) for k in ks}


def evaluate(model: RetrievalModel, pairs: Pairs, batch_size: int = 32) -> dict:
    texts = sorted(set(pairs.captions))
    t_index = {t: i for i, t in enumerate(texts)}
    chunks = [  # decoded one batch at a time
        model.encode_images([pairs.load_image(i) for i in range(k, min(k + batch_size, len(pairs.images)))],
                            role=("document", "query"), batch_size=batch_size)
        for k in range(0, len(pairs.images), batch_size)
    ]
    img_docs, img_queries = (np.concatenate([c[r] for c in chunks]) for r in (0, 1))  # m D
    txt_queries, txt_docs = model.encode_texts(texts, role=("query", "document"), batch_size=batch_size)  # n D
    # images sharing an id are one image for scoring (the same picture in two files)
    same_id: dict[str, set[int]] = {}
    for i, image_id in enumerate(pairs.image_ids):
        same_id.setdefault(image_id, set()).add(i)
    t2i_pos = [set() for _ in texts]
    i2t_pos = [set() for _ in pairs.images]
    for cap, im in zip(pairs.captions, pairs.caption_image):
        for j in same_id[pairs.image_ids[im]]:
            t2i_pos[t_index[cap]].add(j)
            i2t_pos[j].add(t_index[cap])
    return {
        "t2i": recall_at_k(txt_queries @ img_docs.T, t2i_pos),
        "i2t": recall_at_k(img_queries @ txt_docs.T, i2t_pos),
        "queries": len(texts),
        "images": len(pairs.images),
    }
