"""Evaluation: LDS (with bootstrap 95% intervals), mislabel AUC and time for every attributor of the run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

import appjobs
import appkit
from tda_explorer.errors import TDAError
from tda_explorer.evaluation import LDSConfig
from tda_explorer.evaluation.report import evaluation_rows
from tda_explorer.evaluation.trust import record_lds
from tda_explorer.viz.figures import bar_with_interval

ws, run = appkit.page("Evaluation")
data = appkit.dataset_of(run)

st.caption(
    "LDS: retrain on M random subsets (alpha of the training set), predict each subset's effect on every "
    "test loss by summing scores, and rank-correlate with the truth. The ground truth is computed once "
    "and shared by every attributor."
)
with st.form("lds"):
    c1, c2, c3 = st.columns(3)
    n_subsets = c1.number_input("Subsets M", 10, 500, 20, step=10)  # the quick check's size: one shared truth
    alpha = c2.slider("alpha (subset fraction)", 0.1, 0.9, 0.5, 0.05)
    seeds = c3.number_input("Retraining seeds R", 1, 5, 1)
    go = st.form_submit_button("Compute (or reuse) the LDS ground truth", type="primary")
config = LDSConfig(n_subsets=int(n_subsets), alpha=float(alpha), seeds=tuple(range(int(seeds))))
truth = None
try:
    truth = appkit.stored_lds_truth(str(ws.root), run.key, int(n_subsets), float(alpha), int(seeds))
    if truth is None:  # in the background: an estimate first when long, progress, Cancel
        truth = appjobs.lds_truth_step(run, data, config, ws, requested=go, executor=appkit.app_executor())
except TDAError as e:
    st.error(str(e))

rows = evaluation_rows(run, data, ws, truth)
if truth is not None:  # the attributor pickers show these LDS values (trust cues)
    for row in rows:
        if row["key"] and row["lds"] == row["lds"]:
            record_lds(run, ws, row["key"], truth)
if not rows:
    st.info("Compute an attributor on the Setup page first.")
    st.stop()
table = pd.DataFrame(rows)
st.dataframe(table.drop(columns=["key"]), hide_index=True)
if truth is None:
    st.caption("No LDS ground truth for these settings yet: compute it above.")
else:
    have = table.dropna(subset=["lds"])
    if not have.empty:
        st.plotly_chart(
            bar_with_interval(have["method"].tolist(), have["lds"].to_numpy(), have["lds_low"].to_numpy(),
                              have["lds_high"].to_numpy(), "LDS (mean over test queries, 95% CI)"),
            width="stretch",
        )  # fmt: skip

bench = sorted(Path("benchmarks/results").glob("*.json")) if Path("benchmarks/results").exists() else []
if bench:
    with st.expander("Benchmark results shipped with the repo"):
        for path in bench:
            st.markdown(f"`{path}`")
        md = Path("benchmarks/RESULTS.md")
        if md.exists():
            st.markdown(md.read_text())
