"""App glue for the first start and for Setup's estimates: the MNIST demo prepared with a progress bar, and
training times predicted from runs measured on this machine. No algorithm code (see `tda_explorer.demo`)."""

from __future__ import annotations

import json
import os
import threading

import pandas as pd
import streamlit as st

from appkit import app_executor, cached_dataset, progress_callback, workspace
from tda_explorer.store import Workspace

_DEMO_LOCK = threading.Lock()  # one preparation per server process; other sessions wait, then reuse it


def ensure_demo() -> None:
    """On a first start (no run in the workspace), train the MNIST demo over 5 seeds and compute Grad-Dot and
    TRAK with a progress bar, so every page is usable without a visit to Setup. Checked once per session;
    `TDA_DEMO=0` turns it off (the tests do)."""
    if os.environ.get("TDA_DEMO", "1") == "0" or st.session_state.get("_demo_checked"):
        return
    st.session_state._demo_checked = True
    from tda_explorer.demo import DEMO_SEEDS, prepare_demo
    from tda_explorer.errors import TDAError

    ws = workspace()
    if ws.list_runs():
        return
    box = st.empty()
    with box.container():
        st.info(
            f"First start: preparing the MNIST demo (an MLP trained over {DEMO_SEEDS} seeds, then Grad-Dot and "
            f"TRAK). {demo_estimate(ws)}; every result is cached in the workspace."
        )
        bar = st.progress(0.0, text="waiting for another session's preparation…")
        try:
            with _DEMO_LOCK:  # in-process: no worker processes spawned from the server's script thread
                demo = prepare_demo(ws, progress_callback(bar), executor=app_executor())
        except TDAError as e:
            st.error(f"The demo could not be prepared: {e}")
            return
    box.empty()
    st.session_state.run_key = demo.run.key
    st.session_state.score_key = demo.score_keys[-1]


def demo_estimate(ws: Workspace) -> str:
    """`Estimated about N s (training …, grad_dot …, trak …)` for the demo, from the cost model."""
    from tda_explorer.data import DatasetSpec
    from tda_explorer.demo import DEMO_ARCH, DEMO_ATTRIBUTORS, DEMO_DATASET, DEMO_SEEDS
    from tda_explorer.estimates import (
        Estimate,
        estimate_attributor,
        estimate_training,
        full_settings,
        load_calibration,
        training_shape,
    )
    from tda_explorer.models import default_model_config
    from tda_explorer.training import default_train_config

    splits = cached_dataset(json.dumps(DatasetSpec(DEMO_DATASET).to_dict(), sort_keys=True))
    shape = training_shape(splits.train, default_model_config(DEMO_ARCH), default_train_config(DEMO_ARCH),
                           DEMO_SEEDS, n_query=len(splits.test), n_val=len(splits.val))  # fmt: skip
    cal = load_calibration(ws)
    parts = [estimate_training(shape, DEMO_SEEDS, cal)] + [
        estimate_attributor(m, full_settings(m, s), shape, cal) for m, s in DEMO_ATTRIBUTORS
    ]
    total = Estimate(sum(e.seconds for e in parts), [p for e in parts for p in e.parts], load=cal.load)
    return f"Estimated {total.describe()}"


def training_estimate(ws: Workspace, dataset: str, arch: str, seeds: int) -> str | None:
    """`about N s (S seeds × s per seed measured here)` from the runs of the same dataset and model already
    in the workspace (their per-seed wall seconds: a cost model calibrated on this machine), else None."""
    per_seed = [
        float(m["seconds"])
        for meta in ws.list_runs()
        if meta["config"]["dataset"].get("name") == dataset and meta["config"]["model"].get("arch") == arch
        for m in meta.get("extra", {}).get("metrics", {}).values()
        if isinstance(m, dict) and m.get("seconds")
    ]
    if not per_seed:
        return None
    each = float(pd.Series(per_seed).median())
    return f"about {each * seeds:.0f} s ({seeds} seed(s) × {each:.1f} s per seed measured on this machine)"
