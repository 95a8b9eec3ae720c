"""Map helpers: AirRep embeddings from a stored encoder (never retrained), hover text, id lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep.train import ENCODER_KIND
from tda_explorer.attributors.scores import compute_scores
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.maps import (
    airrep_embeddings,
    airrep_sources,
    compute_map,
    example_representation,
    locate_examples,
    map_hover,
)
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run

TINY_AIRREP = {
    "encoder": {"dim": 4, "hidden": 8, "channels": [4], "image_backbone": "mlp"},
    "data": {"n_subsets": 4, "shard_size": 4},
    "training": {"epochs": 1, "subsets_per_step": 4, "queries_per_step": 16, "patience": 1},
}


@pytest.fixture(scope="module")
def airrep_run(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    splits = load_dataset(DatasetSpec("digits"))
    run = train_run(
        splits, LogRegConfig(), TrainConfig(lr=0.1, epochs=2, batch_size=64), [0], ws, LocalExecutor(1)
    )
    compute_scores(run, splits, "grad_dot", {"params": "head"}, "test", ws)  # not an AirRep source
    result = compute_scores(run, splits, "airrep", TINY_AIRREP, "test", ws)
    return ws, run, splits, result


@pytest.mark.slow
def test_airrep_sources_list_stored_encoders_only(airrep_run):
    ws, run, _, result = airrep_run
    sources = airrep_sources(ws, run.key)
    assert [s["score_key"] for s in sources] == [result.key]
    settings = make_attributor("airrep", **TINY_AIRREP).settings
    assert sources[0]["settings"] == json.loads(json.dumps(settings.as_dict()))
    assert airrep_sources(ws, "no-such-run") == []


@pytest.mark.slow
def test_airrep_embeddings_come_from_the_stored_encoder(airrep_run):
    ws, run, splits, result = airrep_run
    settings = airrep_sources(ws, run.key)[0]["settings"]
    emb = airrep_embeddings(run, splits, settings, True, ws)
    n_train, n_test = len(splits.train), len(splits.test)
    assert emb.shape[0] == n_train + n_test and emb.dtype == np.float32
    # the stored scores are dot products of exactly these embeddings
    scores = emb[n_train:] @ emb[:n_train].T
    np.testing.assert_allclose(scores, result.scores, rtol=1e-4, atol=1e-5)
    same = example_representation(run, splits, "airrep", False, settings, ws)
    np.testing.assert_allclose(same, emb[:n_train], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_airrep_map_refuses_unfitted_settings(airrep_run):
    ws, run, splits, _ = airrep_run
    other = {**TINY_AIRREP, "data": {"n_subsets": 5, "shard_size": 4}}
    with pytest.raises(ConfigError, match="compute AirRep"):
        airrep_embeddings(run, splits, make_attributor("airrep", **other).settings, False, ws)
    with pytest.raises(ConfigError, match="needs the settings"):
        example_representation(run, splits, "airrep", False, None, ws)


@pytest.mark.slow
def test_airrep_source_disappears_with_its_encoder(airrep_run, tmp_path):
    ws, run, _, _ = airrep_run
    src = airrep_sources(ws, run.key)[0]
    path = ws.path(ENCODER_KIND, src["encoder_key"])
    moved = tmp_path / "encoder"
    path.rename(moved)
    try:
        assert airrep_sources(ws, run.key) == []
    finally:
        moved.rename(path)


@pytest.mark.slow
def test_airrep_map_is_keyed_by_the_airrep_settings(airrep_run):
    ws, run, splits, _ = airrep_run
    settings = airrep_sources(ws, run.key)[0]["settings"]
    result = compute_map(run, splits, "airrep", workspace=ws, airrep_settings=settings)
    assert result.coords.shape == (len(splits.train), 2) and np.isfinite(result.coords).all()
    assert ws.meta("map", result.key)["config"]["airrep"] == settings
    assert compute_map(run, splits, "airrep", workspace=ws, airrep_settings=settings).key == result.key
    other = {**settings, "pooling": "sum"}
    with pytest.raises(ConfigError, match="compute AirRep"):
        compute_map(run, splits, "airrep", workspace=ws, airrep_settings=other)


def text_splits() -> DatasetSplits:
    def es(ids, texts, labels):
        return ExampleSet(tuple(ids), tuple(texts), torch.tensor(labels), ("neg", "pos"), "text")

    long = "a <b>bold</b> & " + "very " * 40 + "long review"
    train = es(["t0", "t1"], ["fine film", long], [1, 0])
    test = es(["q0"], ["dull"], [0])
    return DatasetSplits(train=train, val=test, test=test, spec={"name": "toy"})


def test_map_hover_shows_escaped_wrapped_text_for_text_data():
    splits = text_splits()
    hover = map_hover(splits, ["t0", "t1", "q0"], ["train", "train", "test"])
    assert hover[0] == "t0 · train · label pos<br>fine film"
    assert hover[2].startswith("q0 · test · label neg<br>dull")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp;" in hover[1] and "<b>" not in hover[1]
    assert hover[1].count("<br>") == 4 and hover[1].endswith("…")  # 4 wrapped lines at most


def test_map_hover_for_images_has_no_text_line():
    splits = load_dataset(DatasetSpec("digits"))
    ids = [splits.train.ids[0], splits.test.ids[0]]
    hover = map_hover(splits, ids, ["train", "test"])
    label = splits.test.class_names[int(splits.test.labels[0])]
    assert hover[1] == f"{splits.test.ids[0]} · test · label {label}"
    assert all("<br>" not in h for h in hover)


def test_locate_examples_finds_train_and_test_ids():
    splits = text_splits()
    found = locate_examples(splits, ["q0", "t1"])
    assert found[0][0] is splits.test and found[0][1] == 0
    assert found[1][0] is splits.train and found[1][1] == 1
    with pytest.raises(ConfigError, match="neither"):
        locate_examples(splits, ["nope"])
