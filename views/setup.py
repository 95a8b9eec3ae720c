"""Setup: choose a dataset (built in, uploaded or a path) and a model, train over seeds (or reuse the
cached run), then compute the attributors you pick, each with its main settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import streamlit as st

import appdemo
import appjobs
import appkit
from appsettings import form_widgets, settings_form
from tda_explorer.attributors import ATTRIBUTORS
from tda_explorer.attributors.base import make_attributor
from tda_explorer.attributors.measurement import compute_test_scores
from tda_explorer.attributors.scores import score_config
from tda_explorer.data import SST2_DEFAULT_PATH, DatasetSpec, load_dataset
from tda_explorer.errors import Cancelled, TDAError
from tda_explorer.estimates import (
    Estimate,
    estimate_attributor,
    estimate_training,
    full_settings,
    load_calibration,
    new_seeds,
    run_shape,
    training_shape,
)
from tda_explorer.models import default_model_config
from tda_explorer.store.uploads import UPLOAD_SUFFIXES, WEIGHT_SUFFIXES, save_upload
from tda_explorer.training import TrainConfig, default_train_config, import_run, train_run
from tda_explorer.training.imported_hf import import_hf_run

ARCHS = {"image": ["mlp", "logreg", "cnn"], "tabular": ["mlp", "logreg"], "text": ["text"]}

appkit.page_guard()
st.title("Setup")
ws = appkit.workspace()
if flash := st.session_state.pop("_setup_flash", None):  # what the last training did (set before its rerun)
    st.success(flash)

st.subheader("1 · Data and model")
source = st.radio("Data", ["Built-in demo", "Upload a table", "Path on this machine"], horizontal=True)
spec_args: dict = {}
kind = "image"
if source == "Built-in demo":
    builtins = ["mnist5k", "digits"] + (["sst2"] if SST2_DEFAULT_PATH.exists() else [])
    name = st.selectbox("Dataset", builtins, help="mnist5k: 4,000 / 500 / 500 MNIST digits; digits: 8x8")
    spec_args = {"name": name}
    kind = "text" if name == "sst2" else "image"
else:
    c1, c2 = st.columns(2)
    kind = c1.selectbox("What the file holds", ["tabular", "text", "image folder"])
    kind = "image" if kind == "image folder" else kind
    path, upload_problem = None, None
    if source == "Upload a table" and kind != "image":
        upload = c2.file_uploader(
            "CSV, TSV or Parquet", type=[s.lstrip(".") for s in UPLOAD_SUFFIXES],
            help="A header row; one column holds the label" + (", one the text" if kind == "text" else ""),
        )  # fmt: skip
        if upload is not None:
            try:
                path = str(save_upload(ws.root / "uploads", upload.name, upload.getvalue()))
            except TDAError as e:
                upload_problem = str(e)
                st.error(upload_problem)
    elif source == "Upload a table":
        c2.info("Image folders can't be uploaded: give the folder's path (choose \"Path on this machine\").")
    else:
        path = c2.text_input("File or folder path", placeholder="/data/reviews.csv or /data/images/") or None
    options: dict = {}
    if kind != "image":
        c3, c4 = st.columns(2)
        options["label_column"] = c3.text_input("Label column", "label")
        if kind == "text":
            options["text_column"] = c4.text_input("Text column", "text")
        else:
            features = c4.text_input(
                "Feature columns (comma-separated; blank = every other column)", "",
                help="The numeric columns the model reads (loader option feature_columns).",
            )  # fmt: skip
            if features.strip():
                options["feature_columns"] = [c.strip() for c in features.split(",") if c.strip()]
    spec_args = {"name": {"tabular": "tabular", "text": "text", "image": "images"}[kind], "path": path,
                 "options": options, "_problem": upload_problem}  # fmt: skip

with st.form("train"):
    c1, c2, c3 = st.columns(3)
    arch = c1.selectbox("Model", ARCHS[kind])
    seeds = c2.number_input(
        "Seeds", min_value=1, max_value=50, value=5, help="independent trainings; d-TDA and TRAK use several"
    )
    epochs = c3.number_input("Epochs (blank = the model's default)", min_value=1, max_value=200, value=None)
    noise = st.slider(
        "Label noise: fraction of training labels flipped (seeded, recorded)", 0.0, 0.5, 0.0, 0.05
    )
    submitted = st.form_submit_button("Train (or reuse the cached run)", type="primary")


def _trained(outcome, reused: bool) -> None:
    """A training step ended here: on success, select the new run and redraw (the sidebar lists it)."""
    if outcome is None or outcome.status != "done":
        return
    run = outcome.result
    meta = ws.meta("runs", run.key)
    st.session_state._setup_flash = f"Run {run.key}: " + appkit.cache_note(
        meta.get("extra", {}).get("seconds", outcome.seconds), meta.get("created"), reused
    )
    st.session_state.run_key = run.key  # the owner of the selection; the sidebar picker follows
    st.rerun()  # so the sidebar, drawn before this page, lists the new run


problem = spec_args.pop("_problem", None)
train_key = None
needs_path = spec_args.get("name") in ("tabular", "text", "images") and not spec_args.get("path")
if not problem and spec_args.get("name") and not needs_path:  # the step's key: what the form would train
    try:
        spec = DatasetSpec(noise_fraction=noise, **spec_args)
        cfg = default_train_config(arch)
        if epochs:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": int(epochs)})
        train_key = (
            f"train:{ws.root}:{json.dumps([spec.to_dict(), arch, cfg.to_dict(), int(seeds)], sort_keys=True)}"
        )
    except TDAError as e:
        st.error(str(e))
for ended in appjobs.resume(f"train:{ws.root}:", skip=train_key):  # started before the form was reset
    _trained(ended, reused=False)
if submitted and problem:
    st.error(f"The uploaded file can't be used: {problem}")
elif submitted and needs_path:
    st.error("Choose a file (or give a path) first.")
elif train_key is not None:
    # the training step: runs in the background (an estimate first when long, progress, Cancel); the key is
    # what would be trained, so re-opening the page (or a second click) shows the running training
    if submitted or appjobs.involved(train_key):
        try:
            splits = appkit.cached_dataset(json.dumps(spec.to_dict(), sort_keys=True))
            mcfg = default_model_config(arch)
            todo = new_seeds(ws, splits, mcfg, cfg, range(int(seeds)))
            estimate = estimate_training(
                training_shape(splits.train, mcfg, cfg, int(seeds)), todo, load_calibration(ws)
            )
            if not todo:
                estimate = Estimate(0.0, [])
            outcome = appjobs.run_step(
                train_key, f"Training {int(seeds)} seed(s) ({todo} new)",
                lambda progress: train_run(splits, mcfg, cfg, range(int(seeds)), ws, appkit.app_executor(), progress),
                estimate, requested=submitted, ws=ws,
            )  # fmt: skip
            _trained(outcome, reused=todo == 0)
        except TDAError as e:
            st.error(str(e))
    elif (est := appdemo.training_estimate(ws, spec_args.get("name", ""), arch, int(seeds))) is not None:
        st.caption(f"Training new seeds takes {est}; seeds already trained are reused.")

with st.expander("Bring my model: a model trained elsewhere, on the data chosen above"):
    st.caption(
        "A PyTorch module: the factory that builds it (`package.module:function`, importable here) and one "
        "weights file per seed (.pt state dict or .safetensors). Or a local Hugging Face classifier folder "
        "(text data). Methods that retrain (LDS, pruning, LoRA ensembles, AirRep) need a recipe and are "
        "refused with what to provide; the others work on the weights alone."
    )
    with st.form("import"):
        how = st.radio("Model", ["PyTorch factory + weights", "Hugging Face folder"], horizontal=True)
        factory = st.text_input("Factory", placeholder="mymodels:build")
        weight_files = st.file_uploader(
            "Weights, one file per seed",
            type=[s.lstrip(".") for s in WEIGHT_SUFFIXES],
            accept_multiple_files=True,
        )
        weight_paths = st.text_area("…or weight files on this machine, one seed per line", "")
        hf_folders = st.text_area("Hugging Face folders, one per seed (one path per line)", "")
        weight_decay = st.number_input("L2 coefficient of your training objective", min_value=0.0, value=0.0)
        imported = st.form_submit_button("Import")
    if imported:
        try:
            if (
                problem
                or not spec_args.get("name")
                or (spec_args["name"] in ("tabular", "text", "images") and not spec_args.get("path"))
            ):
                raise TDAError(problem or "choose the data the model was trained on in section 1 first.")
            splits = load_dataset(DatasetSpec(**spec_args))
            bar = st.progress(0.0, text="importing…")
            if how == "Hugging Face folder":
                folders = [f.strip() for f in hf_folders.splitlines() if f.strip()]
                if not folders:
                    raise TDAError("give at least one Hugging Face folder (one path per line).")
                run = import_hf_run(
                    folders,
                    splits,
                    weight_decay=float(weight_decay),
                    workspace=ws,
                    progress=appkit.progress_callback(bar),
                )
            else:
                paths = [
                    str(
                        save_upload(
                            ws.root / "uploads" / "weights", f.name, f.getvalue(), suffixes=WEIGHT_SUFFIXES
                        )
                    )
                    for f in weight_files or []
                ] + [p.strip() for p in weight_paths.splitlines() if p.strip()]
                if not factory.strip() or not paths:
                    raise TDAError(
                        "give the factory (package.module:function) and at least one weights file."
                    )
                run = import_run(
                    factory.strip(),
                    paths,
                    splits,
                    weight_decay=float(weight_decay),
                    workspace=ws,
                    progress=appkit.progress_callback(bar),
                )
            bar.progress(1.0, text="done")
            st.session_state._setup_flash = f"Imported run {run.key} ({len(run.seeds)} seed(s))."
            st.session_state.run_key = run.key
            st.rerun()
        except TDAError as e:
            st.error(str(e))

run = appkit.require_run(message=None)  # the forms above are how a run is made

st.subheader("2 · Attribute")
st.write(
    f"Current run **{run.key}** — {run.dataset['name']} · {run.model_config.arch} · seeds {list(run.seeds)} · "
    f"mean test accuracy {run.mean_metric('test_acc'):.3f}"
)
default = ["trak"] if "trak" in ATTRIBUTORS else []  # count-sketch TRAK, one model: ~16 s on the demo
if getattr(run.model_config, "arch", "") in ("text", "hf") and "grad_cos" in ATTRIBUTORS:
    default = ["grad_cos"]  # text: its top proponents share the predicted label (TRAK's did less than random)
# outside the form, so picking an attributor reruns the page and shows its settings below
methods = st.multiselect("Attributors", sorted(ATTRIBUTORS), default=default)
with st.form("attribute"):
    chosen_settings: dict[str, dict] = {}
    for method in methods:
        if not form_widgets(method):
            continue
        with st.expander(f"{method} settings"):
            chosen_settings[method] = settings_form(method)
    go = st.form_submit_button("Compute (or reuse cached scores)", type="primary")


def _is_stored(method: str, settings: dict) -> bool:
    """Whether this run already has `method`'s test scores with these settings (a click only reloads them)."""
    try:
        config = score_config(run, method, make_attributor(method, **settings).settings.config(), "test")
    except (TDAError, TypeError):
        return False
    return ws.exists("scores", config)


def _attribute(progress) -> list[tuple]:
    """The background step: each picked attributor in turn (true-label and predicted-class scores, one fit);
    `[(method, result or None, started, error or None)]`. A failure of one doesn't stop the others."""
    data, out = appkit.dataset_of(run), []
    for i, method in enumerate(methods):

        def stage(done, total, msg, i=i, method=method):
            progress(i + min(done, total) / max(total, 1), len(methods), f"{method}: {msg}")

        started = datetime.now(UTC)
        try:
            result, _ = compute_test_scores(run, data, method, chosen_settings.get(method, {}), ws, stage)
            out.append((method, result, started, None))
        except Cancelled:
            raise
        except TDAError as e:
            out.append((method, None, started, str(e)))
    return out


attr_key = (
    f"attribute:{ws.root}:{run.key}:{json.dumps([methods, chosen_settings], sort_keys=True, default=str)}"
)
if methods and (go or appjobs.involved(attr_key)):
    shape, cal = run_shape(run, appkit.dataset_of(run)), load_calibration(ws)
    tuned = any(
        m["config"]["method"]["method"] in ("trak", "influence") for m in appkit.list_scores(ws, run.key)
    )
    todo = [m for m in methods if not _is_stored(m, chosen_settings.get(m, {}))]
    parts = [
        estimate_attributor(m, full_settings(m, chosen_settings.get(m, {})), shape, cal, tuned) for m in todo
    ]
    estimate = Estimate(sum(e.seconds for e in parts), [p for e in parts for p in e.parts],
                        all(e.calibrated for e in parts))  # fmt: skip
    outcome = appjobs.run_step(attr_key, f"Attributors {', '.join(methods)}", _attribute, estimate, go, ws)
    for method, result, started, error in outcome.result if outcome and outcome.status == "done" else []:
        if error is not None:
            st.error(f"{method}: {error}")
            continue
        st.session_state.score_key = result.key
        meta = ws.meta("scores", result.key)
        note = appkit.cache_note(result.seconds, meta.get("created"), appkit.was_reused(meta, started))
        st.success(f"{method}: {result.scores.shape[0]} × {result.scores.shape[1]} scores. {note}.")


def _auto_choice(extra: dict) -> str:
    """What a data-driven default chose (TRAK's regularization="auto"), for the table."""
    t = extra.get("trak_regularization")
    return f"lambda = {t['factor']:g} x trace/N ({t['rule']})" if t else ""


stored = appkit.list_scores(ws, run.key)
if stored:
    st.caption("Computed for this run (cached in the workspace):")
    st.dataframe(
        [
            {"key": m["key"], "method": m["config"]["method"]["method"], "queries": m["config"]["queries"],
             "settings": {k: v for k, v in m["config"]["method"].items() if k != "method"},
             "seconds": round(m["extra"]["seconds"], 2), "auto choice": _auto_choice(m["extra"]),
             "computed": appkit.human_time(m["created"])}
            for m in stored
        ],
        hide_index=True,
    )  # fmt: skip
runs = ws.list_runs()
with st.expander(f"All runs in the workspace ({len(runs)})"):
    st.dataframe(
        [{"key": m["key"], "dataset": m["config"]["dataset"]["name"], "model": m["config"]["model"]["arch"],
          "seeds": m["config"]["seeds"], "noise": m["config"]["dataset"].get("noise_fraction", 0.0),
          "created": appkit.human_time(m["created"])} for m in runs],
        hide_index=True,
    )  # fmt: skip
