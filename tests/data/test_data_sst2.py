"""SST-2 from the shared GLUE copy, and from small generated copies (for the edge cases)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tda_explorer.data import builtins, load_sst2
from tda_explorer.errors import DataError


def _rows(path: Path) -> list[tuple[int, str]]:
    """(label, text) per data row, read with the csv module (independently of the loader)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(int(label), text) for label, text in reader]


def test_sst2_default_split(sst2_path: Path):
    s = load_sst2(sst2_path)
    assert (len(s.train), len(s.val), len(s.test)) == (2000, 200, 300)
    for part in (s.train, s.val, s.test):
        assert part.kind == "text" and isinstance(part.inputs, tuple)
        assert all(isinstance(t, str) and len(t.split()) >= 8 for t in part.inputs)
        assert part.class_names == ("negative", "positive")
        assert set(part.labels.tolist()) == {0, 1}
    assert all(i.startswith("sst2-train-") for i in (*s.train.ids, *s.val.ids))
    assert all(i.startswith("sst2-dev-") for i in s.test.ids)
    assert not set(s.train.ids) & set(s.val.ids)


def test_sst2_ids_are_file_rows_and_dev_header_differs(sst2_path: Path):
    with open(sst2_path / "dev.tsv", encoding="utf-8") as f:
        assert f.readline().split() == ["label", "content"]
    s = load_sst2(sst2_path)
    train_rows, dev_rows = _rows(sst2_path / "train.tsv"), _rows(sst2_path / "dev.tsv")
    assert len(train_rows) == 67349 and len(dev_rows) == 872
    for part, rows in ((s.train, train_rows), (s.test, dev_rows)):
        for k in range(0, len(part), 37):
            label, text = rows[int(part.ids[k].rsplit("-", 1)[1])]
            assert part.inputs[k] == text and int(part.labels[k]) == label


def test_sst2_min_words_and_all_dev_rows(sst2_path: Path):
    s = load_sst2(sst2_path, min_words=3, n_train=500, n_val=50, n_test=5000)
    assert min(len(t.split()) for t in s.train.inputs) >= 3
    assert min(len(t.split()) for t in s.train.inputs) < 8  # shorter phrases are now allowed
    n_dev = sum(len(t.split()) >= 3 for _, t in _rows(sst2_path / "dev.tsv"))
    assert len(s.test) == n_dev  # asked for more than there are: all of them


def test_sst2_default_path_and_seed(sst2_path: Path):
    if builtins.SST2_DEFAULT_PATH.resolve() != sst2_path.resolve():
        pytest.skip("shared SST-2 is not at the loader's default path")
    a, b, c = load_sst2(), load_sst2(), load_sst2(seed=1)
    assert a.train.ids == b.train.ids and a.test.ids == b.test.ids
    assert a.train.ids != c.train.ids
    assert a.spec["path"] is None and a.spec["options"]["min_words"] == 8
    assert a.spec["fingerprint"] == c.spec["fingerprint"]


def _write_sst2(root: Path, train: list[tuple[int, str]], dev: list[tuple[int, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (("train.tsv", "sentence", train), ("dev.tsv", "content", dev)):
        lines = [f"label\t{header}"] + [f"{label}\t{text}" for label, text in rows]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_sst2_small_copy_filters_and_keeps_quotes(tmp_path: Path):
    train = [(i % 2, f'a " quoted {"word " * (i % 6)}sentence {i}') for i in range(40)]
    dev = [(1, "short"), (0, 'it \'s "so" bad , really bad')]
    root = _write_sst2(tmp_path / "sst", train, dev)
    s = load_sst2(root, min_words=6, n_train=10, n_val=5, n_test=10)
    long_rows = {i for i, (_, t) in enumerate(train) if len(t.split()) >= 6}
    assert {int(i.rsplit("-", 1)[1]) for i in (*s.train.ids, *s.val.ids)} <= long_rows
    assert s.test.ids == ("sst2-dev-1",) and s.test.inputs == (dev[1][1],)
    assert torch.equal(s.test.labels, torch.tensor([0]))
    assert s.spec["path"] == str(root)


def test_sst2_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(builtins, "SST2_DEFAULT_PATH", missing)
    with pytest.raises(DataError, match="path=") as e:
        load_sst2()
    assert str(missing) in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_sst2(missing)
    root = _write_sst2(tmp_path / "sst", [(0, "one two three")] * 3, [(1, "four five six")])
    with pytest.raises(DataError, match="n_train"):
        load_sst2(root, min_words=1, n_train=3, n_val=1)
    (root / "dev.tsv").unlink()
    with pytest.raises(DataError, match="dev.tsv"):
        load_sst2(root, min_words=1, n_train=1, n_val=1)
    bad = _write_sst2(tmp_path / "bad", [(0, "x")], [(1, "y")])
    (bad / "train.tsv").write_text("label\tsentence\n2\tsome words\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv.*row 0"):
        load_sst2(bad, min_words=1, n_train=1, n_val=0)
