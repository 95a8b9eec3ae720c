"""Flags store integrity (issue 20 item 12): a damaged flags.sqlite is moved aside and rebuilt from the
journal with nothing lost; a held write lock fails fast with a clear message."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tda_explorer.errors import ArtifactError
from tda_explorer.store import FlagStore
from tda_explorer.store.flags import FlagsRecoveredWarning
from tda_explorer.store.flags_journal import Journal

RUNS = ("run-a", "run-b")


def _fill(fs: FlagStore) -> dict[str, dict]:
    """A history with every kind of write; returns the full state per run."""
    fs.flag_many("run-a", [f"ex-{i:04d}" for i in range(300)], suggested_label="007", note="x" * 40)
    fs.flag("run-b", "b1", suggested_label=3, note="three")
    fs.flag("run-b", "b2", note='n\u00e9e ✓ "quoted" ,comma')
    fs.unflag("run-a", "ex-0001")
    fs.flag("run-a", "ex-0002", suggested_label=None, note="overwritten")
    fs.forget("run-a", "ex-0003")
    fs.flag("run-c", "gone")
    fs.forget("run-c")
    return _state(fs)


def _state(fs: FlagStore) -> dict[str, dict]:
    return {r: fs.get(r, include_unflagged=True) for r in (*RUNS, "run-c")}


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    assert len(data) >= 4 * 4096, "the test database should span several pages"
    if how == "bad_header":
        path.write_bytes(b"NOT A DATABASE!!" + data[16:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2 + 100])
    elif how == "text_file":
        path.write_text("run_key,example_id\nrun-a,ex-0000\n")
    elif how == "zeroed_page":
        path.write_bytes(data[: 2 * 4096] + bytes(4096) + data[3 * 4096 :])
    elif how == "zero_length":
        path.write_bytes(b"")
    else:
        raise AssertionError(how)


def _backups(directory: Path) -> list[Path]:
    """The moved-aside databases (their -wal/-shm companions, if any, move with them)."""
    return sorted(
        p for p in directory.glob("flags.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
    )


KINDS = ["bad_header", "truncated", "text_file", "zeroed_page", "zero_length"]


@pytest.mark.parametrize("how", KINDS)
def test_damaged_file_is_moved_aside_and_flags_recovered_on_open(tmp_path: Path, how: str) -> None:
    path = tmp_path / "flags.sqlite"
    expected = _fill(FlagStore(path))
    _corrupt(path, how)
    with pytest.warns(FlagsRecoveredWarning) as record:
        fs = FlagStore(path)
    msg = str(record[0].message)
    backups = _backups(tmp_path)
    assert len(backups) == 1 and backups[0].name in msg
    assert "damaged" in msg and "restored" in msg and fs.recoveries == [msg]
    assert _state(fs) == expected
    assert _state(FlagStore(path)) == expected  # sound again: a second open repairs nothing
    assert len(_backups(tmp_path)) == 1


@pytest.mark.parametrize("how", ["bad_header", "truncated", "zeroed_page", "zero_length"])
@pytest.mark.parametrize("first", ["get", "flag"])
def test_damage_after_open_is_repaired_by_the_next_operation(tmp_path: Path, how: str, first: str) -> None:
    path = tmp_path / "flags.sqlite"
    fs = FlagStore(path)
    expected = _fill(fs)
    _corrupt(path, how)
    with pytest.warns(FlagsRecoveredWarning):
        if first == "get":
            assert fs.get("run-b", include_unflagged=True) == expected["run-b"]
        else:
            fs.flag("run-b", "b3", note="after the damage")
    if first == "flag":
        expected["run-b"] = fs.get("run-b", include_unflagged=True)
        assert "b3" in expected["run-b"]
    assert _state(fs) == expected
    assert _state(FlagStore(path)) == expected


def test_missing_database_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    expected = _fill(FlagStore(path))
    path.unlink()
    with pytest.warns(FlagsRecoveredWarning, match="missing"):
        assert _state(FlagStore(path)) == expected


def test_store_made_before_journals_gets_a_snapshot_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    fs = FlagStore(path)
    expected = _fill(fs)
    fs.journal.path.unlink()  # as if written by a version without journal
    assert _state(FlagStore(path)) == expected
    (entry,) = [json.loads(line) for line in fs.journal.path.read_text().splitlines()]
    assert entry["op"] == "snapshot" and len(entry["rows"]) == sum(len(v) for v in expected.values())
    _corrupt(path, "zeroed_page")
    with pytest.warns(FlagsRecoveredWarning):
        assert _state(FlagStore(path)) == expected


def test_damage_without_any_journal_says_so(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    fs = FlagStore(path)
    _fill(fs)
    fs.journal.path.unlink()
    _corrupt(path, "text_file")
    with pytest.warns(FlagsRecoveredWarning, match="no journal"):
        fs2 = FlagStore(path)
    assert fs2.get("run-a") == {}
    assert len(_backups(tmp_path)) == 1


def test_a_torn_journal_line_is_skipped_and_later_writes_kept(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    fs = FlagStore(path)
    _fill(fs)
    with open(fs.journal.path, "ab") as f:
        f.write(b'{"op": "flag", "tx": "cut-sh')  # a crash in the middle of an append
    fs.flag("run-b", "b9", note="written after the torn line")
    expected = _state(fs)
    _corrupt(path, "bad_header")
    with pytest.warns(FlagsRecoveredWarning, match="1 unreadable journal line"):
        assert _state(FlagStore(path)) == expected


def test_undone_journal_entries_are_not_replayed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"op": "forget", "tx": "t1", "run": "r", "id": None})
    journal.append({"op": "forget", "tx": "t2", "run": "r", "id": "x"})
    journal.append({"op": "undo", "tx": "t1"})
    entries, bad = journal.entries()
    assert [e["tx"] for e in entries] == ["t2"] and bad == 0


def test_held_write_lock_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    fs = FlagStore(path, lock_wait_s=0.5)
    fs.flag("r", "a")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(ArtifactError, match="locked by another writer") as info:
            fs.flag("r", "b")
        waited = time.monotonic() - start
        assert 0.5 <= waited < 2.0, waited
        assert "close the other app or CLI" in str(info.value)
        assert fs.is_flagged("r", "a")  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    fs.flag("r", "b")
    assert set(fs.get("r")) == {"a", "b"}
    entries, _ = fs.journal.entries()
    assert sum(e["op"] == "flag" and e["ids"] == ["b"] for e in entries) == 1  # the failed try left nothing


def test_default_lock_wait_is_a_few_seconds() -> None:
    from tda_explorer.store.flags import LOCK_WAIT_S

    assert 1.0 <= LOCK_WAIT_S <= 10.0
