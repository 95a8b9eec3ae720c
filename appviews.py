"""Cached loaders for the app's pages (Streamlit), next to `appkit` (state and caches) and `appgallery`
(example rendering, `show_example`): `cached_train_predictions`, the training set's class probabilities,
computed once per run and server instead of on every rerun."""

from __future__ import annotations

import numpy as np
import streamlit as st

import appkit


@st.cache_data(show_spinner=False)
def cached_train_predictions(root: str, run_key: str) -> np.ndarray:
    """Training-set class probabilities `[n_train, C]` of the run's first seed, as numpy (cached)."""
    run = appkit.cached_run(root, run_key)
    return run.predict(appkit.dataset_of(run).train).numpy()
