"""Generate similar: N variants of an indexed image, in a gallery with their lineage (source, prompt, model, seed)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.client import GENERATOR_HOWTO, ClientError, GeneratorMissing
from ui.common import client, page_link, thumb

S = st.session_state


def explain_setup(message: str | None = None) -> None:
    st.info("**No image generator is configured.** " + GENERATOR_HOWTO
            + (f"\n\nThe engine says: {message}" if message else ""))


def source_panel(asset_id: int) -> dict | None:
    try:
        info = client().asset(asset_id)
    except ClientError as e:
        st.error(f"Cannot open asset #{asset_id}: {e}")
        return None
    left, right = st.columns([1, 3])
    data = thumb(asset_id, 256)
    if data:
        left.image(data, width="stretch")
    caption = (info.get("texts") or {}).get("caption", [None])[0]
    right.markdown(f"**#{asset_id} · {caption or Path(info['path']).name}**")
    right.caption(f"{info.get('collection')} · {info.get('format')} {info.get('width')}×{info.get('height')} · "
                  f"{info['path']}")
    return info | {"caption": caption}


def gallery(variants: list[dict]) -> None:
    st.subheader(f"{len(variants)} variant{'s' if len(variants) != 1 else ''}")
    cols = st.columns(min(4, len(variants)) or 1)
    for i, v in enumerate(variants):
        with cols[i % len(cols)].container(border=True):
            data = thumb(v["asset_id"], 256)
            if data:
                st.image(data, width="stretch")
            st.caption(f"#{v['asset_id']} · seed {v['seed']}")
            with st.expander("Lineage"):
                st.markdown(f"- from **#{v['source_asset_id']}**\n- prompt: “{v['prompt']}”\n- model: `{v['model']}`"
                            f"\n- seed: {v['seed']}\n- settings: `{v.get('params')}`\n- file: `{v['path']}`")
    st.caption("Variants are indexed into the source's collection as generated images: searches leave them out "
               "unless “Include generated images” is ticked.")


st.title("Generate similar")
configured = client().generator_configured()
if configured is False:
    explain_setup()

default_id = S.get("generate_asset")
asset_id = st.number_input("Source image (asset id)", min_value=1, step=1, value=default_id, key="gen_asset",
                           placeholder="an id from a search hit, e.g. 3")
if not asset_id:
    st.caption("Open a hit's “Generate similar” on the Search page, or type an asset id.")
    page_link("search", "Find an image on the Search page")
else:
    info = source_panel(int(asset_id))
    if info is not None:
        a, b, c, d = st.columns(4)
        n = a.slider("Variants", 1, 8, 4, key="gen_n")
        seed = b.number_input("Seed", min_value=0, value=0, step=1, key="gen_seed")
        strength = c.slider("Strength (how far from the source)", 0.05, 1.0, 0.6, step=0.05, key="gen_strength")
        steps = d.slider("Steps", 1, 100, 30, key="gen_steps")
        prompt = st.text_input("Prompt", key="gen_prompt", placeholder=info.get("caption") or "the image's caption")
        if st.button("Generate", type="primary", key="gen_button", disabled=configured is False):
            try:
                with st.spinner(f"Generating {n} variant{'s' if n > 1 else ''}..."):
                    S["variants"] = client().generate_similar(int(asset_id), n=n, seed=int(seed), strength=strength,
                                                              steps=steps, prompt=prompt.strip() or None)
            except GeneratorMissing as e:
                explain_setup(str(e))
            except ClientError as e:
                st.error(f"Generation failed: {e}")
        variants = [v for v in S.get("variants", []) if v["source_asset_id"] == int(asset_id)]
        if variants:
            gallery(variants)
