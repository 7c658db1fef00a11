"""The OmniBridge Search UI: `streamlit run ui/app.py` (or `omnibridge demo`, which also starts the API).

It reaches the engine through one client (ui/client.py): in this process by default, over the HTTP API when
OMNIBRIDGE_API_URL is set."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ui`, `engine` importable from a plain checkout

from ui.common import PAGES, client  # noqa: E402

st.set_page_config(page_title="OmniBridge Search", page_icon=":material/image_search:", layout="wide")
pages = [st.Page(path, title=title, icon=icon, default=name == "search") for name, (path, title, icon) in PAGES.items()]
page = st.navigation(pages)
with st.sidebar:
    st.caption(f"Engine: {client().where}")
page.run()
