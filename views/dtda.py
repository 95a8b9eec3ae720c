"""Distributional TDA: how a test example's measurement varies across training seeds, with and (as
predicted) without a chosen training example; per-seed scores; mean, variance and W2 influence."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import streamlit as st

import appgallery
import appjobs
import appkit
from tda_explorer.attributors.dtda import BASES, MEASUREMENTS, compute_dtda
from tda_explorer.errors import TDAError
from tda_explorer.estimates import estimate_dtda, full_settings, load_calibration, run_shape
from tda_explorer.viz.figures import histogram_figure, violin_figure

ws, run = appkit.page("Distributional attribution (d-TDA)")
root = str(ws.root)
if len(run.seeds) < 2:
    st.info(
        "d-TDA compares training seeds: train a run with at least 2 seeds (5–10 is better) on the Setup page."
    )
    st.stop()
data = appkit.dataset_of(run)
test, train = data.test, data.train

with st.form("dtda"):
    c1, c2 = st.columns(2)
    measurement = c1.selectbox(
        "Measurement of the test example", MEASUREMENTS, help="loss, margin or class probability"
    )
    base = c2.selectbox(
        "Per-seed attribution", BASES, help="influence (EK-FAC), TRAK or Source at each seed, over the last layer "
        "by default (its time is estimated before it starts; all parameters took 463 s on the demo)",
    )  # fmt: skip
    go = st.form_submit_button("Compute (or reuse) across all seeds", type="primary")
settings = {"base": base, "measurement": measurement}
started = datetime.now(UTC)
box = st.empty()  # "not computed yet" goes away once the result is drawn
result = None
try:
    result = appkit.stored_dtda(root, run.key, settings)
except TDAError as e:
    st.error(str(e))
dtda_key = f"dtda:{root}:{run.key}:{json.dumps(settings, sort_keys=True)}"
for ended in appjobs.resume(f"dtda:{root}:{run.key}:", skip=dtda_key):  # started before the form was reset
    if ended.status == "done" and ended.result is not None and ended.result.config.get("method", {}) == {
        **ended.result.config.get("method", {}), **settings}:  # fmt: skip
        result = ended.result
if result is None:  # computed in the background: an estimate first when long, progress, Cancel
    shape = run_shape(run, data)
    outcome = appjobs.run_step(
        dtda_key,
        f"d-TDA ({base}, {measurement}) over {len(run.seeds)} seeds",
        lambda progress: compute_dtda(run, data, settings, "test", ws, progress),
        estimate_dtda(full_settings("dtda", settings), shape, load_calibration(ws)),
        requested=go, ws=ws,
    )  # fmt: skip
    if outcome is not None and outcome.status == "done":
        result = outcome.result
if result is None:
    box.caption(f"Not computed yet for these settings ({len(run.seeds)} seeds): press the button.")
    st.stop()
if result.key:
    meta = ws.meta("dtda", result.key)
    note = appkit.cache_note(result.seconds, meta["created"], appkit.was_reused(meta, started))
    box.caption(f"{note} · {len(run.seeds)} seeds")

ids = list(result.query_ids)
appkit.synced_selectbox("Test example", ids, "query_id")
q = ids.index(st.session_state.query_id)
k = st.slider("Top training examples", 3, 20, 8)

mean_inf = result.mean_influence()[q]
var_inf = result.variance_influence()[q]
w2_inf = result.w2_influence()[q]
tables = {}
for name, values in (("mean influence", mean_inf), ("variance influence", var_inf), ("W2 influence", w2_inf)):
    top = np.argsort(-np.abs(values) if name != "W2 influence" else -values, kind="stable")[:k]
    tables[name] = pd.DataFrame(
        {"id": [result.train_ids[i] for i in top], "label": [train.class_names[int(train.labels[i])] for i in top],
         name: values[top]}
    )  # fmt: skip
cols = st.columns(3)
for col, (name, table) in zip(cols, tables.items(), strict=True):
    col.markdown(f"**Top by |{name}|**" if name != "W2 influence" else f"**Top by {name}**")
    col.dataframe(table, hide_index=True, column_config={name: st.column_config.NumberColumn(format="%.3e")})

candidates = list(dict.fromkeys(sum((t["id"].tolist() for t in tables.values()), [])))
z_id = st.selectbox("Training example to remove", candidates)
z = result.train_ids.index(z_id)
left, mid, m1, m2, m3 = st.columns([1, 1, 1, 1, 1])
for col, examples, i in ((left, test, test.index_of([ids[q]])[0]), (mid, train, train.index_of([z_id])[0])):
    appgallery.show_example(col, examples, i)
m1.metric("mean influence", f"{mean_inf[z]:+.3e}", help="positive = the example helps this prediction")
m2.metric("variance influence", f"{var_inf[z]:+.3e}", help="Var without − Var with, over seeds")
m3.metric("W2 influence", f"{w2_inf[z]:.3e}")
x, y = result.pair(q, z)
st.plotly_chart(  # full width, bins shared by both distributions and chosen from the data
    histogram_figure({"trained with it (each seed)": x, f"predicted without {z_id}": y}, result.measurement),
    width="stretch",
)

st.markdown("**Each top example's predicted effect across seeds** (change of the measurement on removal)")
top_mean = tables["mean influence"]["id"].tolist()
samples = {i: result.deltas[:, q, result.train_ids.index(i)] for i in top_mean}
st.plotly_chart(violin_figure(samples, f"Δ {result.measurement} on removal"), width="stretch")

validation = appkit.stored_dtda_validation(root, result.config)
if validation is not None:
    st.subheader("Validation: predicted vs actually retrained")
    st.dataframe(pd.DataFrame(validation.table()), hide_index=True)
    st.caption(
        f"correlation of predicted and retrained mean shifts over the pairs: {validation.correlation():.3f}"
    )
