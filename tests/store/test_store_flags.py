"""FlagStore: flag/unflag/get semantics, persistence, and concurrent writers losing nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.store import FlagRecord, FlagStore
from tests.fixtures import run_together


def test_flag_unflag_get(tmp_path: Path) -> None:
    fs = FlagStore(tmp_path / "flags.sqlite")
    fs.flag("run1", "ex-1", suggested_label="cat", note="looks like a cat")
    fs.flag("run1", "ex-2")
    fs.flag("run2", "ex-1", suggested_label=3)
    got = fs.get("run1")
    assert set(got) == {"ex-1", "ex-2"}
    rec = got["ex-1"]
    assert isinstance(rec, FlagRecord) and rec.flagged and rec.suggested_label == "cat"
    assert rec.note == "looks like a cat" and rec.updated_at.endswith("+00:00")
    assert got["ex-2"].suggested_label is None and got["ex-2"].note == ""
    assert fs.get("run2")["ex-1"].suggested_label == "3"
    assert fs.is_flagged("run1", "ex-1") and not fs.is_flagged("run1", "ex-9")

    assert fs.unflag("run1", "ex-1") is True
    assert fs.unflag("run1", "ex-1") is False
    assert set(fs.get("run1")) == {"ex-2"} and not fs.is_flagged("run1", "ex-1")
    kept = fs.get("run1", include_unflagged=True)["ex-1"]  # unflag keeps label and note
    assert not kept.flagged and kept.suggested_label == "cat" and kept.note == "looks like a cat"

    fs.flag("run1", "ex-1", note="re-flagged")  # flag overwrites label and note
    again = fs.get("run1")["ex-1"]
    assert again.flagged and again.suggested_label is None and again.note == "re-flagged"
    assert fs.run_keys() == ["run1", "run2"]
    assert fs.forget("run1", "ex-1") == 1 and "ex-1" not in fs.get("run1", include_unflagged=True)
    assert fs.forget("run2") == 1 and fs.run_keys() == ["run1"]


def test_flag_many_and_validation(tmp_path: Path) -> None:
    fs = FlagStore(tmp_path / "f.sqlite")
    assert fs.flag_many("r", [f"id{i}" for i in range(50)], suggested_label="dog") == 50
    assert len(fs.get("r")) == 50
    with pytest.raises(ConfigError, match="example_id"):
        fs.flag_many("r", ["ok", 7])  # type: ignore[list-item]
    assert "ok" not in fs.get("r")  # all or nothing
    with pytest.raises(ConfigError, match="suggested_label"):
        fs.flag("r", "x", suggested_label=1.5)  # type: ignore[arg-type]


def test_persistence_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    FlagStore(path).flag("r", "a", note="kept")
    assert FlagStore(path).get("r")["a"].note == "kept"
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in con.execute("PRAGMA table_info(flags)")]
    assert cols == ["run_key", "example_id", "flagged", "suggested_label", "note", "updated_at"]


def _worker(path: str, run_key: str, n: int, start) -> None:
    fs = FlagStore(path)
    start.wait()
    for i in range(n):
        fs.flag(run_key, f"{run_key}-{i}", note=str(i))


def test_two_processes_writing_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "flags.sqlite")
    FlagStore(path)
    run_together(_worker, [(path, key, 300) for key in ("A", "B")], timeout=60)
    fs = FlagStore(path)
    assert len(fs.get("A")) == 300 and len(fs.get("B")) == 300
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*) FROM flags WHERE flagged = 1").fetchone()[0] == 600
