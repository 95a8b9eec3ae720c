"""Galleries of examples for the pages: one filter (label, flag status, score range) used by every gallery
(Attribution supporting / opposing, similar examples, Mislabels, Map selection), one example renderer, and
the "similar training examples" gallery (`tda_explorer.similarity`). Drawing only; no algorithm code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

import appkit
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import TDAError
from tda_explorer.similarity import REPRESENTATIONS, most_similar
from tda_explorer.training import TrainedRun
from tda_explorer.viz import example_caption, example_features, example_image, example_markdown

FLAG_STATUS = ("all", "flagged", "not flagged")


@dataclass(frozen=True)
class GalleryFilter:
    """Which training examples a gallery shows: `classes` (label names; empty = all), `flags` (one of
    FLAG_STATUS) and `score_range` (inclusive `(low, high)`, None = any score)."""

    classes: tuple[str, ...] = ()
    flags: str = "all"
    score_range: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return bool(self.classes) or self.flags != "all" or self.score_range is not None

    def mask(self, examples: ExampleSet, flagged_ids, scores: np.ndarray | None = None) -> np.ndarray:
        """bool `[len(examples)]`: the examples that pass. `flagged_ids`: a container of flagged ids;
        `scores` `[len(examples)]` (NaN never passes a score range)."""
        keep = np.ones(len(examples), dtype=bool)
        if self.classes:
            names = np.asarray(examples.class_names, dtype=object)[examples.labels.numpy()]
            keep &= np.isin(names, list(self.classes))
        if self.flags != "all":
            is_flagged = np.fromiter((i in flagged_ids for i in examples.ids), bool, len(examples))
            keep &= is_flagged if self.flags == "flagged" else ~is_flagged
        if self.score_range is not None and scores is not None:
            s = np.asarray(scores, dtype=np.float64)
            keep &= (s >= self.score_range[0]) & (s <= self.score_range[1])
        return keep


def filtered_top_k(row: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k largest (best first) and k smallest (most negative first) of `row` among `keep`."""
    allowed = np.flatnonzero(keep)
    order = allowed[np.argsort(-row[allowed], kind="stable")]
    return order[:k], order[::-1][:k]


def filter_widget(where: str, examples: ExampleSet, scores: np.ndarray | None = None, what: str = "score"):
    """The filter controls (in a collapsed expander) of the gallery `where`; returns its GalleryFilter.
    `scores` (finite ones) give the score slider's bounds; `what` names the score."""
    with st.expander("Filter by label, flag, " + what, expanded=False):
        c1, c2 = st.columns(2)
        classes = c1.multiselect(
            "Labels (none = all)", list(examples.class_names), key=f"filter_labels_{where}"
        )
        flags = c2.radio("Flag status", FLAG_STATUS, horizontal=True, key=f"filter_flags_{where}")
        score_range = None
        finite = np.asarray(scores, dtype=np.float64) if scores is not None else np.array([])
        finite = finite[np.isfinite(finite)]
        if finite.size and finite.min() < finite.max():
            lo, hi = float(finite.min()), float(finite.max())
            picked = st.slider(f"{what} range", lo, hi, (lo, hi), format="%.3g", key=f"filter_range_{where}")
            score_range = None if picked == (lo, hi) else (float(picked[0]), float(picked[1]))
    return GalleryFilter(tuple(classes), flags, score_range)


def show_example(
    col,
    examples: ExampleSet,
    i: int,
    score: float | None = None,
    *,
    flagged: bool = False,
    features: bool = False,
) -> None:
    """Example `i` in a gallery cell `col`: image with its caption (id, label, score, flag), the text as
    Markdown, or the tabular caption (and its first feature values when `features`)."""
    i = int(i)
    caption = example_caption(examples, i, score, flagged=flagged)
    if examples.kind == "image":
        col.image(example_image(examples, i, size=84), caption=caption)
    elif examples.kind == "text":
        col.markdown(example_markdown(examples, i, score, flagged=flagged))
    else:
        more = f"  \n{appkit.escape_markdown(example_features(examples, i))}" if features else ""
        col.markdown(f"*{appkit.escape_markdown(caption)}*" + more)


def grid(train: ExampleSet, positions, scores, flags, n_cols: int = 8) -> None:
    """Training examples at `positions` with their `scores` (same length) in a grid (texts one per line)."""
    cols = [st.container()] if train.kind == "text" else st.columns(n_cols)
    for j, (t, s) in enumerate(zip(positions, scores, strict=True)):
        show_example(cols[j % len(cols)], train, int(t), float(s), flagged=train.ids[int(t)] in flags)


def similar_gallery(run: TrainedRun, example_id: str, where: str, flags) -> None:
    """ "Sort the training set by similarity to this example": a representation picker, the filter, and the
    top-k most similar training examples (cosine; features computed once per run and cached)."""
    data = appkit.dataset_of(run)
    train = data.train
    c1, c2 = st.columns([2, 1])
    representation = c1.radio(
        "Similar by", REPRESENTATIONS, horizontal=True, key=f"sim_repr_{where}",
        format_func={"penultimate": "penultimate features", "gradients": "projected gradients"}.get,
    )  # fmt: skip
    k = c2.slider("How many", 4, 32, 16, step=4, key=f"sim_k_{where}")
    try:
        with st.spinner("Features of the training set (once per run, cached)…"):
            ranked = most_similar(
                run, data, example_id, appkit.workspace(), len(train), representation, appkit.app_executor()
            )
    except TDAError as e:
        st.error(str(e))
        return
    sims = np.full(len(train), np.nan)
    sims[ranked.positions] = ranked.similarities
    keep = filter_widget(f"similar_{where}", train, sims, "similarity").mask(train, flags, sims)
    order = [int(p) for p in ranked.positions if keep[p]][:k]
    if not order:
        st.info("No training example passes the filter.")
        return
    st.caption(
        f"Training examples most similar to {example_id} (cosine similarity of {representation}, best first)"
    )
    grid(train, order, sims[order], flags)
