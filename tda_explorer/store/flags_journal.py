"""The flags journal: an append-only JSON-lines log of every flag operation, from which the flags
database can be rebuilt if the SQLite file is damaged.

`<db>.journal.jsonl` lives beside the database. `FlagStore` appends one line per committed write,
while it holds SQLite's write lock (so lines are in commit order across processes and threads), with a
single `write` on an `O_APPEND` descriptor followed by `fsync`. A line is one of:

    {"op": "flag", "tx": t, "run": k, "ids": [...], "label": str | null, "note": str, "at": iso}
    {"op": "unflag", "tx": t, "run": k, "id": i, "at": iso}
    {"op": "forget", "tx": t, "run": k, "id": i | null}
    {"op": "snapshot", "tx": t, "rows": [[run, id, flagged, label, note, at], ...]}   # whole state
    {"op": "undo", "tx": t}      # the write with this tx did not commit after all; ignore it

Replaying the lines in order with the same SQL as the live operations (`apply`) gives the same table.
A line cut short by a crash (no final newline, or not JSON) is skipped; the next append starts on a
fresh line. The journal is compacted into one `snapshot` line when it grows past `COMPACT_BYTES`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from tda_explorer.store.atomic import atomic_write_text

COMPACT_BYTES = 8 << 20
"""A journal larger than this is rewritten as one snapshot when a FlagStore opens."""

UPSERT = """
INSERT INTO flags (run_key, example_id, flagged, suggested_label, note, updated_at)
VALUES (?, ?, 1, ?, ?, ?)
ON CONFLICT (run_key, example_id) DO UPDATE SET
    flagged = 1, suggested_label = excluded.suggested_label, note = excluded.note,
    updated_at = excluded.updated_at
"""
_UNFLAG = "UPDATE flags SET flagged = 0, updated_at = ? WHERE run_key = ? AND example_id = ? AND flagged = 1"
_INSERT_ROW = (
    "INSERT OR REPLACE INTO flags (run_key, example_id, flagged, suggested_label, note, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def new_tx() -> str:
    """A random id for one journal entry (to match an `undo` line to it)."""
    return secrets.token_hex(8)


def apply(con: sqlite3.Connection, entry: dict[str, Any]) -> int:
    """Apply one journal entry to an open connection (inside the caller's transaction).

    Returns:
        Rows affected: ids written for `flag`, rows changed for `unflag` / `forget`, rows for `snapshot`.

    Raises:
        ValueError: Unknown op or malformed entry.
    """
    op = entry.get("op")
    if op == "flag":
        rows = [(entry["run"], i, entry["label"], entry["note"], entry["at"]) for i in entry["ids"]]
        con.executemany(UPSERT, rows)
        return len(rows)
    if op == "unflag":
        return con.execute(_UNFLAG, (entry["at"], entry["run"], entry["id"])).rowcount
    if op == "forget":
        if entry["id"] is None:
            return con.execute("DELETE FROM flags WHERE run_key = ?", (entry["run"],)).rowcount
        sql = "DELETE FROM flags WHERE run_key = ? AND example_id = ?"
        return con.execute(sql, (entry["run"], entry["id"])).rowcount
    if op == "snapshot":
        con.execute("DELETE FROM flags")
        con.executemany(_INSERT_ROW, [tuple(r) for r in entry["rows"]])
        return len(entry["rows"])
    raise ValueError(f"unknown journal op {op!r}")


class Journal:
    """The append-only log beside a flags database (see module docstring).

    Args:
        path: The `.jsonl` file (created on first append).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        """True if the journal file is there (even empty)."""
        return self.path.is_file()

    def append(self, entry: dict[str, Any], *, sync: bool = True) -> None:
        """Append one entry: one `write` of a whole line on an `O_APPEND` fd, then `fsync` if `sync`.

        Call it only while holding the database's write lock, so that appends never interleave.
        `FlagStore` appends with `sync=False` under the lock and calls `sync` after the commit, so
        that writers do not queue behind each other's fsync.
        """
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(self.path, size) != b"\n":
                line = b"\n" + line  # a previous append was cut short: start on a fresh line
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and os.name != "nt":
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def sync(self) -> None:
        """fsync the journal (makes every append so far durable)."""
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> tuple[list[dict[str, Any]], int]:
        """The entries to replay (undone ones dropped) and the number of unreadable lines skipped."""
        if not self.path.is_file():
            return [], 0
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a line cut short
        bad = 1 if tail.strip() else 0
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(entry, dict) and isinstance(entry.get("op"), str):
                out.append(entry)
            else:
                bad += 1
        undone = {e.get("tx") for e in out if e["op"] == "undo"}
        return [e for e in out if e["op"] != "undo" and e.get("tx") not in undone], bad

    def replay(self, con: sqlite3.Connection) -> tuple[int, int]:
        """Rebuild the `flags` table from the journal in one transaction.

        Returns:
            `(entries applied, lines skipped)`; an entry that cannot be applied counts as skipped.
        """
        entries, bad = self.entries()
        applied = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("DELETE FROM flags")
            for entry in entries:
                try:
                    apply(con, entry)
                    applied += 1
                except (KeyError, TypeError, ValueError, sqlite3.IntegrityError):
                    bad += 1
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return applied, bad

    def snapshot(self, con: sqlite3.Connection) -> int:
        """Replace the journal by one `snapshot` of the table (call inside a write transaction).

        Returns:
            The number of rows in the snapshot.
        """
        rows = [list(r) for r in con.execute("SELECT * FROM flags ORDER BY run_key, example_id")]
        entry = {"op": "snapshot", "tx": new_tx(), "rows": rows}
        atomic_write_text(self.path, json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
        return len(rows)

    def needs_compaction(self) -> bool:
        """True if the journal has grown past `COMPACT_BYTES`."""
        try:
            return self.path.stat().st_size > COMPACT_BYTES
        except OSError:
            return False


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def salvage(backup: Path, con: sqlite3.Connection) -> int:
    """Best effort: copy the rows still readable from a damaged database without a journal."""
    try:
        with contextlib.closing(sqlite3.connect(backup.resolve().as_uri() + "?mode=ro", uri=True)) as old:
            rows = old.execute(
                "SELECT run_key, example_id, flagged, suggested_label, note, updated_at FROM flags"
            ).fetchall()
    except sqlite3.Error:
        return 0
    con.execute("BEGIN IMMEDIATE")
    con.executemany(_INSERT_ROW, rows)
    con.execute("COMMIT")
    return len(rows)
