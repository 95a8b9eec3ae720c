"""Label agreement and proponent diversity (benchmarks.text_agreement), and on a tiny synthetic text run: the
default ensemble is not plain TRAK, and the default text attributor's proponents share the predicted label
more often than random training examples do."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.text_agreement import label_agreement, proponent_diversity, top_k


def test_label_agreement_counts_top_k_labels_against_the_base_rate():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    train = np.array([0, 0, 1, 1, 1])
    out = label_agreement(scores, train, np.array([0, 1]), k=2)
    # query 0: top-2 = {0, 1}, both label 0 -> 1.0; query 1: top-2 = {4, 3}, both label 1 -> 1.0
    assert out["agreement"] == 1.0 and out["per_query"] == [1.0, 1.0]
    assert out["base_rate"] == pytest.approx((2 / 5 + 3 / 5) / 2) and out["lift"] == pytest.approx(0.5)
    flipped = label_agreement(-scores, train, np.array([0, 1]), k=2)  # proponents become opponents
    assert flipped["agreement"] == pytest.approx((0.0 + 0.0) / 2)


def test_diversity_counts_distinct_proponents_and_their_concentration():
    scores = np.tile(np.arange(6.0), (4, 1))  # every query: the same top-2 {5, 4}
    out = proponent_diversity(scores, k=2, norms=np.arange(6.0), n_top=1)
    assert out["distinct"] == 2 and out["possible"] == 6 and out["share"] == pytest.approx(1 / 3)
    assert out["top_share"] == pytest.approx(0.5)
    assert out["norm_spearman"] > 0.8  # the two largest-norm examples are the only proponents
    assert proponent_diversity(np.eye(3), k=1)["distinct"] == 3
    np.testing.assert_array_equal(top_k(np.array([[1.0, 3.0, 2.0]]), 2), [[1, 2]])


@pytest.mark.parametrize(
    "scores, k, match",
    [(np.array([[np.nan, 1.0]]), 1, "NaN"), (np.ones((1, 2)), 3, "k must"), (np.ones(3), 1, "shape")],
)
def test_bad_input_is_refused(scores, k, match):
    with pytest.raises(ValueError, match=match):
        proponent_diversity(scores, k)


GOOD = ("wonderful", "delightful", "brilliant", "moving", "superb", "charming", "funny", "beautiful")
BAD = ("dreadful", "boring", "awful", "tedious", "clumsy", "lifeless", "ugly", "painful")
NOUNS = ("film", "movie", "story", "script", "cast", "picture")


def _synthetic_csv(path) -> None:
    """Templated sentiment sentences, 2:1 positive in training (a random example shares 'positive' 2/3)."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n_pos, n_neg in (("train", 32, 16), ("val", 4, 4), ("test", 6, 6)):
        for label, words, n in (("positive", GOOD, n_pos), ("negative", BAD, n_neg)):
            for _ in range(n):
                a, b = rng.choice(words, 2, replace=False)
                rows.append((f"the {rng.choice(NOUNS)} was {a} and {b} from start to end", label, split))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        w.writerows(rows)


@pytest.mark.slow  # ~20 s: two tiny text fine-tunes
def test_default_ensemble_differs_from_trak_and_proponents_share_the_predicted_label(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.models import TextConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, TrainConfig, train_run

    _synthetic_csv(tmp_path / "reviews.csv")
    splits = load_dataset(
        DatasetSpec("text", path=str(tmp_path / "reviews.csv"), options={"split_column": "split"})
    )
    model = TextConfig(max_length=24, lora_rank=2, lora_layers=1)
    train = TrainConfig(
        optimizer="adam", lr=1e-2, momentum=0.0, weight_decay=0.0, epochs=8, batch_size=16, checkpoints=1
    )
    run = train_run(splits, model, train, [0, 1], Workspace(tmp_path / "ws"), LocalExecutor(1))
    queries = splits.test

    trak = make_attributor("trak").fit(run, splits.train).score(queries)
    ens = make_attributor("ensemble").fit(run, splits.train).score(queries)
    assert not torch.allclose(ens, trak)  # the default ensemble is not plain (native) TRAK
    singles = []
    for seed in run.seeds:  # it is the naive ensemble: the mean of per-seed TRAK scores
        one = dataclasses.replace(run, seeds=(seed,))
        singles.append(make_attributor("trak").fit(one, splits.train).score(queries))
    torch.testing.assert_close(ens, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-6)

    predicted = run.predict(queries).numpy().argmax(1)
    assert (predicted == queries.labels.numpy()).mean() >= 0.75  # the model learnt the sentiment
    labels = splits.train.labels.numpy()
    for scores in (trak, ens):
        out = label_agreement(scores.numpy(), labels, predicted, k=10)
        assert out["agreement"] > out["base_rate"] + 0.1, out
