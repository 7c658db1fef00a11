"""What every page shares: the client, thumbnails, the collection picker and the grid of hits."""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st
from PIL import Image

from ui import client as clients

PAGES = {  # page file (relative to ui/app.py) -> title; app.py builds the navigation from this
    "search": ("views/search.py", "Search", ":material/search:"),
    "answer": ("views/answer.py", "Answer", ":material/forum:"),
    "generate": ("views/generate.py", "Generate similar", ":material/auto_awesome:"),
    "collections": ("views/collections.py", "Collections", ":material/photo_library:"),
    "explore": ("views/explore.py", "Explore", ":material/scatter_plot:"),
}
ALL = "All collections"


@st.cache_resource(show_spinner="Loading the search engine...")
def _client_from_settings():
    from engine.settings import get_settings

    return clients.from_settings(get_settings())


def client():
    """The client of this process: the one a test installed (ui.client.use), else from the OMNIBRIDGE_* settings."""
    return clients.override() or _client_from_settings()


@st.cache_data(max_entries=4000, show_spinner=False)
def _thumb(where: str, asset_id: int, size: int, square: bool) -> bytes:
    data = client().thumbnail(asset_id, size)
    if not square:
        return data
    with Image.open(io.BytesIO(data)) as im:  # letterboxed: every card of a grid has the same height
        canvas = Image.new("RGB", (size, size), (246, 246, 248))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=85)
    return out.getvalue()


def thumb(asset_id: int, size: int = 256, square: bool = False) -> bytes | None:
    """A JPEG of the asset, cached; None when its file cannot be read (the hit is still shown)."""
    try:
        return _thumb(client().where, asset_id, size, square)
    except clients.ClientError:
        return None


def page_link(name: str, label: str | None = None) -> None:
    path, title, icon = PAGES[name]
    st.page_link(path, label=label or title, icon=icon)


def collections_or_help() -> list[dict] | None:
    """The collections, or None after telling the user how to add one (nothing indexed yet, or an error)."""
    try:
        colls = client().collections()
    except clients.ClientError as e:
        st.error(f"Cannot list the collections: {e}")
        return None
    if not colls:
        st.info("The library is empty: no collection has been created yet. Add images on the Collections page "
                "(upload files or point at a folder), or run `omnibridge demo` for a sample of real photos.")
        page_link("collections", "Open Collections")
        return None
    return colls


def collection_picker(colls: list[dict], key: str, allow_all: bool = True) -> str | None:
    """A select box of collection names (with 'All collections' first when allowed); None means all."""
    names = [c["name"] for c in colls]
    options = ([ALL] if allow_all else []) + names
    default = "samples" if "samples" in names and not allow_all else None
    choice = st.selectbox("Collection", options, key=key,
                          index=options.index(default) if default in options else 0)
    return None if choice == ALL else choice


def hit_title(hit: dict) -> str:
    return hit.get("caption") or Path(hit.get("path") or "").name or f"#{hit.get('id')}"


def generate_from(asset_id: int) -> None:
    """Open the Generate page on this asset."""
    st.session_state["generate_asset"] = asset_id
    st.switch_page(PAGES["generate"][0])


def hit_grid(hits: list[dict], key: str, columns: int = 4, on_more=None) -> None:
    """Thumbnails with score, caption and file name; 'More like this' and 'Generate similar' on every hit."""
    for start in range(0, len(hits), columns):
        cols = st.columns(columns)
        for col, hit in zip(cols, hits[start:start + columns]):
            with col.container(border=True):
                data = thumb(hit["id"], square=True)
                if data:
                    st.image(data, width="stretch")
                else:
                    st.caption("(the file cannot be read)")
                st.markdown(f"**{hit_title(hit)}**")
                facts = [f"score {hit['score']:.2f}"] + ([] if hit.get("likely", True) else ["unlikely"])
                if hit.get("matched"):
                    facts.append(f"{hit['matched']} match")
                if hit.get("duplicates"):
                    facts.append(f"+{hit['duplicates']} near-duplicate{'s' if hit['duplicates'] > 1 else ''}")
                if hit.get("synthetic"):
                    facts.append("generated")
                st.caption(" · ".join(facts) + f"  \n{Path(hit.get('path') or '').name} · #{hit['id']}"
                           + (f" · {hit['collection']}" if hit.get("collection") else ""))
                if hit.get("tags"):
                    st.caption("tags: " + ", ".join(hit["tags"]))
                if on_more and st.button("More like this", key=f"{key}-more-{hit['id']}", width="stretch",
                                         icon=":material/image_search:"):
                    on_more(hit["id"])
                if st.button("Generate similar", key=f"{key}-gen-{hit['id']}", width="stretch",
                             icon=":material/auto_awesome:"):
                    generate_from(hit["id"])
