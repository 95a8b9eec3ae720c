"""TDA Explorer app: `streamlit run app.py` (or `make run`). A thin layer over `tda_explorer`."""

from __future__ import annotations

import streamlit as st

import appkit

st.set_page_config(page_title="TDA Explorer", page_icon=":material/search:", layout="wide")
appkit.init_session()

pages = [
    st.Page("pages/setup.py", title="Setup", icon=":material/settings:", default=True),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/search:"),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("pages/mislabels.py", title="Mislabels", icon=":material/flag:"),
    st.Page("pages/pruning.py", title="Pruning & export", icon=":material/content_cut:"),
]
nav = st.navigation(pages)

with st.sidebar:
    ws = appkit.workspace()
    st.caption(f"Workspace: `{ws.root}`")
    runs = ws.list_runs()
    if runs:
        keys = [m["key"] for m in runs]
        labels = {
            m["key"]: f"{m['config']['dataset']['name']} · {m['config']['model']['arch']} · "
            f"{len(m['config']['seeds'])} seed(s) · {m['key'][:8]}"
            for m in runs
        }
        if st.session_state.run_key not in keys:
            st.session_state.run_key = keys[0]
        st.selectbox("Run", keys, format_func=labels.get, key="run_key")
    else:
        st.info("No run yet: train one on the Setup page.")

nav.run()
