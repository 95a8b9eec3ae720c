"""App glue for exact (unrolled) attribution of the clicked query: computed on demand, with progress, for a
run this package trained (`tda_explorer.attributors.unrolled.exact`). No algorithm code here."""

from __future__ import annotations

import threading

import streamlit as st

import appkit
from tda_explorer.viz import example_caption, example_image, example_markdown

SEED_CHOICES = {"first": "the first seed (fastest)", "all": "all the run's seeds (mean)"}


_FITTED: dict = {}  # the last replayed (root, run, seeds) of this server process: clicks reuse it
_LOCK = threading.Lock()


def _fitted(root: str, run_key: str, seeds: str, progress):
    """The run's seeds replayed (about one training per seed), kept for the next click; not an
    `st.cache_resource` because the replay draws on the caller's progress bar."""
    from tda_explorer.attributors.unrolled import Unrolled

    with _LOCK:
        key = (root, run_key, seeds)
        if key not in _FITTED:
            run = appkit.cached_run(root, run_key)
            _FITTED.clear()
            _FITTED[key] = Unrolled(seeds=seeds, progress=progress).fit(run, appkit.dataset_of(run).train)
        attributor = _FITTED[key]
        attributor.progress = progress  # a reused replay would otherwise draw on an old bar
        return attributor


def render(run, query_id: str, measurement: str, k: int) -> None:
    """An expander with the exact proponents / opponents of `query_id` for `measurement` ("predicted" class
    or "true_label" loss), computed when asked (cached in the workspace per query, class and seeds)."""
    from tda_explorer.attributors.unrolled.exact import KIND, exact_config, exact_scores_for_query, replayable

    with st.expander("Exact (unrolled): differentiate this query through the whole training run"):
        reason = replayable(run)
        if reason:
            st.caption(f"Not available for this run: {reason}")
            return
        root, data = str(appkit.workspace().root), appkit.dataset_of(run)
        q = data.test.index_of([query_id])[0]
        target = int(data.test.labels[q])
        if measurement == "predicted":
            target = int(appkit.cached_predictions(root, run.key)[q].argmax())
        seeds = st.radio("Replay", list(SEED_CHOICES), format_func=SEED_CHOICES.get, horizontal=True)
        chosen = list(run.select_seeds(seeds))
        config = exact_config(run, query_id, target, chosen)
        st.caption(
            "Exact first-order effect of removing each training example from its batches in this run "
            "(same init, batch order and dropout), through every optimizer step. Faithful to retraining only "
            "when training is metasmooth (see the README: the default MLP recipe is not)."
        )
        ws = appkit.workspace()
        cached = ws.exists(KIND, config)
        if not cached and not st.button("Compute exact scores", key=f"exact_{query_id}"):
            return
        bar = st.progress(0.0, text="loading from the workspace…" if cached else "replaying the run…")
        progress = appkit.progress_callback(bar)
        attributor = (
            None if cached else _fitted(root, run.key, seeds, progress)
        )  # stored scores need no replay
        result = exact_scores_for_query(
            run, query_id, ws, data, target, seeds=chosen, attributor=attributor, progress=progress
        )
        bar.empty()
        st.caption(
            f"{'loaded from the workspace' if result.cached else 'computed'} · seeds {list(result.seeds)} · "
            f"{result.seconds:.1f} s"
        )
        train = data.train
        for title, idx in zip(("Proponents (help)", "Opponents (hurt)"), result.top_k(k), strict=True):
            st.markdown(f"**{title}**")
            cols = st.columns(min(8, k)) if train.kind == "image" else [st.container()]
            for j, i in enumerate(idx):
                col, score = cols[j % len(cols)], float(result.scores[i])
                if train.kind == "image":
                    col.image(
                        example_image(train, int(i), size=84), caption=example_caption(train, int(i), score)
                    )
                elif train.kind == "text":
                    col.markdown(example_markdown(train, int(i), score))
                else:
                    col.markdown(f"*{appkit.escape_markdown(example_caption(train, int(i), score))}*")
