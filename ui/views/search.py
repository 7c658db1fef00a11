"""Search: by text or by an uploaded image, with filters, a grid of hits, "more like this" and pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.client import ClientError
from ui.common import client, collection_picker, collections_or_help, hit_grid, thumb

FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]
S = st.session_state


def set_query(**query) -> None:
    S["query"], S["offset"] = query, 0


def text_entered() -> None:
    if S.get("q", "").strip():
        set_query(text=S["q"].strip())


def more_like(asset_id: int) -> None:
    set_query(asset_id=asset_id)
    st.rerun()


MODES = {"hybrid": "Meaning and words", "vector": "Meaning only", "keyword": "Words only"}
TARGETS = {"images": "Images", "texts": "Texts (captions, OCR, documents)"}


def filters_form() -> tuple[dict, bool, bool, str]:
    with st.expander("Filters"):
        a, b, c = st.columns(3)
        formats = a.multiselect("Format", FORMATS, key="f_format")
        tags = a.text_input("Tags (any of, comma-separated)", key="f_tags")
        min_w = b.number_input("Minimum width (px)", min_value=0, step=100, key="f_min_width")
        min_h = b.number_input("Minimum height (px)", min_value=0, step=100, key="f_min_height")
        since = c.date_input("Modified since", value=None, key="f_since")
        until = c.date_input("Modified until", value=None, key="f_until")
        synthetic = st.checkbox("Include generated images", key="f_synthetic")
        all_dups = st.checkbox("Show every near-duplicate (not only the best of each group)", key="f_all_dups")
        mode = st.radio("A text matches by", list(MODES), format_func=MODES.get, horizontal=True, key="f_mode",
                        help="meaning: what the model sees in the image; words: captions, tags, OCR, file names")
    filters = {"format": formats, "tags": [t.strip() for t in tags.split(",") if t.strip()],
               "min_width": int(min_w) or None, "min_height": int(min_h) or None,
               "since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
    return {k: v for k, v in filters.items() if v}, synthetic, not all_dups, mode


def describe(query: dict) -> None:
    if "text" in query:
        st.subheader(f"Results for “{query['text']}”")
    elif "asset_id" in query:
        left, right = st.columns([1, 8])
        data = thumb(query["asset_id"], 128)
        if data:
            left.image(data, width="stretch")
        right.subheader(f"More like #{query['asset_id']}")
    else:
        left, right = st.columns([1, 8])
        left.image(query["image"][1], width="stretch")
        right.subheader(f"Images like {query['image'][0]}")


def no_match(query: dict, filtered: bool) -> None:
    if "text" in query:
        what = f"“{query['text']}”"
        tips = ["use other or fewer words (describe what is visible: objects, colours, scene)",
                "search by an example image instead"]
    else:  # an image query: nothing here is about words
        what = "this image"
        tips = ["use another example image, or one cropped to the subject you mean"]
    if filtered:
        tips.insert(0, "clear or loosen the filters")
    tips.append("pick another collection, or add images on the Collections page")
    kind = "text" if "text" in query else "image"
    st.warning(f"No good match for {what} in this collection: no {'image' if kind == 'image' else 'result'} is "
               f"likely{' to show the same picture or subject' if kind == 'image' else ''}. Try to "
               + "; ".join(tips) + ".")


def text_list(hits: list[dict], key: str = "text") -> None:
    """Text hits: the text, what kind it is, and the image (or document) it belongs to."""
    for hit in hits:
        with st.container(border=True):
            left, right = st.columns([1, 6])
            data = thumb(hit["asset_id"], 128, square=True)
            if data:
                left.image(data, width="stretch")
            right.markdown(hit.get("content") or "")
            unlikely = "" if hit.get("likely", True) else "unlikely · "
            right.caption(f"{unlikely}{hit.get('kind')} · score {hit['score']:.2f} · "
                          f"{Path(hit.get('path') or '').name} · "
                          f"#{hit['asset_id']}" + (f" · {hit['collection']}" if hit.get("collection") else ""))
            if data and right.button("Images like this one", key=f"text-more-{hit['id']}",
                                     icon=":material/image_search:"):
                S["set_target"] = "images"  # applied before the radio is drawn on the next run
                more_like(hit["asset_id"])


def pager(offset: int, size: int, has_next: bool) -> None:
    prev, label, nxt = st.columns([1, 2, 1])
    if prev.button("← Previous", disabled=offset == 0, key="prev_page", width="stretch"):
        S["offset"] = max(0, offset - size)
        st.rerun()
    label.markdown(f"<div style='text-align:center'>Page {offset // size + 1}</div>", unsafe_allow_html=True)
    if nxt.button("Next →", disabled=not has_next, key="next_page", width="stretch"):
        S["offset"] = offset + size
        st.rerun()


st.title("Search")
colls = collections_or_help()
if colls is not None:
    text_col, image_col = st.columns([3, 2])
    with text_col:
        st.text_input("Describe what you are looking for", key="q", on_change=text_entered,
                      placeholder="a cup of coffee, an astronaut, coins on a table...")
        if st.button("Search", type="primary", key="search_button"):
            if S.get("q", "").strip():
                text_entered()
            else:
                st.toast("Type a few words to search for first.")
    with image_col:
        upload = st.file_uploader("…or search by image", type=["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif",
                                                                "tiff"], key="query_image")
        if upload is not None and st.button("Search by this image", key="image_button"):
            set_query(image=(upload.name, upload.getvalue()))
    where_col, target_col = st.columns([3, 2])
    with where_col:
        collection = collection_picker(colls, key="collection")
    with target_col:
        if "set_target" in S:
            S["target"] = S.pop("set_target")
        target = st.radio("Find", list(TARGETS), format_func=TARGETS.get, horizontal=True, key="target")
    filters, synthetic, collapse, mode = filters_form()
    size = st.select_slider("Hits per page", [8, 12, 20, 40], value=12, key="page_size")

    query = S.get("query")
    if query:
        signature = (repr(query)[:200], collection, repr(filters), synthetic, collapse, size, mode, target)
        if S.get("signature") != signature:
            S["signature"], S["offset"] = signature, 0
        offset = S.get("offset", 0)
        describe(query)
        try:
            with st.spinner("Searching..."):
                result = client().search(**query, collection=collection, k=size + 1, offset=offset,
                                         filters=filters, include_synthetic=synthetic, collapse=collapse,
                                         mode=mode, target=target)
        except ClientError as e:
            st.error(f"The search failed: {e}")
        else:
            hits = result["hits"]
            S["last_hits"] = hits[:size]
            for note in result.get("notes") or []:
                st.caption(note)
            if result.get("no_match") and not offset:
                no_match(query, bool(filters))
            elif not hits and offset:
                st.info("No more results: this is past the last page.")
            page = hits[:size]
            above, below = [h for h in page if h.get("likely")], [h for h in page if not h.get("likely")]
            show = text_list if target == "texts" else lambda hs, key: hit_grid(hs, key=key, on_more=more_like)
            show(above, key="hit")
            if below:  # below the line: still listed, ranked, and marked as unlikely
                st.divider()
                st.caption(f"**Below the line: unlikely matches** (a likely match scores at least "
                           f"{result.get('threshold', 0):.2f})")
                show(below, key="hit")
            if offset or len(hits) > size:
                pager(offset, size, has_next=len(hits) > size)
    else:
        st.caption("Type a description and press Enter, or upload an example image. Every hit offers "
                   "“More like this” and “Generate similar”.")
