"""AppTest for every page over a small prepared workspace (digits, logreg, 10% label noise, Grad-Dot)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tda_explorer.attributors.scores import compute_scores
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.evaluation.run_label_quality import CLEANLAB, COMBINED
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["attribution", "map", "mislabels", "pruning", "evaluation"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    splits = load_dataset(DatasetSpec("digits", noise_fraction=0.1, noise_seed=1))
    cfg = TrainConfig(lr=0.1, epochs=4, batch_size=64, checkpoints=2)
    run = train_run(splits, LogRegConfig(), cfg, [0, 1], ws, LocalExecutor(1))
    for split in ("test", "val"):
        compute_scores(run, splits, "grad_dot", {"params": "head"}, split, ws)
    return {"ws": ws, "run": run, "splits": splits}


def app_at(prepared, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("TDA_WORKSPACE", str(prepared["ws"].root))
    monkeypatch.setenv("TDA_DEMO", "0")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    if page is not None:
        at.switch_page(f"views/{page}.py")
        at.run()
    assert not at.exception, at.exception
    return at


def rerun(at: AppTest, page: str) -> None:
    """Run again after a widget change; the page must stay where it was."""
    at.run()
    assert at.title[0].value.lower().startswith(page[:5]), at.title[0].value
    assert not at.exception, at.exception


def test_sidebar_lists_the_run(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch)
    assert at.sidebar.selectbox[0].value == prepared["run"].key


def test_attribution_page_shows_both_sides_and_compares(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "attribution")
    text = " ".join(m.value for m in at.markdown)
    assert "Supporting" in text and "Opposing" in text
    # Pick another prediction through the fallback selectbox (charts cannot be clicked in AppTest).
    picker = next(s for s in at.selectbox if s.label == "Test prediction")
    other = picker.options[5]
    picker.set_value(other)
    rerun(at, "attribution")
    query_caption = next(c.value for c in at.caption if c.value.startswith("true "))
    row = prepared["splits"].test.index_of([other])[0]
    true_label = prepared["splits"].test.class_names[int(prepared["splits"].test.labels[row])]
    assert query_caption.startswith(f"true {true_label} ·")
    timing = [c.value for c in at.caption if c.value.startswith("server time")]
    assert timing, "the view reports its server time"


def test_mislabels_page_scores_against_injected_flips_and_flags(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "mislabels")
    labels = [m.label for m in at.metric]
    assert "ROC-AUC against the injected flips" in labels
    auc = float(next(m.value for m in at.metric if m.label.startswith("ROC-AUC")))
    assert 0.5 < auc <= 1.0  # own training loss finds flips better than chance
    chosen = at.multiselect(key="flag_ids").options[:2]
    at.multiselect(key="flag_ids").set_value(chosen)
    next(b for b in at.button if b.label == "Flag").click()
    rerun(at, "mislabels")
    flags = prepared["ws"].flags().get(prepared["run"].key)
    assert set(chosen) <= set(flags)


def test_mislabels_page_computes_the_combined_score_and_cleanlab(prepared, monkeypatch):
    pytest.importorskip("cleanlab.rank")
    at = app_at(prepared, monkeypatch, "mislabels")
    picker = next(s for s in at.selectbox if s.label.startswith("Mislabel score"))
    assert COMBINED not in picker.options
    next(b for b in at.button if b.label == "Compute the combined mislabel score").click()
    at.run()
    start = [b for b in at.button if b.label == "Start"]  # asked first when estimated over 30 s
    if start:
        start[0].click()
        at.run()
    for _ in range(60):  # the 15 retrainings run in a background step; the page polls it
        picker = next(s for s in at.selectbox if s.label.startswith("Mislabel score"))
        if COMBINED in picker.options:
            break
        at.run()
    assert not at.exception, at.exception
    assert picker.options[:2] == [COMBINED, CLEANLAB] and picker.value == COMBINED
    auc = float(next(m.value for m in at.metric if m.label.startswith("ROC-AUC")))
    assert 0.5 < auc <= 1.0
    assert not [b for b in at.button if b.label == "Compute the combined mislabel score"]


def test_galleries_filter_by_label_and_flag(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "mislabels")
    at.multiselect(key="filter_labels_mislabels").set_value(["3"])
    rerun(at, "mislabels")
    captions = [c for img in at.get("image") for c in img.captions]
    assert captions and all(" · label 3 · " in c for c in captions)
    at.multiselect(key="filter_labels_mislabels").set_value([])
    at.radio(key="filter_flags_mislabels").set_value("flagged")
    rerun(at, "mislabels")
    flagged = set(prepared["ws"].flags().get(prepared["run"].key))
    shown = {c.split(" · ")[0] for img in at.get("image") for c in img.captions}
    assert shown and shown <= flagged

    at = app_at(prepared, monkeypatch, "attribution")
    at.multiselect(key="filter_labels_attribution").set_value(["5"])
    rerun(at, "attribution")
    train_captions = [c for img in at.get("image")[1:] for c in img.captions]  # [0] is the query
    assert len(train_captions) == 16 and all(" · label 5 · " in c for c in train_captions)
    assert any(c.value.endswith("training examples pass the filter") for c in at.caption)


def test_attribution_sorts_the_training_set_by_similarity(prepared, monkeypatch):
    from tda_explorer.similarity import most_similar

    at = app_at(prepared, monkeypatch, "attribution")
    query = at.selectbox(key="_w_query_id").value
    at.toggle(key="similar_attribution").set_value(True)
    rerun(at, "attribution")
    assert any(c.value.startswith(f"Training examples most similar to {query}") for c in at.caption)
    expected = most_similar(prepared["run"], prepared["splits"], query, prepared["ws"], 16)
    shown = [c.split(" · ")[0] for img in at.get("image")[17:] for c in img.captions]
    assert sorted(shown) == sorted(expected.ids)  # (the grid lists its images column by column)


def test_pruning_page_previews_and_exports(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "pruning")
    removed = next(m for m in at.metric if m.label == "Removed")
    n_train = len(prepared["splits"].train)
    assert removed.value == f"{round(0.1 * n_train)} of {n_train}"
    next(b for b in at.button if b.label == "Write to workspace exports/").click()
    rerun(at, "pruning")
    written = list((prepared["ws"].root / "exports").glob("*.parquet"))
    assert written


def test_pruning_page_offers_harm_with_the_mislabel_score_once_computed(prepared, monkeypatch):
    from tda_explorer.evaluation.run_label_quality import cached_oof_probs

    cached_oof_probs(
        prepared["run"], prepared["splits"].train, prepared["ws"]
    )  # (the Mislabels test made it)
    at = app_at(prepared, monkeypatch, "pruning")
    radio = next(r for r in at.radio if r.label == "Rank usefulness")
    assert "harm + mislabel score, within each class" in radio.options
    radio.set_value("harm_mislabel")
    rerun(at, "pruning")
    n_train = len(prepared["splits"].train)
    assert next(m for m in at.metric if m.label == "Removed").value == f"{round(0.1 * n_train)} of {n_train}"


def test_evaluation_page_lists_attributors(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "evaluation")
    table = at.dataframe[0].value
    assert "grad_dot" in set(table["method"]) and "own training loss" in set(table["method"])
    assert table.loc[table["method"] == "grad_dot", "mislabel_auc"].iloc[0] > 0.5


@pytest.mark.slow
def test_map_page_draws_umap(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "map")
    assert at.get("plotly_chart"), "the map is drawn"
    # the fallback of a lasso selection: pick ids, see their thumbnails with labels in the preview
    picker = next(m for m in at.multiselect if m.label.startswith("Selected examples"))
    chosen = picker.options[3:6]
    picker.set_value(chosen)
    rerun(at, "map")
    assert any(m.value.startswith("**Preview** (3 of 3 selected)") for m in at.markdown)
    captions = [c for img in at.get("image") for c in img.captions]
    train = prepared["splits"].train
    for example_id in chosen:
        label = train.class_names[int(train.labels[train.index_of([example_id])[0]])]
        assert f"{example_id} · label {label}" in captions
    # AirRep embeddings are offered, but only drawn once AirRep was computed for the run
    next(s for s in at.selectbox if s.label == "Representation").set_value("airrep")
    rerun(at, "map")
    assert any("compute AirRep" in i.value for i in at.info)
    tiny_airrep = {
        "encoder": {"dim": 4, "hidden": 8, "image_backbone": "mlp"},
        "data": {"n_subsets": 4, "shard_size": 4},
        "training": {"epochs": 1, "subsets_per_step": 4, "queries_per_step": 16, "patience": 1},
    }
    compute_scores(prepared["run"], prepared["splits"], "airrep", tiny_airrep, "test", prepared["ws"])
    rerun(at, "map")
    assert not any("compute AirRep" in i.value for i in at.info)
    assert at.get("plotly_chart"), "the AirRep map is drawn"
    maps = prepared["ws"].list("map")
    assert any(m["config"]["representation"] == "airrep" for m in maps)


def test_dtda_page_computes_and_draws_histograms(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "dtda")
    assert any("Not computed yet" in c.value for c in at.caption)
    next(b for b in at.button if b.label.startswith("Compute")).click()
    rerun(at, "distr")
    labels = [m.label for m in at.metric]
    assert labels == ["mean influence", "variance influence", "W2 influence"]
    assert len(at.get("plotly_chart")) == 2  # the histogram and the violins


def test_setup_page_shows_the_main_settings_of_each_picked_attributor(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch)
    picker = next(m for m in at.multiselect if m.label == "Attributors")
    picker.set_value(["airrep", "dtda", "ensemble", "source"])
    rerun(at, "setup")
    expanders = {e.label for e in at.expander}
    assert {"airrep settings", "dtda settings", "ensemble settings", "source settings"} <= expanders
    numbers = {n.label: n.value for n in at.number_input}
    assert numbers["segments"] == 3 and numbers["data.n_subsets"] == 256
    choices = {s.label for s in at.selectbox}
    assert {"measurement", "kind", "combine", "encoder.image_backbone"} <= choices


def test_setup_page_leaves_an_empty_damping_factor_to_the_solver(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch)
    next(m for m in at.multiselect if m.label == "Attributors").set_value(["influence"])
    rerun(at, "setup")
    damping = next(n for n in at.number_input if n.label == "damping_factor")
    assert damping.value is None  # empty: the solver's own default (1 x mean eigenvalue for exact)
    next(s for s in at.selectbox if s.label == "solver").set_value("exact")
    next(b for b in at.button if b.label.startswith("Compute")).click()
    rerun(at, "setup")
    assert any(m.value.startswith("influence:") for m in at.success), [m.value for m in at.success]


def test_pruning_page_computes_and_then_shows_the_cached_pruning_curve(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "pruning")
    assert not at.get("plotly_chart")
    assert any(c.value.startswith("Not computed yet: retrains 11 models") for c in at.caption)
    next(s for s in at.select_slider if s.label == "Largest fraction removed").set_value(0.3)
    rerun(at, "pruning")
    next(b for b in at.button if b.label == "Compute the pruning curve").click()
    rerun(at, "pruning")
    chart = at.get("plotly_chart")
    assert len(chart) == 1
    assert "random removal" in chart[0].proto.spec
    # no stale controls above the drawn curve
    assert not [c for c in at.caption if c.value.startswith("Not computed yet")]
    assert not [b for b in at.button if b.label == "Compute the pruning curve"]
    # the next visit reads the stored curve: no button, same chart
    at = app_at(prepared, monkeypatch, "pruning")
    next(s for s in at.select_slider if s.label == "Largest fraction removed").set_value(0.3)
    rerun(at, "pruning")
    assert len(at.get("plotly_chart")) == 1
    assert not [b for b in at.button if b.label == "Compute the pruning curve"]
    curve = next(d.value for d in at.dataframe if "method_acc" in d.value.columns)
    assert curve["fraction"].tolist() == [0.0, 0.1, 0.2, 0.3]


def test_deep_link_restores_run_page_query_and_attributor(prepared, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(prepared["ws"].root))
    monkeypatch.setenv("TDA_DEMO", "0")
    monkeypatch.chdir(ROOT)
    run = prepared["run"]
    score_key = next(m["key"] for m in prepared["ws"].list("scores") if m["config"]["queries"] == "test")
    query = prepared["splits"].test.ids[7]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params.update({"run": run.key, "page": "attribution", "query": query, "attributor": score_key})
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Attribution"
    assert next(s for s in at.selectbox if s.label == "Test prediction").value == query
    assert next(s for s in at.selectbox if s.label == "Attributor").value == score_key
    # the URL follows the selection, so a reload or a shared link shows the same view
    picker = next(s for s in at.selectbox if s.label == "Test prediction")
    picker.set_value(picker.options[3])
    rerun(at, "attribution")
    assert at.query_params["query"] == [picker.options[3]] or at.query_params["query"] == picker.options[3]
    assert prepared["ws"].root.joinpath(".app_last_run").read_text() == run.key


def test_attribution_page_says_what_the_scores_explain(prepared, monkeypatch):
    at = app_at(prepared, monkeypatch, "attribution")
    next(t for t in at.toggle if t.label == "Only mistakes").set_value(True)
    rerun(at, "attribution")
    row = next(c.value for c in at.caption if c.value.startswith("true "))
    predicted = row.split("predicted ")[1].split(" ·")[0]
    text = " ".join(m.value for m in at.markdown)
    assert f"push the model toward its prediction **{predicted}**" in text  # the default measurement
    assert any(c.value.startswith("Reused from cache (computed ") for c in at.caption)
    next(r for r in at.radio if r.label == "The scores explain").set_value("true_label")
    rerun(at, "attribution")
    assert "lower the loss of the true label" in " ".join(m.value for m in at.markdown)
