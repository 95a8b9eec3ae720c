"""TDA Explorer app: `streamlit run app.py` (or `make run`). A thin layer over `tda_explorer`."""

from __future__ import annotations

import streamlit as st

import appkit

st.set_page_config(page_title="TDA Explorer", page_icon=":material/search:", layout="wide")
appkit.init_session()

pages = [
    st.Page("pages/setup.py", title="Setup", icon=":material/settings:", default=True),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/search:"),
    st.Page("pages/dtda.py", title="d-TDA", icon=":material/bar_chart:"),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("pages/mislabels.py", title="Mislabels", icon=":material/flag:"),
    st.Page("pages/pruning.py", title="Pruning & export", icon=":material/content_cut:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
]
nav = st.navigation(pages)
appkit.sidebar()
st.session_state._in_app = True  # tells the pages that app.py set up the session this run
try:
    nav.run()
finally:
    st.session_state._in_app = False
