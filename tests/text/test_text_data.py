"""Text data for the text model: user tables (clear errors), SST-2 defaults, truncation at max_length."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.errors import DataError
from tda_explorer.models import TextConfig, build_model, prepare_inputs


def write_reviews(tmp_path, n: int = 20):
    df = pd.DataFrame(
        {
            "review": [f"review number {i} , {'loved it' if i % 2 else 'hated it'} ." for i in range(n)],
            "sentiment": ["pos" if i % 2 else "neg" for i in range(n)],
        }
    )
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    return path


def test_user_csv_with_a_wrong_text_column_names_the_columns(tmp_path):
    path = write_reviews(tmp_path)
    spec = DatasetSpec("text", str(path), {"text_column": "text", "label_column": "sentiment"})
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    msg = str(err.value)
    assert "reviews.csv" in msg and "'text'" in msg and "text_column" in msg
    assert "'review'" in msg and "'sentiment'" in msg  # the available columns are listed


def test_user_csv_with_a_wrong_label_column_suggests_the_closest(tmp_path):
    path = write_reviews(tmp_path)
    spec = DatasetSpec("text", str(path), {"text_column": "review", "label_column": "sentiments"})
    with pytest.raises(DataError, match="Did you mean 'sentiment'"):
        load_dataset(spec)


def test_user_csv_feeds_the_text_model(tmp_path):
    path = write_reviews(tmp_path)
    splits = load_dataset(
        DatasetSpec("text", str(path), {"text_column": "review", "label_column": "sentiment"})
    )
    assert splits.train.kind == "text" and splits.train.class_names == ("neg", "pos")
    model = build_model(TextConfig(max_length=16, lora_rank=2), (), splits.train.n_classes).eval()
    with torch.no_grad():
        logits = model(prepare_inputs(model, splits.test.inputs))
    assert logits.shape == (len(splits.test), 2)


def test_long_texts_are_truncated_at_max_length(tmp_path):
    long = "the film " + "really " * 300 + "works ."
    path = tmp_path / "long.tsv"
    rows = [("label", "text")] + [(str(i % 2), long if i == 0 else f"short text {i}") for i in range(10)]
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    splits = load_dataset(DatasetSpec("text", str(path), {"text_column": "text", "label_column": "label"}))
    everything = splits.train.inputs + splits.val.inputs + splits.test.inputs
    model = build_model(TextConfig(max_length=32, lora_rank=2), (), 2)
    states = prepare_inputs(model, everything)
    assert states.shape == (10, 32, 385)
    i = everything.index(long)
    assert int(states[i, :, -1].sum()) == 32  # cut at 32 word pieces ([CLS] ... [SEP])
    assert torch.isfinite(model(states[i : i + 1])).all()


def test_sst2_defaults_are_2000_train_and_300_test(tiny_sst2):
    spec = DatasetSpec("sst2")
    assert (
        spec.options["n_train"] == 2000 and spec.options["n_test"] == 300 and spec.options["min_words"] == 8
    )
    assert tiny_sst2.train.kind == "text" and tiny_sst2.train.class_names == ("negative", "positive")
    assert all(len(t.split()) >= 8 for t in tiny_sst2.train.inputs)
