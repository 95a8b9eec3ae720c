"""The text mislabel protocol (benchmarks.mislabel_text) end to end on a tiny synthetic text set with a frozen
MiniLM head: flips, run, out-of-fold probabilities, signals, the cache and the table."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("cleanlab.rank")

GOOD = ("wonderful", "delightful", "brilliant", "moving", "superb", "charming")
BAD = ("dreadful", "boring", "awful", "tedious", "clumsy", "lifeless")


def _splits(tmp_path):
    from tda_explorer.data import DatasetSpec, load_dataset

    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 30), ("val", 4), ("test", 4)):
        for label, words in (("positive", GOOD), ("negative", BAD)):
            for _ in range(n):
                a, b = rng.choice(words, 2, replace=False)
                rows.append((f"the film was {a} and {b}", label, split))
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label", "split"), *rows])
    return load_dataset(DatasetSpec("text", path=str(path), options={"split_column": "split"}))


def test_text_protocol_scores_every_signal_and_caches_them(tmp_path, monkeypatch):
    from benchmarks import mislabel, mislabel_text
    from tda_explorer.models import TextConfig
    from tda_explorer.training import TrainConfig

    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(mislabel, "WORKSPACE", tmp_path / "ws")
    monkeypatch.setattr(mislabel, "CACHE", tmp_path / "signals")
    monkeypatch.setattr(mislabel, "REPEATS", 1)
    monkeypatch.setattr(mislabel, "FOLDS", 2)  # 1 run + 2 retrainings: each builds a MiniLM
    splits = _splits(tmp_path)
    recipe = TrainConfig(
        optimizer="adam", lr=2e-2, momentum=0.0, weight_decay=0.0, epochs=4, batch_size=16, checkpoints=2
    )
    setting = mislabel.Setting(
        "tiny-head",
        lambda: splits,
        TextConfig(max_length=16, lora_rank=0),
        recipe,
        (("grad_dot self-influence", "grad_dot", {}),),
    )
    monkeypatch.setitem(mislabel_text.MODES, "tiny", {"flip_seeds": (0,), "dev_seeds": (), "seeds": 1})
    result = mislabel_text.run_benchmark("tiny", (setting,))
    (one,) = result["settings"]
    rows = {r["score"]: r for r in one["rows"]}
    want = {mislabel.OWN_LOSS, mislabel.CLEANLAB, mislabel.NEW_COMBO, "grad_dot self-influence"}
    assert want <= set(rows) and mislabel.OLD_COMBO not in rows  # no TRAK row, no old combination
    for r in rows.values():
        assert 0.0 <= r["auc"][0] <= 1.0 and len(r["per_seed"]) == 1
    assert rows[mislabel.NEW_COMBO]["auc"][0] > 0.7  # 6 flipped templated sentences are easy to find
    cached = sorted(p.name for p in (tmp_path / "signals").iterdir())
    assert cached == ["tiny-head-flip0-s1.json", "tiny-head-flip0-s1.npz"]
    with np.load(tmp_path / "signals" / "tiny-head-flip0-s1.npz") as z:
        assert z[mislabel.OOF_PROBS].shape == (60, 2) and z["__flips__"].sum() == 6
    again = mislabel.setting_result(setting, (0,), (), 1)  # from the cache: the same numbers
    assert {r["score"]: r["per_seed"] for r in again["rows"]} == {k: r["per_seed"] for k, r in rows.items()}
    assert "Target (mislabel_score AUC >= cleanlab's and >= own loss)" in mislabel_text.markdown(result)
    mislabel_text.save(result, tmp_path / "out.json")
    assert '"tiny"' in (tmp_path / "out.json").read_text()
