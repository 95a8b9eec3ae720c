"""Attribution: pick a test prediction, see the training examples that support and oppose it."""

from __future__ import annotations

import streamlit as st

import appkit
from tda_explorer.viz import example_caption, example_image, example_text

st.title("Attribution")
ws = appkit.workspace()
run = appkit.current_run()
if run is None:
    st.info("Train a run on the Setup page first.")
    st.stop()
stored = appkit.list_scores(ws, run.key)
if not stored:
    st.info("Compute an attributor for this run on the Setup page first.")
    st.stop()

score_keys = [m["key"] for m in stored]
names = {m["key"]: f"{m['config']['method']['method']} ({m['key'][:8]})" for m in stored}
if st.session_state.score_key not in score_keys:
    st.session_state.score_key = score_keys[0]
st.selectbox("Attributor", score_keys, format_func=names.get, key="score_key")

root = str(ws.root)
result = appkit.cached_scores(root, st.session_state.score_key)
data = appkit.dataset_of(run)
test, train = data.test, data.train
probs = appkit.cached_predictions(root, run.key)
pred = probs.argmax(1)

only_mistakes = st.toggle("Only mistakes", value=False)
choices = [i for i in range(len(test)) if not only_mistakes or pred[i] != int(test.labels[i])]
if not choices:
    st.info("No test example matches the filter.")
    st.stop()


def describe(i: int) -> str:
    mark = "✓" if pred[i] == int(test.labels[i]) else "✗"
    return f"{test.ids[i]} · true {test.class_names[int(test.labels[i])]} · pred {test.class_names[pred[i]]} {mark}"


q = st.selectbox("Test prediction", choices, format_func=describe)
k = st.slider("Examples per side", 2, 16, 8)


def show(i: int, score: float | None, col, examples) -> None:
    if examples.kind == "image":
        col.image(example_image(examples, i), caption=example_caption(examples, i, score))
    else:
        col.markdown(
            f"{example_text(examples, i) if examples.kind == 'text' else ''}  \n*{example_caption(examples, i, score)}*"
        )


left, right = st.columns([1, 3])
with left:
    st.markdown("**Query**")
    show(q, None, st, test)
    st.caption(f"confidence {probs[q, pred[q]]:.3f}")
row = result.query_ids.index(test.ids[q])
support, oppose = result.top_k(row, k)
with right:
    for title, idx in (("Supporting (help the prediction)", support), ("Opposing (hurt it)", oppose)):
        st.markdown(f"**{title}**")
        cols = st.columns(min(8, k))
        for j, t in enumerate(idx):
            show(int(t), float(result.scores[row, t]), cols[j % len(cols)], train)
