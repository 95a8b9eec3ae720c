"""Streamlit glue shared by app.py and pages/: session keys (initialised in one place), cached loaders
over workspace artifacts, and the progress adapter. No algorithm code lives here."""

from __future__ import annotations

import os

import streamlit as st

from tda_explorer.attributors.cache import ScoreResult, compute_scores, list_scores, load_scores
from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset
from tda_explorer.store import Workspace
from tda_explorer.training import TrainedRun, load_run

SESSION_DEFAULTS = {
    "run_key": None,  # the run the pages show
    "score_key": None,  # the score artifact (attributor) the pages show
    "query_id": None,  # the selected test prediction
}


def init_session() -> None:
    """Set every session key the pages read, once."""
    for k, v in SESSION_DEFAULTS.items():
        st.session_state.setdefault(k, v)


def workspace() -> Workspace:
    return Workspace(os.environ.get("TDA_WORKSPACE") or None)


@st.cache_resource(show_spinner=False)
def cached_run(root: str, key: str) -> TrainedRun:
    """A run, loaded once per process (never mutated)."""
    return load_run(key, Workspace(root))


@st.cache_resource(show_spinner=False)
def cached_dataset(spec_json: str) -> DatasetSplits:
    import json

    return load_dataset(DatasetSpec.from_dict(json.loads(spec_json)))


def dataset_of(run: TrainedRun) -> DatasetSplits:
    import json

    return cached_dataset(json.dumps(run.dataset, sort_keys=True))


@st.cache_resource(show_spinner=False)
def cached_scores(root: str, key: str) -> ScoreResult:
    ws = Workspace(root)
    return load_scores(ws, ws.meta("scores", key)["config"])


@st.cache_data(show_spinner=False)
def cached_predictions(root: str, run_key: str):
    """Test-set class probabilities `[n_test, C]` of the run's first seed, as numpy."""
    run = cached_run(root, run_key)
    return run.predict(dataset_of(run).test).numpy()


def progress_callback(bar):
    """A core Progress callback `(done, total, msg)` drawing on an `st.progress` bar."""

    def update(done: int, total: int, msg: str) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=msg)

    return update


def current_run() -> TrainedRun | None:
    key = st.session_state.get("run_key")
    if not key:
        return None
    return cached_run(str(workspace().root), key)


__all__ = [
    "cached_dataset",
    "cached_predictions",
    "cached_run",
    "cached_scores",
    "compute_scores",
    "current_run",
    "dataset_of",
    "init_session",
    "list_scores",
    "progress_callback",
    "workspace",
]
