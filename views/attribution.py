"""Attribution: pick a test prediction, see the training examples that support and oppose it;
switch attributor, or compare two side by side with their rank agreement. The user chooses what the scores
explain: the predicted class (default) or the true label's loss (`tda_explorer.attributors.measurement`)."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

import appexact
import appgallery
import appkit
import apptrust
from tda_explorer.backend.stats import rank_agreement

MEASURES = {"predicted": "the predicted class", "true_label": "the true label's loss"}

ws, run = appkit.page("Attribution")
root = str(ws.root)
stored = [m for m in appkit.list_scores(ws, run.key) if m["config"]["queries"] == "test"]
if not stored:
    st.info("Compute an attributor for this run on the Setup page first.")
    st.stop()

data = appkit.dataset_of(run)
test, train = data.test, data.train
names = {m["key"]: f"{m['config']['method']['method']} ({m['key'][:8]})" for m in stored}
keys = list(names)
c1, c2, c3 = st.columns([2, 2, 3])
appkit.synced_selectbox("Attributor", keys, "score_key", c1, format_func=names.get)
meta = next(m for m in stored if m["key"] == st.session_state.score_key)
c1.caption(appkit.cache_note(meta["extra"]["seconds"], meta["created"], reused=True))
apptrust.lds_cue(run, st.session_state.score_key, c1, "attribution")
compare_key = c2.selectbox(
    "Compare with (optional)",
    [None, *[k for k in keys if k != st.session_state.score_key]],
    format_func=lambda k: "—" if k is None else names[k],
)
measurement = c3.radio(
    "The scores explain",
    list(MEASURES),
    format_func=MEASURES.get,
    key="measurement",
    help="Predicted class: a supporting example pushes the model toward what it predicted (for a mistake: "
    "why it made it). True label: a supporting example lowers the loss of the correct label.",
)
apptrust.suggest_best(run, st.session_state.score_key, names, "score_key")

table = appkit.prediction_table(root, run.key)
only_mistakes = st.toggle("Only mistakes", value=False)
shown = table[~table["correct"]] if only_mistakes else table
if shown.empty:
    st.info("No test example matches the filter.")
    st.stop()

st.caption("Click a row to see what made the model predict it (or pick its id below).")
event = st.dataframe(
    shown,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="prediction_table",
    height=260,
    column_config={
        "image": st.column_config.ImageColumn("example", width="small"),
        "confidence": st.column_config.ProgressColumn(
            "confidence", min_value=0.0, max_value=1.0, format="%.3f"
        ),
    },
)
picked = appkit.ids_from_rows(shown["id"].tolist(), event.selection.rows)
if picked and picked != st.session_state.get("last_table_pick"):  # a new click wins over the selectbox
    st.session_state.query_id = picked[0]
st.session_state.last_table_pick = picked
appkit.synced_selectbox("Test prediction", shown["id"].tolist(), "query_id")


@st.fragment
def explanation(query_id: str, score_key: str, compare_key: str | None) -> None:
    start = time.perf_counter()
    k = st.slider("Examples per side", 2, 16, 8)
    flags = appkit.flags_for(run.key)
    q = test.index_of([query_id])[0]
    row = table.loc[table["id"] == query_id].iloc[0]

    pred_name, true_name = (appkit.escape_markdown(str(row[c])) for c in ("predicted", "true"))
    if measurement == "predicted":
        titles = (
            f"Supporting — push the model toward its prediction **{pred_name}**",
            f"Opposing — push it away from **{pred_name}**",
        )
    else:
        titles = (
            f"Supporting — lower the loss of the true label **{true_name}**",
            f"Opposing — raise the loss of the true label **{true_name}**",
        )

    def measured(score_key: str):
        with st.spinner("Scoring the misclassified test examples at their predicted class (once, cached)…"):
            result = appkit.measured_scores(root, run.key, score_key, measurement)
        return result, result.query_ids.index(query_id)

    main, main_r = measured(score_key)
    flt = appgallery.filter_widget("attribution", train, main.scores[main_r])

    def panel(result, r: int, name: str, container) -> np.ndarray:
        keep = flt.mask(train, flags, result.scores[r])
        support, oppose = appgallery.filtered_top_k(result.scores[r], keep, k)
        with container:
            st.markdown(f"**{name}**")
            if flt.active:
                st.caption(f"{int(keep.sum())} of {len(train)} training examples pass the filter")
            for title, idx in zip(titles, (support, oppose), strict=True):
                st.markdown(title)
                appgallery.grid(
                    train, idx, result.scores[r][idx], flags, min(8, k) if compare_key is None else 4
                )
        return result.scores[r]

    left, right = st.columns([1, 4])
    with left:
        st.markdown("**Query**")
        appgallery.show_example(st, test, q)
        st.caption(f"true {true_name} · predicted {pred_name} · confidence {row['confidence']:.3f}")
    with right:
        if compare_key is None:
            panel(main, main_r, names[score_key], st.container())
        else:
            other, other_r = measured(compare_key)
            a_col, b_col = st.columns(2)
            a = panel(main, main_r, names[score_key], a_col)
            b = panel(other, other_r, names[compare_key], b_col)
            agree = rank_agreement(a, b, k)
            m1, m2, m3 = st.columns(3)
            m1.metric("Spearman over all training examples", f"{agree['spearman']:.3f}")
            m2.metric(f"top-{k} overlap", f"{agree['top_k_overlap']:.0%}")
            m3.metric(f"bottom-{k} overlap", f"{agree['bottom_k_overlap']:.0%}")
    if st.toggle("Sort the training set by similarity to this example", key="similar_attribution"):
        appgallery.similar_gallery(run, query_id, "attribution", flags)
    appexact.render(run, query_id, measurement, k)
    st.caption(f"server time for this view: {1000 * (time.perf_counter() - start):.0f} ms")


explanation(st.session_state.query_id, st.session_state.score_key, compare_key)
