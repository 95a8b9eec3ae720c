"""An exported pruned list, read back, gives exactly the kept training set, and training on it works."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.data import load_digits_splits
from tda_explorer.models import LogRegConfig
from tda_explorer.store import FlagRecord, Workspace
from tda_explorer.store.exports import export_table, kept_ids, read_export, write_exports
from tda_explorer.training import TrainConfig, train_model

FAST = TrainConfig(optimizer="sgd", lr=0.1, epochs=2, batch_size=64, checkpoints=1)


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "kept_csv"])
def test_pruned_export_reimports_to_the_kept_set_and_trains(tmp_path: Path, splits, fmt: str) -> None:
    train = splits.train
    n = len(train)
    scores = np.random.default_rng(0).normal(size=n)
    removed = scores < np.quantile(scores, 0.2)  # prune the 20% "least useful"
    ws = Workspace(tmp_path / "ws")
    ws.flags().flag("run", train.ids[3], suggested_label=1, note="pruned, maybe mislabeled")
    table = export_table(
        train.ids, train.labels.numpy(), train.class_names, scores, removed, ws.flags().get("run")
    )
    paths = write_exports(ws.exports_dir, "digits/grad_dot pruned 20%", table)
    assert all(p.parent == ws.exports_dir for p in paths.values())

    ids = kept_ids(paths[fmt])
    expected = [i for i, r in zip(train.ids, removed, strict=True) if not r]
    assert ids == expected  # exactly the kept examples, in the training set's order
    kept = train.subset(train.index_of(ids))
    assert kept.ids == tuple(expected) and len(kept) == n - int(removed.sum())
    assert torch.equal(kept.labels, train.labels[torch.from_numpy(~removed)])
    assert torch.equal(kept.inputs, train.inputs[torch.from_numpy(~removed)])

    result = train_model(LogRegConfig(), FAST, kept, seed=0, eval_sets={"test": splits.test})
    acc = float((result.eval_logits["test"].argmax(1) == splits.test.labels).float().mean())
    assert acc > 0.8
    # Same as training on the full set with the kept mask: the export loses nothing and adds nothing.
    masked = train_model(LogRegConfig(), FAST, train, seed=0, mask=~removed)
    assert all(torch.equal(result.final_state[k], masked.final_state[k]) for k in masked.final_state)


# --- issue 20 items 13-14: exact JSON, strings stay strings, CSV cells never run as formulas ----------

TRICKY_IDS = ["00000", "1.0", "=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain"]


def _tricky_table(rng: np.random.Generator) -> tuple[object, np.ndarray]:
    n = len(TRICKY_IDS)
    scores32 = (rng.normal(size=n) * 10.0 ** rng.integers(-30, 30, size=n)).astype(np.float32)
    flags = {
        "00000": FlagRecord("r", "00000", True, "007", "1e5", "t"),
        "+1": FlagRecord("r", "+1", True, "=1+1", "-note", "t"),
    }
    table = export_table(
        TRICKY_IDS, np.arange(n) % 3, ("007", "3.50", "@cat"), scores32, np.arange(n) % 2 == 0, flags
    )
    return table, scores32


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_reads_back_exactly(tmp_path: Path, fmt: str) -> None:
    table, scores32 = _tricky_table(np.random.default_rng(1))
    paths = write_exports(tmp_path, "tricky", table)
    back = read_export(paths[fmt])
    assert back["id"].tolist() == TRICKY_IDS
    assert back["class_name"].tolist() == table["class_name"].tolist()  # "007" and "3.50" stay text
    assert back["note"].tolist() == table["note"].tolist()
    assert back["label"].tolist() == table["label"].tolist()
    assert back["status"].tolist() == table["status"].tolist()
    got = np.asarray(back["score"], dtype=np.float64)
    assert np.array_equal(got, table["score"].to_numpy()) and np.array_equal(got.astype(np.float32), scores32)
    labels = back.set_index("id")["suggested_label"]
    assert labels["00000"] == "007" and labels["+1"] == "=1+1"
    assert kept_ids(paths[fmt]) == [
        i for i, s in zip(TRICKY_IDS, table["status"], strict=True) if s == "kept"
    ]


def test_json_export_floats_have_repr_precision(tmp_path: Path) -> None:
    values = np.array([0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308, np.float32(0.1)], dtype=np.float64)
    table = export_table([f"e{i}" for i in range(5)], np.zeros(5), ("a",), values, np.zeros(5, bool))
    path = write_exports(tmp_path, "floats", table)["json"]
    records = json.loads(path.read_text())
    assert [r["score"] for r in records] == values.tolist()  # bit-exact, not cut to 10 digits
    assert all(isinstance(r["id"], str) and isinstance(r["class_name"], str) for r in records)


def test_csv_cells_that_spreadsheets_would_run_are_prefixed(tmp_path: Path) -> None:
    table, _ = _tricky_table(np.random.default_rng(0))
    path = write_exports(tmp_path, "x", table)["csv"]
    cells = {row["id"]: row for row in csv.DictReader(io.StringIO(path.read_bytes().decode(), newline=""))}
    for raw in TRICKY_IDS:
        dangerous = raw[0] in "=+-@\t\r'"
        assert (("'" + raw) in cells) == dangerous and (raw in cells) == (not dangerous)
    assert all(c[0] not in "=+-@\t\r" for row in cells.values() for k, c in row.items() if c and k != "score")
    off = write_exports(tmp_path / "off", "x", table, neutralize_formulas=False)["csv"]
    assert "=cmd|' /C calc'!A0" in {
        r["id"] for r in csv.DictReader(io.StringIO(off.read_bytes().decode(), newline=""))
    }
    assert kept_ids(off, neutralized_formulas=False) == kept_ids(path)
