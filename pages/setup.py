"""Setup: choose a dataset and a model, train over seeds (or reuse the cached run), compute attributors."""

from __future__ import annotations

import streamlit as st

import appkit
from tda_explorer.attributors import ATTRIBUTORS
from tda_explorer.data import BUILTIN_DATASETS, DatasetSpec, load_dataset
from tda_explorer.errors import TDAError
from tda_explorer.models import MODEL_CONFIGS, default_model_config
from tda_explorer.training import LocalExecutor, TrainConfig, default_train_config, train_run

appkit.page_guard()
st.title("Setup")
ws = appkit.workspace()

st.subheader("1 · Train")
with st.form("train"):
    c1, c2, c3 = st.columns(3)
    dataset = c1.selectbox("Dataset", [d for d in BUILTIN_DATASETS if d != "sst2"], index=0)
    arch = c2.selectbox("Model", [a for a in MODEL_CONFIGS if a != "text"], index=1)
    seeds = c3.number_input("Seeds", min_value=1, max_value=20, value=1)
    defaults = default_train_config(arch)
    c4, c5 = st.columns(2)
    epochs = c4.number_input("Epochs (blank = default for the model)", min_value=1, max_value=200, value=None)
    noise = c5.slider("Label noise (fraction of training labels flipped)", 0.0, 0.5, 0.0, 0.05)
    submitted = st.form_submit_button("Train (or reuse the cached run)", type="primary")

if submitted:
    try:
        splits = load_dataset(DatasetSpec(name=dataset, noise_fraction=noise))
        cfg = default_train_config(arch)
        if epochs:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": int(epochs)})
        bar = st.progress(0.0, text="training…")
        run = train_run(
            splits,
            default_model_config(arch),
            cfg,
            range(int(seeds)),
            ws,
            LocalExecutor(1),
            appkit.progress_callback(bar),
        )
        bar.progress(1.0, text="done")
        st.session_state.run_key = run.key
        st.success(
            f"Run {run.key}: mean test accuracy {run.mean_metric('test_acc'):.3f} over {len(run.seeds)} seed(s)."
        )
        st.rerun()
    except TDAError as e:
        st.error(str(e))

run = appkit.current_run()
if run is None:
    st.stop()

st.subheader("2 · Attribute")
st.write(
    f"Current run **{run.key}** — {run.dataset['name']} · {run.model_config.arch} · seeds {list(run.seeds)} · "
    f"mean test accuracy {run.mean_metric('test_acc'):.3f}"
)
with st.form("attribute"):
    method = st.selectbox("Attributor", sorted(ATTRIBUTORS), index=sorted(ATTRIBUTORS).index("grad_dot"))
    params = st.selectbox(
        "Parameters", ["head", "all"], help="gradient over the last layer or all parameters"
    )
    go = st.form_submit_button("Compute (or reuse cached scores)", type="primary")
if go:
    try:
        bar = st.progress(0.0, text=f"{method}…")
        result = appkit.compute_scores(
            run, appkit.dataset_of(run), method, {"params": params}, "test", ws, appkit.progress_callback(bar)
        )
        bar.progress(1.0, text="done")
        st.session_state.score_key = result.key
        st.success(
            f"{method}: {result.scores.shape[0]} × {result.scores.shape[1]} scores in {result.seconds:.1f} s."
        )
    except TDAError as e:
        st.error(str(e))

stored = appkit.list_scores(ws, run.key)
if stored:
    st.caption("Computed for this run:")
    st.dataframe(
        [
            {
                "key": m["key"],
                "method": m["config"]["method"],
                "queries": m["config"]["queries"],
                "seconds": round(m["extra"]["seconds"], 2),
                "created": m["created"],
            }
            for m in stored
        ],
        hide_index=True,
    )
