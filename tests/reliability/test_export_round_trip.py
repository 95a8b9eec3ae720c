"""An exported pruned list, read back, gives exactly the kept training set, and training on it works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.data import load_digits_splits
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.store.exports import export_table, kept_ids, write_exports
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
