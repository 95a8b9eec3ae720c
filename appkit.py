"""Streamlit glue shared by app.py and pages/: session keys (initialised in one place), cached loaders
over workspace artifacts, and the progress adapter. No algorithm code lives here."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from tda_explorer.attributors.cache import ScoreResult, compute_scores, list_scores, load_scores
from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset
from tda_explorer.store import Workspace
from tda_explorer.training import TrainedRun, load_run
from tda_explorer.viz import example_text
from tda_explorer.viz.figures import thumbnail_data_url

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


@st.cache_data(show_spinner=False)
def cached_training_loss(root: str, run_key: str):
    """Each training example's own loss at the final models `[n_train]` (the no-attribution baseline)."""
    from tda_explorer.evaluation.mislabel import training_loss_scores

    run = cached_run(root, run_key)
    return training_loss_scores(run, dataset_of(run).train).numpy()


def mislabel_scores(root: str, run: TrainedRun) -> dict[str, object]:
    """Named mislabel scores `[n_train]` (higher = more suspicious) available for a run."""
    out = {"own training loss": cached_training_loss(root, run.key)}
    for m in list_scores(Workspace(root), run.key):
        r = cached_scores(root, m["key"])
        out[f"self-influence · {r.method} ({m['key'][:6]})"] = r.self_influence
    return out


def flags_for(run_key: str) -> dict:
    """Current flags of a run (id -> FlagRecord), read fresh from the SQLite store."""
    return workspace().flags().get(run_key)


@st.cache_data(show_spinner=False)
def prediction_table(root: str, run_key: str) -> pd.DataFrame:
    """One row per test example: id, thumbnail (images), true, predicted, confidence, correct."""
    run = cached_run(root, run_key)
    test = dataset_of(run).test
    probs = cached_predictions(root, run_key)
    pred = probs.argmax(1)
    labels = test.labels.numpy()
    table = pd.DataFrame(
        {
            "id": list(test.ids),
            "true": [test.class_names[i] for i in labels],
            "predicted": [test.class_names[i] for i in pred],
            "confidence": probs.max(1).astype(float),
            "correct": pred == labels,
        }
    )
    if test.kind == "image":
        table.insert(1, "image", [thumbnail_data_url(test, i, size=28) for i in range(len(test))])
    elif test.kind == "text":
        table.insert(1, "text", [example_text(test, i, 120) for i in range(len(test))])
    return table


def stored_lds_truth(root: str, run_key: str, n_subsets: int, alpha: float, seeds: int):
    """The LDS ground truth for the run and these settings if it is already in the workspace, else None."""
    from tda_explorer.evaluation import LDSConfig, lds_truth_config, load_lds_truth

    run = cached_run(root, run_key)
    data = dataset_of(run)
    config = LDSConfig(n_subsets=n_subsets, alpha=alpha, seeds=tuple(range(seeds)))
    cfg = lds_truth_config(data.train, data.test, run.model_config, run.train_config, config)
    ws = Workspace(root)
    return load_lds_truth(ws.key("lds_truth", cfg), ws) if ws.exists("lds_truth", cfg) else None


def stored_dtda(root: str, run_key: str, settings: dict):
    """A stored d-TDA result of the run for these d-TDA settings, or None."""
    from tda_explorer.attributors.dtda import DTDA, dtda_config, load_dtda

    ws = Workspace(root)
    cfg = dtda_config(cached_run(root, run_key), DTDA(**settings), "test")
    return load_dtda(ws, cfg) if ws.exists("dtda", cfg) else None


def stored_dtda_validation(root: str, dtda_config: dict):
    """The newest stored d-TDA validation made from this d-TDA result, or None."""
    from tda_explorer.evaluation.dtda import VALIDATION_KIND, DTDAValidation
    from tda_explorer.store import load_array

    ws = Workspace(root)
    for meta in ws.list(VALIDATION_KIND):
        if meta["config"].get("dtda") == dtda_config:
            path = ws.path(VALIDATION_KIND, meta["key"])
            return DTDAValidation(
                pairs=tuple(tuple(p) for p in meta["config"]["pairs"]),
                seeds=tuple(meta["config"]["seeds"]),
                measurement=dtda_config["method"]["measurement"],
                with_data=load_array(path / "with_data.npy"),
                predicted=load_array(path / "predicted.npy"),
                retrained=load_array(path / "retrained.npy"),
                key=meta["key"],
            )
    return None


def ids_from_rows(ids: list[str], rows: list[int]) -> list[str]:
    """Ids of the selected rows of a displayed table (rows are positions in the table as shown)."""
    return [ids[r] for r in rows if 0 <= r < len(ids)]


def sidebar() -> None:
    """The shared sidebar: workspace path and the run picker (session key `run_key`)."""
    with st.sidebar:
        ws = workspace()
        st.caption(f"Workspace: `{ws.root}`")
        runs = ws.list_runs()
        if not runs:
            st.info("No run yet: train one on the Setup page.")
            return
        keys = [m["key"] for m in runs]
        labels = {
            m["key"]: f"{m['config']['dataset']['name']} · {m['config']['model']['arch']} · "
            f"{len(m['config']['seeds'])} seed(s) · {m['key'][:8]}"
            for m in runs
        }
        if st.session_state.get("run_key") not in keys:
            st.session_state.run_key = keys[0]
        st.selectbox("Run", keys, format_func=labels.get, key="run_key")


def page_guard() -> None:
    """Make a page work when Streamlit runs its file directly (a deep link opened before app.py ever ran,
    or AppTest reruns): set up the session and the sidebar as app.py would. A no-op under app.py."""
    if not st.session_state.get("_in_app"):
        init_session()
        sidebar()


def progress_callback(bar):
    """A core Progress callback `(done, total, msg)` drawing on an `st.progress` bar."""

    def update(done: int, total: int, msg: str) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=msg)

    return update


def current_run() -> TrainedRun | None:
    """The run picked in the sidebar (session key `run_key`), or None when there is none yet."""
    key = st.session_state.get("run_key")
    if not key:
        return None
    return cached_run(str(workspace().root), key)


NO_RUN_MESSAGE = "Train a run on the Setup page first."


def require_run(message: str | None = NO_RUN_MESSAGE) -> TrainedRun:
    """The current run; without one, show `message` (if any) as an info box and stop the page here."""
    run = current_run()
    if run is None:
        if message:
            st.info(message)
        st.stop()
    return run


__all__ = [
    "cached_dataset",
    "cached_predictions",
    "cached_run",
    "cached_scores",
    "compute_scores",
    "current_run",
    "dataset_of",
    "ids_from_rows",
    "init_session",
    "page_guard",
    "sidebar",
    "prediction_table",
    "flags_for",
    "list_scores",
    "mislabel_scores",
    "progress_callback",
    "require_run",
    "workspace",
]
