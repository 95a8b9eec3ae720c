"""Map: UMAP of the training set (and optionally the test set) from penultimate features, head
gradients or AirRep embeddings, coloured by label, prediction or score; hovering shows the id and label
(and the sentence for text); lasso or box selection previews the selected examples and can flag them."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import streamlit as st

import appgallery
import appjobs
import appkit
from appviews import cached_train_predictions
from tda_explorer.maps import REPRESENTATIONS, airrep_sources, locate_examples, map_hover
from tda_explorer.selection import ids_from_selection
from tda_explorer.viz.figures import scatter_map

PREVIEW_MAX = 24

ws, run = appkit.page("Map")
root = str(ws.root)
data = appkit.dataset_of(run)
train, test = data.train, data.test

c1, c2, c3 = st.columns(3)
representation = c1.selectbox("Representation", REPRESENTATIONS)
include_test = c2.toggle("Include test examples", value=False)
mislabel = appkit.mislabel_scores(root, run)
color_by = c3.selectbox("Colour by", ["label", "prediction", "flagged", *mislabel])
airrep_settings = None
if representation == "airrep":
    sources = airrep_sources(ws, run.key)
    if not sources:
        st.info(
            "AirRep embeddings come from a fitted AirRep encoder: compute AirRep for this run on the Setup page first."
        )
        st.stop()
    encoders = {i: f"AirRep scores {src['score_key'][:8]}" for i, src in enumerate(sources)}
    pick = st.selectbox("AirRep encoder", list(encoders), format_func=encoders.get) if len(sources) > 1 else 0
    airrep_settings = sources[pick]["settings"]

started = datetime.now(UTC)
result = appjobs.map_step(run, data, representation, include_test, ws, airrep_settings)  # background, Cancel
if result is None:
    st.stop()
map_meta = ws.meta("map", result.key)
map_seconds = (datetime.fromisoformat(map_meta["created"]) - started).total_seconds()
if appkit.was_reused(map_meta, started):
    st.caption(f"Map reused from cache (computed {appkit.human_time(map_meta['created'])})")
else:
    st.caption(f"Map computed in {max(map_seconds, 0.0):.1f} s (cached for the next visit)")

n_train = len(train)
labels = np.concatenate([train.labels.numpy(), test.labels.numpy()[: len(result.ids) - n_train]])
names = np.array([train.class_names[i] for i in labels], dtype=object)
flags = appkit.flags_for(run.key)
flagged = np.array([i in flags for i in result.ids])
categorical = True
if color_by == "label":
    color = names
elif color_by == "prediction":
    pred = cached_train_predictions(root, run.key).argmax(1)
    if include_test:
        pred = np.concatenate([pred, appkit.cached_predictions(root, run.key).argmax(1)])
    color = np.array([train.class_names[i] for i in pred], dtype=object)
elif color_by == "flagged":
    color = np.where(flagged, "flagged", "not flagged").astype(object)
else:
    categorical = False
    values = np.asarray(mislabel[color_by], dtype=np.float64)
    color = np.concatenate([values, np.full(len(result.ids) - n_train, np.nan)])
hover = map_hover(data, result.ids, result.split)
fig = scatter_map(result.coords, result.ids, color, color_by, hover, categorical, flagged)
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("lasso", "box", "points"), key="map_chart")

selected = ids_from_selection(event)
fallback = st.multiselect("Selected examples (or pick ids here)", list(result.ids), default=selected[:200])
if fallback:
    train_scores = None if categorical else np.asarray(mislabel[color_by], dtype=np.float64)
    flt = appgallery.filter_widget("map", train, train_scores, color_by if not categorical else "score")
    keep = {"train": flt.mask(train, flags, train_scores)}
    keep["test"] = flt.mask(test, flags, None if train_scores is None else np.full(len(test), np.nan))
    located = [
        (es, pos)
        for es, pos in locate_examples(data, fallback)
        if keep["train" if es is train else "test"][pos]
    ]
    shown = located[:PREVIEW_MAX]
    note = f", {len(located)} pass the filter" if flt.active else ""
    st.markdown(f"**Preview** ({len(shown)} of {len(fallback)} selected{note})")
    cols = st.columns(2 if train.kind == "text" else 8)
    for j, (es, pos) in enumerate(shown):
        appgallery.show_example(
            cols[j % len(cols)], es, pos, flagged=es is train and es.ids[pos] in flags, features=True
        )
    if st.toggle("Sort the training set by similarity to one selected example", key="similar_map"):
        anchor = st.selectbox("Similar to", fallback, key="similar_map_anchor")
        appgallery.similar_gallery(run, anchor, "map", flags)
train_ids = set(train.ids)
chosen = [i for i in fallback if i in train_ids]
if chosen:
    st.caption(f"{len(chosen)} training example(s) selected")
    pos = train.index_of(chosen)
    st.dataframe(
        [
            {
                "id": train.ids[p],
                "label": train.class_names[int(train.labels[p])],
                "flagged": train.ids[p] in flags,
            }
            for p in pos
        ],
        hide_index=True,
    )
    if st.button("Flag the selected training examples", type="primary"):
        n = ws.flags().flag_many(run.key, chosen, note="flagged from the map")
        st.success(f"Flagged {n} example(s).")
        st.rerun()
