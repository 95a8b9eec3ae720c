"""Rendering helpers shared by the app's pages (Streamlit), next to `appkit` (state and caches).

- `show_example`: one example in a column, by kind (image with caption, text as Markdown, tabular as its
  caption and optionally its first feature values);
- `cached_train_predictions`: the training set's class probabilities, computed once per run and server.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import appkit
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.viz import example_caption, example_features, example_image, example_markdown


def show_example(
    col,
    examples: ExampleSet,
    index: int,
    score: float | None = None,
    *,
    flagged: bool = False,
    features: bool = False,
    size: int = 84,
) -> None:
    """Render example `index` of `examples` in `col` (a Streamlit column or `st`).

    Images: the picture (`size` px) with its caption (id, label, score, flag). Texts: the sentence as
    escaped Markdown under its label line. Tabular: the caption in italics, plus the first feature values
    when `features` is True.
    """
    index = int(index)
    if examples.kind == "image":
        caption = example_caption(examples, index, score, flagged=flagged)
        col.image(example_image(examples, index, size=size), caption=caption)
    elif examples.kind == "text":
        col.markdown(example_markdown(examples, index, score, flagged=flagged))
    else:
        caption = f"*{appkit.escape_markdown(example_caption(examples, index, score, flagged=flagged))}*"
        more = f"  \n{appkit.escape_markdown(example_features(examples, index))}" if features else ""
        col.markdown(caption + more)


@st.cache_data(show_spinner=False)
def cached_train_predictions(root: str, run_key: str) -> np.ndarray:
    """Training-set class probabilities `[n_train, C]` of the run's first seed, as numpy (cached)."""
    run = appkit.cached_run(root, run_key)
    return run.predict(appkit.dataset_of(run).train).numpy()
