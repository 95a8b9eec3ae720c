"""Flags that users put on training examples ("looks mislabeled", suggested label, note), in SQLite.

One row per `(run_key, example_id)`:

    flags(run_key TEXT, example_id TEXT, flagged INTEGER, suggested_label TEXT NULL,
          note TEXT, updated_at TEXT, PRIMARY KEY(run_key, example_id))

Semantics:
- `flag` upserts: it sets `flagged=1` and *overwrites* the suggested label and note with the values given.
- `unflag` keeps the row with `flagged=0`, its suggested label and note intact, so a note is not lost
  when a flag is toggled off; `get(run_key)` returns flagged rows only, `get(..., include_unflagged=True)`
  returns all. `forget` deletes rows for good.
- `updated_at` is an ISO-8601 UTC timestamp.

Concurrency: the database runs in WAL mode with `synchronous=NORMAL` and a 10 s busy timeout. Every
operation opens its own connection (cheap; SQLite connections must not cross threads, and Streamlit
runs sessions in threads), writes inside `BEGIN IMMEDIATE`, and is retried a few times if the
database is still locked.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from tda_explorer.errors import ArtifactError, ConfigError

_T = TypeVar("_T")
BUSY_TIMEOUT_MS = 10_000
RETRIES = 5
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    run_key TEXT NOT NULL,
    example_id TEXT NOT NULL,
    flagged INTEGER NOT NULL,
    suggested_label TEXT NULL,
    note TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_key, example_id)
)
"""
_UPSERT = """
INSERT INTO flags (run_key, example_id, flagged, suggested_label, note, updated_at)
VALUES (?, ?, 1, ?, ?, ?)
ON CONFLICT (run_key, example_id) DO UPDATE SET
    flagged = 1, suggested_label = excluded.suggested_label, note = excluded.note,
    updated_at = excluded.updated_at
"""


@dataclass(frozen=True)
class FlagRecord:
    """One example's flag for one run.

    Attributes:
        run_key: Key of the run the flag belongs to.
        example_id: Stable id of the training example.
        flagged: False after `unflag` (the row, label and note are kept).
        suggested_label: The label the user thinks is right, as text, or None.
        note: Free text.
        updated_at: ISO-8601 UTC time of the last change.
    """

    run_key: str
    example_id: str
    flagged: bool
    suggested_label: str | None
    note: str
    updated_at: str


class FlagStore:
    """User flags on training examples, kept in one SQLite file shared by the app and the CLI.

    Args:
        path: The database file (created with its table if missing). `Workspace.flags()` uses
            `<workspace>/flags.sqlite`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run(self._init_schema)

    def __repr__(self) -> str:
        return f"FlagStore({str(self.path)!r})"

    # --- writes --------------------------------------------------------------------------------

    def flag(
        self, run_key: str, example_id: str, suggested_label: str | int | None = None, note: str = ""
    ) -> None:
        """Flag one example (insert, or overwrite label and note of an existing row).

        Args:
            run_key: Key of the run.
            example_id: Stable example id (a string, never an index).
            suggested_label: Proposed label; ints are stored as their decimal text.
            note: Free text.
        """
        self.flag_many(run_key, [example_id], suggested_label=suggested_label, note=note)

    def flag_many(
        self,
        run_key: str,
        example_ids: Iterable[str],
        suggested_label: str | int | None = None,
        note: str = "",
    ) -> int:
        """Flag several examples in one transaction (all or none), with the same label and note.

        Returns:
            The number of ids written.
        """
        now = _now()
        rows = [
            (
                _text(run_key, "run_key"),
                _text(i, "example_id"),
                _label(suggested_label),
                _text(note, "note"),
                now,
            )
            for i in example_ids
        ]
        if rows:
            self._run(lambda con: _write(con, lambda: con.executemany(_UPSERT, rows)))
        return len(rows)

    def unflag(self, run_key: str, example_id: str) -> bool:
        """Clear an example's flag, keeping its row, suggested label and note.

        Returns:
            True if the example was flagged before.
        """
        args = (_now(), _text(run_key, "run_key"), _text(example_id, "example_id"))
        sql = (
            "UPDATE flags SET flagged = 0, updated_at = ? "
            "WHERE run_key = ? AND example_id = ? AND flagged = 1"
        )
        return self._run(lambda con: _write(con, lambda: con.execute(sql, args)).rowcount) > 0

    def forget(self, run_key: str, example_id: str | None = None) -> int:
        """Delete rows for good: one example's, or with `example_id=None` all of a run's.

        Returns:
            The number of rows deleted.
        """
        if example_id is None:
            sql, args = "DELETE FROM flags WHERE run_key = ?", (_text(run_key, "run_key"),)
        else:
            sql = "DELETE FROM flags WHERE run_key = ? AND example_id = ?"
            args = (_text(run_key, "run_key"), _text(example_id, "example_id"))
        return self._run(lambda con: _write(con, lambda: con.execute(sql, args)).rowcount)

    # --- reads ---------------------------------------------------------------------------------

    def get(self, run_key: str, *, include_unflagged: bool = False) -> dict[str, FlagRecord]:
        """Return a run's flags by example id (flagged rows only unless `include_unflagged`)."""
        sql = "SELECT * FROM flags WHERE run_key = ?" + ("" if include_unflagged else " AND flagged = 1")
        rows = self._run(
            lambda con: con.execute(sql + " ORDER BY example_id", (_text(run_key, "run_key"),)).fetchall()
        )
        return {r["example_id"]: _record(r) for r in rows}

    def is_flagged(self, run_key: str, example_id: str) -> bool:
        """True if the example is currently flagged for the run."""
        sql = "SELECT 1 FROM flags WHERE run_key = ? AND example_id = ? AND flagged = 1"
        args = (_text(run_key, "run_key"), _text(example_id, "example_id"))
        return self._run(lambda con: con.execute(sql, args).fetchone()) is not None

    def run_keys(self) -> list[str]:
        """Keys of the runs that have at least one flagged example, sorted."""
        sql = "SELECT DISTINCT run_key FROM flags WHERE flagged = 1 ORDER BY run_key"
        return [r[0] for r in self._run(lambda con: con.execute(sql).fetchall())]

    # --- plumbing ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    @staticmethod
    def _init_schema(con: sqlite3.Connection) -> None:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the database file
        con.execute(_SCHEMA)
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `op` on a fresh connection, retrying while the database is locked."""
        for attempt in range(RETRIES):
            try:
                with contextlib.closing(self._connect()) as con:
                    return op(con)
            except sqlite3.OperationalError as exc:
                msg = str(exc).lower()
                if ("locked" not in msg and "busy" not in msg) or attempt == RETRIES - 1:
                    raise ArtifactError(
                        f"Flags database {self.path}: {exc}. If it stays locked, close other apps or CLI "
                        "processes that use this workspace; if it is corrupt, move the file away."
                    ) from exc
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")


def _write(con: sqlite3.Connection, body: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
    """Run `body` inside `BEGIN IMMEDIATE … COMMIT` (rolled back if it raises)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        cur = body()
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return cur


def _record(row: sqlite3.Row) -> FlagRecord:
    return FlagRecord(
        run_key=row["run_key"],
        example_id=row["example_id"],
        flagged=bool(row["flagged"]),
        suggested_label=row["suggested_label"],
        note=row["note"],
        updated_at=row["updated_at"],
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}.")
    return value


def _label(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    raise ConfigError(f"suggested_label must be a string, an int or None, got {type(value).__name__}.")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
