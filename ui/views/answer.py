"""Answer: a question about a collection, the answer streamed as it is written, its cited images beside it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.client import ClientError
from ui.common import client, collection_picker, collections_or_help, thumb

S = st.session_state


def ask() -> None:
    if S.get("question", "").strip():
        S["asked"] = S["question"].strip()
        S.pop("answer", None)


def _chain(first, rest):
    yield first
    yield from rest


def show_answer_text(final: dict) -> None:
    """The final answer: every [n] in it is an image shown beside it (markers are attached by the engine, never
    written by a model), or an abstention said as such."""
    if final["abstained"]:
        st.warning(f"**No answer.** {final['answer']}  \nThe engine abstains rather than guess when the images it "
                   "finds do not support an answer. Rephrase the question, pick another collection, or check that "
                   "the images you mean are indexed (Collections page).")
    else:
        st.markdown(final["answer"])


def show_status() -> None:
    """Which answerer runs, and whether it is still loading (it loads in the background at start)."""
    status = client().answerer_status()
    if status["state"] == "ready":
        st.caption(f"Answerer: {status['answerer']} · ready")
    elif status["state"] == "failed":
        st.error(f"The answerer {status['answerer']!r} could not load: {status.get('error')}")
    else:
        st.info(f"Loading the answerer ({status['answerer']}) and the search model in the background; the first "
                "answer waits for them.")


def show_evidence(final: dict) -> None:
    evidence = final.get("evidence") or []
    if not evidence:
        st.caption("No image was relevant enough to show.")
        return
    cited = set(final.get("citations") or [])
    st.markdown("**Evidence**")
    cols = st.columns(2)
    for n, e in enumerate(evidence, 1):
        with cols[(n - 1) % 2].container(border=True):
            data = thumb(e["asset_id"], 192, square=True)
            if data:
                st.image(data, width="stretch")
            mark = "cited" if e["asset_id"] in cited else "retrieved, not cited"  # the answer's parsed [n]
            name = Path(e.get("image_path") or "").name
            st.caption(f"[{n}] {e.get('caption') or name} · #{e['asset_id']} · relevance {e['score']:.2f} · {mark}")


st.title("Answer")
st.caption("Ask a question about the images; the answer cites the images it used as [1], [2], ...")
colls = collections_or_help()
if colls is not None:
    show_status()
    st.text_input("Your question", key="question", on_change=ask,
                  placeholder="What is in the coffee cup? What animal is in the photos?")
    left, right = st.columns([2, 1])
    with left:
        collection = collection_picker(colls, key="answer_collection")
    with right:
        k = st.slider("Images to read", 1, 10, 5, key="answer_k")
    if st.button("Ask", type="primary", key="ask_button"):
        ask()

    if S.get("asked"):
        text_col, evidence_col = st.columns([3, 2])
        with text_col:
            st.subheader(S["asked"])
            if "answer" in S:  # already answered: shown again without asking the model
                show_answer_text(S["answer"])
            else:
                holder: dict = {}

                def pieces():
                    for item in client().stream_answer(S["asked"], collection=collection, k=k):
                        if isinstance(item, dict):
                            holder["final"] = item
                        else:
                            yield item

                try:
                    with st.spinner("Finding evidence..."):
                        stream = pieces()
                        first = next(stream, None)
                    streamed = st.empty()
                    if first is not None:
                        with streamed:
                            st.write_stream(_chain(first, stream))
                    S["answer"] = holder["final"]
                    streamed.empty()  # the final answer replaces the stream (the same text when it is answered)
                    show_answer_text(S["answer"])
                except ClientError as e:
                    st.error(f"No answer: {e}")
        if "answer" in S:
            with evidence_col:
                show_evidence(S["answer"])
