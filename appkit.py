"""Streamlit glue shared by app.py and views/ (the pages): session keys (initialised in one place), cached loaders
over workspace artifacts, and the progress adapter. No algorithm code lives here."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from tda_explorer.attributors.scores import ScoreResult, compute_scores, list_scores, load_scores
from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainedRun, load_run
from tda_explorer.viz import example_text
from tda_explorer.viz.figures import thumbnail_data_url
from tda_explorer.viz.render import escape_markdown

ASSETS = Path(__file__).resolve().parent / "assets"

SESSION_DEFAULTS = {
    "run_key": None,  # the run the pages show
    "score_key": None,  # the score artifact (attributor) the pages show
    "query_id": None,  # the selected test prediction
}
# Each selection above has ONE owner: the plain session key. The widgets that show it use their own key
# (`WIDGET_PREFIX + name`) and copy into the plain key in `on_change` (see `synced_selectbox`), so any code
# may assign `st.session_state.run_key` at any time (no StreamlitWidgetAlreadyInstantiatedError) and the
# value survives pages where the widget isn't drawn (Streamlit drops the state of undrawn widgets).
WIDGET_PREFIX = "_w_"


def init_session() -> None:
    """Set every session key the pages read, once."""
    for k, v in SESSION_DEFAULTS.items():
        st.session_state.setdefault(k, v)


def _run_label(meta: dict) -> str:
    """The run picker's label: data · model (imported ones by their factory) · seeds · key."""
    cfg = meta["config"]
    model = cfg["model"]["arch"]
    if "imported" in cfg:
        model = f"imported {cfg['imported'].get('factory', '')}"
    return f"{cfg['dataset']['name']} · {model} · {len(cfg['seeds'])} seed(s) · {meta['key'][:8]}"


def synced_selectbox(label: str, options: list, state_key: str, container=None, **kwargs):
    """A selectbox whose value lives in `st.session_state[state_key]` (the owner), not in the widget.

    The widget's own key is set from the owner before the widget is drawn (allowed: it isn't instantiated
    yet in this run), and `on_change` copies the user's pick back. If the owner holds no valid option,
    it becomes the first option. Returns the selected value."""
    if not options:
        return None
    if st.session_state.get(state_key) not in options:
        st.session_state[state_key] = options[0]
    widget_key = WIDGET_PREFIX + state_key
    st.session_state[widget_key] = st.session_state[state_key]

    def sync() -> None:
        st.session_state[state_key] = st.session_state[widget_key]

    (container or st).selectbox(label, options, key=widget_key, on_change=sync, **kwargs)
    write_deep_link()  # the URL follows at once (also when a page stops early or runs without app.py)
    return st.session_state[state_key]


def workspace() -> Workspace:
    return Workspace(os.environ.get("TDA_WORKSPACE") or None)


@st.cache_resource(show_spinner=False)
def cached_run(root: str, key: str) -> TrainedRun:
    """A run, loaded once per process (never mutated)."""
    return load_run(key, Workspace(root))


@st.cache_resource(show_spinner=False)
def cached_dataset(spec_json: str) -> DatasetSplits:

    return load_dataset(DatasetSpec.from_dict(json.loads(spec_json)))


def dataset_of(run: TrainedRun) -> DatasetSplits:

    return cached_dataset(json.dumps(run.dataset, sort_keys=True))


@st.cache_resource(show_spinner=False)
def cached_scores(root: str, key: str) -> ScoreResult:
    ws = Workspace(root)
    return load_scores(ws, ws.meta("scores", key)["config"])


@st.cache_resource(show_spinner=False)
def measured_scores(root: str, run_key: str, score_key: str, measurement: str) -> ScoreResult:
    """The test scores of `score_key` for `measurement` ("predicted" class, or "true_label" loss), the
    prediction being the app's (the run's first seed, as in the prediction table). Computed once, cached."""
    from tda_explorer.attributors.measurement import scores_for_measurement

    base = cached_scores(root, score_key)
    if measurement == "true_label":
        return base
    run = cached_run(root, run_key)
    data = dataset_of(run)
    predicted = cached_predictions(root, run_key).argmax(1)[data.test.index_of(list(base.query_ids))]
    return scores_for_measurement(run, data, base, measurement, predicted, Workspace(root))


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


@st.cache_data(show_spinner=False)
def cached_label_quality(root: str, run_key: str) -> dict[str, np.ndarray]:
    """The combined mislabel score and cleanlab's `[n_train]`, from the run's cached out-of-fold probabilities."""
    from tda_explorer.evaluation.run_label_quality import cached_oof_probs, label_quality_scores

    run = cached_run(root, run_key)
    train = dataset_of(run).train
    return label_quality_scores(run, train, cached_oof_probs(run, train, Workspace(root)))


@st.cache_data(show_spinner=False)
def cached_oof_config(root: str, run_key: str) -> dict:
    """The key of the run's out-of-fold probabilities (it fingerprints the training set: once per run)."""
    from tda_explorer.evaluation.run_label_quality import oof_config

    run = cached_run(root, run_key)
    return oof_config(run, dataset_of(run).train)


def oof_ready(root: str, run_key: str) -> bool:
    """Whether the run's out-of-fold probabilities are in the workspace (`run_label_quality.has_oof_probs`
    without hashing the training set on every rerun)."""
    from tda_explorer.evaluation.run_label_quality import OOF_PROBS

    return Workspace(root).exists(OOF_PROBS.name, cached_oof_config(root, run_key))


def mislabel_scores(root: str, run: TrainedRun) -> dict[str, object]:
    """Named mislabel scores `[n_train]` (higher = more suspicious) available for a run: the combined score and
    cleanlab's first once the out-of-fold probabilities are computed, then the own loss and self-influences."""
    out: dict[str, object] = {}
    if oof_ready(root, run.key):
        out.update(cached_label_quality(root, run.key))
    out["own training loss"] = cached_training_loss(root, run.key)
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
    from tda_explorer.evaluation.dtda import stored_dtda_validation

    return stored_dtda_validation(dtda_config, Workspace(root))


def ids_from_rows(ids: list[str], rows: list[int]) -> list[str]:
    """Ids of the selected rows of a displayed table (rows are positions in the table as shown)."""
    return [ids[r] for r in rows if 0 <= r < len(ids)]


def sidebar() -> None:
    """The shared sidebar: workspace path and the run picker (owner: session key `run_key`)."""
    with st.sidebar:
        ws = workspace()
        root = str(ws.root).replace("`", "'")  # a code span shows its text literally: no Markdown escapes
        st.caption(f"Workspace: `{root}`")
        runs = ws.list_runs()
        if not runs:
            st.info("No run yet: train one on the Setup page.")
            return
        keys = [m["key"] for m in runs]
        labels = {m["key"]: _run_label(m) for m in runs}
        if st.session_state.get("run_key") not in keys:  # a new session: the run the user last worked on
            last = _last_run(ws)
            st.session_state.run_key = last if last in keys else keys[0]
        synced_selectbox("Run", keys, "run_key", format_func=labels.get)


# ---- deep links: ?run=…&query=…&attributor=…&page=… (read once per session, written on every run) ----
DEEP_LINK = {"run": "run_key", "query": "query_id", "attributor": "score_key"}
_local = threading.local()  # per script thread: is app.py running the page right now?


def read_deep_link() -> None:
    """On the first run of a browser session, copy the URL's query parameters into the session keys, so a
    reload or a shared link shows the same run, attributor and query. The page is the URL's path
    (`/attribution`); `?page=attribution` is accepted too (see `requested_page`)."""
    if st.session_state.get("_deep_link_read"):
        return
    st.session_state._deep_link_read = True
    params = st.query_params
    for param, key in DEEP_LINK.items():
        if params.get(param):
            st.session_state[key] = params[param]
    st.session_state._requested_page = params.get("page")


def requested_page(pages: list) -> object | None:
    """The st.Page a `?page=` deep link asked for on the session's first run (once), else None."""
    name = st.session_state.pop("_requested_page", None)
    for page in pages:
        if name and page.url_path == name:
            return page
    return None


def write_deep_link(page: str | None = None) -> None:
    """Mirror the session's selection into the URL (so it can be bookmarked, shared or reloaded) and
    remember the run per workspace (a fresh session without a link opens on it). `page` None keeps the
    URL's `page` parameter."""
    params = {param: st.session_state.get(key) for param, key in DEEP_LINK.items()}
    params["page"] = page if page is not None else st.query_params.get("page")
    params = {k: str(v) for k, v in params.items() if v}
    if dict(st.query_params) != params:
        st.query_params.from_dict(params)
    run_key = st.session_state.get("run_key")
    if run_key and run_key != st.session_state.get("_remembered_run"):
        with contextlib.suppress(OSError):
            (workspace().root / ".app_last_run").write_text(run_key)
        st.session_state._remembered_run = run_key


def _last_run(ws: Workspace) -> str | None:
    try:
        return (ws.root / ".app_last_run").read_text().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def app_run(page: str | None):
    """Wrap `nav.run()` in app.py: pages know app.py drew the sidebar (see `page_guard`), and the URL
    follows the selection afterwards, also when a page stops early."""
    _local.in_app = True
    try:
        yield
    finally:
        _local.in_app = False
        write_deep_link(page)


def page_guard() -> None:
    """Make a page work when Streamlit runs its file directly (a deep link opened before app.py ever ran,
    or AppTest reruns): set up the session and the sidebar as app.py would. A no-op under app.py."""
    if not getattr(_local, "in_app", False):
        init_session()
        read_deep_link()
        sidebar()


def apply_assets() -> None:
    """The app's logo and page CSS from `assets/` (image captions clamped to three lines, compact grid)."""
    st.logo(str(ASSETS / "logo.svg"), size="large")
    css = (ASSETS / "app.css").read_text()
    st.html(f"<style>{css}</style>")


def app_executor() -> LocalExecutor:
    """The executor of the app's jobs: in-process (a process pool spawned from the server's script thread
    stalled the first-start demo in the browser test), unless `$TDA_WORKERS` asks for workers."""
    return LocalExecutor() if os.environ.get("TDA_WORKERS") else LocalExecutor(1)


# ---- small formatting helpers ----
def human_time(iso: str | None) -> str:
    """`2026-12-06T19:20:31.952123+00:00` -> `6 Dec 2026, 19:20 UTC` (the input itself when unparsable)."""
    if not iso:
        return ""
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return f"{t.day} {t:%b %Y, %H:%M} UTC"


def cache_note(seconds: float, created: str | None, reused: bool) -> str:
    """`Reused from cache (computed 6 Dec 2026, 19:20 UTC in 2.8 s)` or `Computed in 2.8 s`."""
    if reused:
        return f"Reused from cache (computed {human_time(created)} in {seconds:.1f} s)"
    return f"Computed in {seconds:.1f} s"


def progress_callback(bar):
    """A core Progress callback `(done, total, msg)` drawing on an `st.progress` bar, with the elapsed time and,
    once something is done, the time remaining at the rate so far."""
    import time

    start = time.perf_counter()

    def update(done: int, total: int, msg: str) -> None:
        frac = min(1.0, done / max(1, total))
        elapsed = time.perf_counter() - start
        eta = f", about {elapsed * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 and elapsed > 2 else ""
        bar.progress(frac, text=f"{msg} ({elapsed:.0f} s{eta})")

    return update


def was_reused(meta: dict, started: datetime) -> bool:
    """Whether an artifact existed before `started` (a button press), i.e. it was read from the cache."""
    try:
        return datetime.fromisoformat(meta["created"]) < started
    except (KeyError, ValueError):
        return False


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


def page(title: str) -> tuple[Workspace, TrainedRun]:
    """Open a page that needs a run: the guard, the title, then `(workspace, current run)` (or stop the page)."""
    page_guard()
    st.title(title)
    return workspace(), require_run()


__all__ = [
    "app_executor",
    "app_run",
    "apply_assets",
    "cache_note",
    "escape_markdown",
    "was_reused",
    "human_time",
    "read_deep_link",
    "synced_selectbox",
    "cached_dataset",
    "cached_predictions",
    "cached_run",
    "cached_scores",
    "compute_scores",
    "current_run",
    "dataset_of",
    "ids_from_rows",
    "init_session",
    "measured_scores",
    "page",
    "page_guard",
    "sidebar",
    "prediction_table",
    "flags_for",
    "list_scores",
    "mislabel_scores",
    "cached_label_quality",
    "progress_callback",
    "require_run",
    "workspace",
]
