"""Pruning & export: remove the training examples an attributor marks least useful to the validation
set (by a pruning rule: the best curve measured on the run, else the benchmark's best), preview the removal per class, the pruning curve (retrained accuracy vs fraction removed, against
random removal; computed on demand and cached), export the kept and removed lists (CSV, JSON, Parquet)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import streamlit as st

import appjobs
import appkit
import apptrust
from tda_explorer.backend.usefulness import DEFAULT_PRUNING_RULE, curve_fractions, removal_mask
from tda_explorer.evaluation import stored_pruning_curve
from tda_explorer.evaluation.pruning import best_pruning_rule, rule_usefulness
from tda_explorer.evaluation.run_label_quality import COMBINED
from tda_explorer.store.exports import export_bytes, export_table, write_exports
from tda_explorer.viz.figures import pruning_figure

#: The pruning curve's default settings (the widgets below and the lookup of stored curves before them).
LARGEST_DEFAULT, SEEDS_DEFAULT = 0.5, 1

ws, run = appkit.page("Pruning & export")
data = appkit.dataset_of(run)
train = data.train
all_scores = appkit.list_scores(ws, run.key)
stored = [m for m in all_scores if m["config"]["queries"] == "val"]

st.caption(
    "Usefulness of a training example = its mean score over the validation queries (positive = it helps "
    "them). Pruning removes the least useful. Validation scores keep the test set untouched."
)
# The attributors the user can prune with: every method + settings computed for this run (test or validation).
# Default (first): the best measured one (LDS on this run, `tda_explorer.evaluation.trust`), else one whose
# validation scores are ready, else the cheapest.
measures = apptrust.measures(run)
by_method = {
    json.dumps(m["config"]["method"], sort_keys=True): m
    for m in all_scores
    if m["config"]["queries"] == "test"
}
lds = {k: measures.get(m["key"]) for k, m in by_method.items()}
choices: dict[str, dict] = {}
for m in all_scores:
    k = json.dumps(m["config"]["method"], sort_keys=True)
    seconds = min(m["extra"]["seconds"], choices.get(k, {}).get("seconds", float("inf")))
    choices[k] = {"method": m["config"]["method"], "seconds": seconds}
if not choices:
    st.info("Compute an attributor on the Setup page first.")
    st.stop()


def rank(k: str) -> tuple:
    measured = lds.get(k)
    ok = measured is not None and np.isfinite(measured.mean)
    ready = any(
        json.dumps(m["config"]["method"], sort_keys=True) == k for m in stored
    )  # validation scores stored
    return (not ok, -measured.mean if ok else 0.0, not ready, choices[k]["seconds"])


order = sorted(choices, key=rank)
labels = {
    k: f"{c['method']['method']} · {', '.join(f'{a}={b}' for a, b in c['method'].items() if a != 'method')}"
    + (f" · {lds[k].label()}" if lds.get(k) else "")
    for k, c in choices.items()
}
c1, c2 = st.columns([3, 2])
picked = c1.selectbox(
    "Attributor (best measured LDS first, then ready, then the cheapest)", order, format_func=labels.get, key="prune_method",
    help="Scores on the validation set from this attributor rank the training examples.",
)  # fmt: skip
if picked in by_method and lds.get(picked) is None:  # (a measured LDS is in the picker's label)
    with c2:
        apptrust.lds_cue(run, by_method[picked]["key"], st, "pruning")
method_cfg = choices[picked]["method"]
val = next((m for m in stored if m["config"]["method"] == method_cfg), None)
if val is None:
    box = st.empty()
    with box.container():
        st.caption(
            f"{method_cfg['method']} has no validation-set scores yet (its test-set scores took "
            f"{choices[picked]['seconds']:.1f} s)."
        )
        go = st.button(f"Compute {method_cfg['method']} scores on the validation set", type="primary")
    settings = {k: v for k, v in method_cfg.items() if k != "method"}
    if appjobs.scores_step(run, data, method_cfg["method"], settings, "val", ws, requested=go) is None:
        st.stop()  # not asked, waiting for Start, running in the background, cancelled or failed
    st.session_state._computed_val = method_cfg
    st.rerun()  # draw the page afresh with the new scores (no stale button above them)
key = val["key"]
result = appkit.cached_scores(str(ws.root), key)
just_computed = st.session_state.get("_computed_val") == method_cfg
st.caption(appkit.cache_note(val["extra"]["seconds"], val["created"], reused=not just_computed))
RULES = {
    "harm_loss": "harm + own loss, within each class",
    "harm": "harm to validation, within each class",
    "class_balanced": "mean usefulness, within each class",
    "sum": "mean usefulness, over the whole training set",
}
labels = train.labels.numpy()
own_loss = appkit.cached_training_loss(str(ws.root), run.key)
mislabel = None
if appkit.oof_ready(
    str(ws.root), run.key
):  # the combined mislabel score is ready (Mislabels page): offer harm + it
    mislabel = appkit.cached_label_quality(str(ws.root), run.key)[COMBINED]
    RULES = {"harm_mislabel": "harm + mislabel score, within each class", **RULES}
uses = {r: rule_usefulness(result.scores, r, labels, own_loss=own_loss, mislabel=mislabel) for r in RULES}
# Default rule: the best pruning curve already measured on this run (at the curve settings below), else the
# best attribution rule of the pruning benchmark.
curve_setup = (curve_fractions(st.session_state.get("prune_largest", LARGEST_DEFAULT)),
               tuple(range(int(st.session_state.get("prune_seeds", SEEDS_DEFAULT)))))  # fmt: skip
measured = {
    r: c
    for r in RULES
    if (
        c := stored_pruning_curve(
            uses[r], train, data.test, run.model_config, run.train_config, *curve_setup, workspace=ws
        )
    )
    is not None  # fmt: skip
}
best = best_pruning_rule(measured) if measured else DEFAULT_PRUNING_RULE
rule = st.radio(
    "Rank usefulness", list(RULES), index=list(RULES).index(best), format_func=RULES.get, horizontal=True,
    help="Harm: the mean over validation examples of only the negative scores (the damage an example does to "
    "the validation examples it hurts; its help elsewhere does not buy it back). Mean usefulness: the mean "
    "score, positive = helps. Within each class, the least useful examples of every class go first (a score "
    "is then the example's rank in its class, 0-1); over the whole set, the hard examples of a few classes "
    "dominate the removals. Harm + own loss averages harm's rank with the example's own-loss rank; harm + "
    "mislabel score with the rank of the Mislabels page's combined score (offered once it is computed there). "
    "Measured in RESULTS.md, 'Pruning curves'.",
)  # fmt: skip
st.caption(
    f"Default: {RULES[best]} — "
    + (
        f"the best pruning curve measured on this run ({len(measured)} rule(s) measured)."
        if measured
        else "the best attribution rule of the pruning benchmark; compute this page's pruning curve for other "
        "rules to compare them on this run."
    )
)
useful = uses[rule]

mode = st.radio("Remove by", ["fraction", "score threshold"], horizontal=True)
if mode == "fraction":
    fraction = st.slider("Fraction of the training set to remove", 0.0, 0.9, 0.1, 0.01)
    removed = removal_mask(useful, fraction=fraction)
else:
    lo, hi = float(useful.min()), float(useful.max())
    threshold = st.slider(
        "Remove examples with usefulness below", lo, hi, float(np.quantile(useful, 0.1)), format="%.3g"
    )
    removed = removal_mask(useful, threshold=threshold)

per_class = pd.DataFrame(
    {
        "class": list(train.class_names),
        "removed": np.bincount(labels[removed], minlength=train.n_classes),
        "total": np.bincount(labels, minlength=train.n_classes),
    }
)
per_class["fraction removed"] = (per_class["removed"] / per_class["total"].clip(lower=1)).round(3)
c1, c2 = st.columns([1, 2])
c1.metric("Removed", f"{int(removed.sum())} of {len(train)}")
c2.bar_chart(per_class.set_index("class")["removed"])
st.dataframe(per_class, hide_index=True)

st.subheader("Pruning curve")
c1, c2 = st.columns(2)
largest = c1.select_slider(
    "Largest fraction removed", [0.3, 0.5, 0.7, 0.9], value=LARGEST_DEFAULT, key="prune_largest"
)
n_seeds = int(
    c2.number_input("Retraining seeds", min_value=1, max_value=5, value=SEEDS_DEFAULT, key="prune_seeds")
)
fractions, seeds = curve_fractions(largest), tuple(range(n_seeds))
curve_args = (useful, train, data.test, run.model_config, run.train_config, fractions, seeds)
# the stored curves were looked up above at these settings: `curve_setup` reads the widgets' keys
curve = measured.get(rule)
if curve is None:
    n_models = (2 * len(fractions) - 1) * n_seeds
    box = st.empty()  # the caption and button go away once the curve is drawn
    with box.container():
        st.caption(f"Not computed yet: retrains {n_models} models (pruned by {result.method} and at random).")
        go = st.button("Compute the pruning curve", type="primary")
    curve = appjobs.pruning_curve_step(
        curve_args, f"{key}:{rule}", ws, requested=go, executor=appkit.app_executor()
    )
    if curve is not None:
        box.empty()
if curve is not None:
    chosen = float(removed.mean())
    st.plotly_chart(
        pruning_figure(curve.fractions, curve.method_acc, curve.random_acc, result.method, chosen),
        width="stretch",
    )
    st.dataframe(pd.DataFrame(curve.table()).round(4), hide_index=True)

table = export_table(train.ids, labels, train.class_names, useful, removed, appkit.flags_for(run.key))
name = f"{run.key}-{result.method}-{int(removed.sum())}removed"
st.subheader("Export")
cols = st.columns(4)
for col, fmt in zip(cols, ("csv", "json", "parquet"), strict=False):
    col.download_button(
        f"Download {fmt.upper()}", export_bytes(table, fmt), file_name=f"{name}.{fmt}", key=f"dl_{fmt}"
    )
if cols[3].button("Write to workspace exports/", type="primary"):
    paths = write_exports(ws.exports_dir, name, table)
    st.session_state.last_export = {k: str(v) for k, v in paths.items()}
    st.session_state.last_export_time = time.strftime("%H:%M:%S")
if st.session_state.get("last_export"):
    st.success(
        f"Written at {st.session_state.last_export_time}: " + ", ".join(st.session_state.last_export.values())
    )
st.dataframe(table.sort_values("score").head(200), hide_index=True)
