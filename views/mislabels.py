"""Mislabels: training examples ranked by a mislabel score; flag / unflag with a suggested label and note."""

from __future__ import annotations

import numpy as np
import streamlit as st

import appgallery
import appjobs
import appkit
from tda_explorer.evaluation.mislabel import mislabel_metrics, roc_points
from tda_explorer.evaluation.run_label_quality import COMBINED, N_FOLDS, REPEATS
from tda_explorer.viz.figures import roc_figure

ws, run = appkit.page("Mislabels")
root = str(ws.root)
data = appkit.dataset_of(run)
train = data.train
scores = appkit.mislabel_scores(root, run)
if COMBINED not in scores:
    if run.train_config is None:
        st.caption(
            "The combined mislabel score and cleanlab's need the run's training recipe (out-of-fold retraining); "
            "this imported run has none, so self-influence and the own loss are shown."
        )
    else:
        st.caption(
            f"A stronger ranking: the combined mislabel score (out-of-fold margin, own loss and the labels of the "
            f"nearest training examples) and cleanlab's, from {N_FOLDS * REPEATS} out-of-fold retrainings."
        )
        go = st.button("Compute the combined mislabel score")
        if appjobs.oof_step(run, data, ws, requested=go, executor=appkit.app_executor()) is not None:
            st.rerun()
name = st.selectbox("Mislabel score (higher = more suspicious)", list(scores))
score = np.asarray(scores[name], dtype=np.float64)

if data.flipped_ids:
    flipped = np.isin(np.asarray(train.ids), np.asarray(data.flipped_ids))
    fpr, tpr, auc = roc_points(score, flipped)
    result = mislabel_metrics(score, flipped)
    c1, c2 = st.columns([2, 1])
    c1.plotly_chart(roc_figure(fpr, tpr, auc, name), width="stretch")
    c2.metric("ROC-AUC against the injected flips", f"{auc:.3f}")
    for frac, rec in result.recall_at.items():
        c2.metric(f"flips found in the top {float(frac):.0%}", f"{rec:.1%}")
else:
    st.caption("No label noise was injected in this run, so there is no known truth to score against.")

flags = appkit.flags_for(run.key)
st.subheader("Most suspicious training examples")
n_show = st.slider("How many", 4, 64, 16, step=4)
keep = appgallery.filter_widget("mislabels", train, score, "mislabel score").mask(train, flags, score)
order = [int(i) for i in np.argsort(-score, kind="stable") if keep[i]][:n_show]
if not order:
    st.info("No training example passes the filter.")
appgallery.grid(train, order, score[order], flags, 2 if train.kind == "text" else 4)

st.subheader("Flag or unflag")
with st.form("flag"):
    chosen = st.multiselect("Examples", [train.ids[i] for i in order], key="flag_ids")
    c1, c2 = st.columns(2)
    suggested = c1.selectbox("Suggested label (optional)", ["—", *train.class_names])
    note = c2.text_input("Note (optional)")
    b1, b2 = st.columns(2)
    do_flag = b1.form_submit_button("Flag", type="primary")
    do_unflag = b2.form_submit_button("Unflag")
if do_flag and chosen:
    n = ws.flags().flag_many(
        run.key, chosen, suggested_label=None if suggested == "—" else suggested, note=note
    )
    st.success(f"Flagged {n} example(s).")
    st.rerun()
if do_unflag and chosen:
    n = sum(ws.flags().unflag(run.key, i) for i in chosen)
    st.success(f"Unflagged {n} example(s).")
    st.rerun()

if flags:
    st.caption(f"{len(flags)} flagged in this run:")
    st.dataframe(
        [
            {
                "id": f.example_id,
                "suggested": f.suggested_label,
                "note": f.note,
                "updated": appkit.human_time(f.updated_at),
            }
            for f in flags.values()
        ],
        hide_index=True,
    )
