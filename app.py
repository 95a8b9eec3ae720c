"""TDA Explorer app: `streamlit run app.py` (or `make run`). A thin layer over `tda_explorer`."""

from __future__ import annotations

import streamlit as st

import appdemo
import appkit

st.set_page_config(page_title="TDA Explorer", page_icon=str(appkit.ASSETS / "logo.svg"), layout="wide")
appkit.init_session()
appkit.apply_assets()

pages = [
    st.Page("views/setup.py", title="Setup", icon=":material/settings:", default=True),
    st.Page("views/attribution.py", title="Attribution", icon=":material/search:"),
    st.Page("views/dtda.py", title="d-TDA", icon=":material/bar_chart:"),
    st.Page("views/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("views/mislabels.py", title="Mislabels", icon=":material/flag:"),
    st.Page("views/pruning.py", title="Pruning & export", icon=":material/content_cut:"),
    st.Page("views/evaluation.py", title="Evaluation", icon=":material/analytics:"),
]
appkit.read_deep_link()  # ?run=…&query=…&attributor=… restores the view (first run of a session only)
nav = st.navigation(pages)
if (asked := appkit.requested_page(pages)) is not None and asked.url_path != nav.url_path:
    st.switch_page(asked)
appdemo.ensure_demo()  # first start on an empty workspace: train the MNIST demo and a fast attributor
appkit.sidebar()
with appkit.app_run(nav.url_path):
    nav.run()
