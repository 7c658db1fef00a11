"""Explore: a 2-D map (PCA) of a collection's image embeddings with thumbnails, to see clusters and near-duplicates."""

from __future__ import annotations

from collections import defaultdict

import altair as alt
import streamlit as st

from ui.client import ClientError
from ui.common import client, collection_picker, collections_or_help, thumb

MAP_LIMIT = 2000


@st.cache_data(max_entries=16, show_spinner="Projecting the embeddings...")
def _map(where: str, collection: str, indexed: int, synthetic: bool) -> dict:  # `indexed`: a new ingest redraws
    return client().embedding_map(collection, limit=MAP_LIMIT, include_synthetic=synthetic)


def chart(points: list[dict], icon: int) -> alt.Chart:
    groups = defaultdict(int)
    for p in points:
        groups[p["near_dup_group"]] += 1
    data = [p | {"near-duplicates": groups[p["near_dup_group"]] > 1, "group": f"group #{p['near_dup_group']}"}
            for p in points]
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("x:Q", title="PCA axis 1", scale=alt.Scale(padding=icon)),  # room for the edge thumbnails
        y=alt.Y("y:Q", title="PCA axis 2", scale=alt.Scale(padding=icon)),
        tooltip=[alt.Tooltip("caption:N", title="caption"), alt.Tooltip("id:Q", title="asset"),
                 alt.Tooltip("group:N", title="near-duplicate group"), alt.Tooltip("path:N", title="file")])
    rings = base.mark_circle(size=icon * icon * 1.6, opacity=0.35).encode(
        color=alt.condition("datum['near-duplicates']", alt.value("#d62728"), alt.value("#9aa5b1")))
    images = base.mark_image(width=icon, height=icon).encode(url="thumbnail:N")
    return (rings + images).properties(height=620).interactive()


def near_duplicates(points: list[dict]) -> None:
    groups: dict[int, list[dict]] = defaultdict(list)
    for p in points:
        groups[p["near_dup_group"]].append(p)
    dups = [g for g in groups.values() if len(g) > 1]
    if not dups:
        st.caption("No near-duplicates among these images.")
        return
    st.subheader(f"Near-duplicate groups ({len(dups)})")
    for group in sorted(dups, key=len, reverse=True)[:20]:
        cols = st.columns(min(len(group), 8))
        for col, p in zip(cols, group[:8]):
            data = thumb(p["id"], 128)
            if data:
                col.image(data, width="stretch")
            col.caption(f"#{p['id']} {p['caption']}")


st.title("Explore")
st.caption("Each image sits where its embedding falls on the two main axes (PCA) of the collection: neighbours "
           "look alike to the model. Red rings mark near-duplicates. Drag to pan, scroll to zoom, hover for details.")
colls = collections_or_help()
if colls is not None:
    collection = collection_picker(colls, key="explore_collection", allow_all=False)
    indexed = next(c for c in colls if c["name"] == collection)["assets"].get("indexed", 0)
    synthetic = st.checkbox("Include generated images", key="explore_synthetic")
    try:
        result = _map(client().where, collection, indexed, synthetic)
    except ClientError as e:
        st.error(f"Cannot draw the map: {e}")
        st.stop()
    points = result["points"]
    if not points:
        st.info(f"“{collection}” has no indexed images yet: add some on the Collections page.")
        st.stop()
    note = f"{len(points)} images"
    if result["capped"]:
        note = (f"the first {len(points)} of {result['total']} images (the map is capped at {MAP_LIMIT:,} points to "
                "stay responsive)")
    axes = result.get("explained") or [0, 0]
    st.markdown(f"**{collection}**: {note}; the axes explain {axes[0]:.0%} and {axes[1]:.0%} of the variance.")
    icon = st.slider("Thumbnail size", 16, 96, 40 if len(points) < 200 else 24, key="icon")
    st.altair_chart(chart(points, icon), width="stretch")
    near_duplicates(points)
