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

Concurrency: the database runs in WAL mode with `synchronous=NORMAL`. Every operation opens its own
connection (cheap; SQLite connections must not cross threads, and Streamlit runs sessions in threads)
and writes inside `BEGIN IMMEDIATE`. A write waits at most `LOCK_WAIT_S` (default 5 s) for another
writer's lock, then raises `ArtifactError` saying another process holds the database.

Integrity: every committed write is also appended (fsync'ed) to an append-only journal,
`<db>.journal.jsonl` (see `store.flags_journal`). Opening a store checks the file (header, size,
`PRAGMA quick_check`, table present); a damaged file — bad header, truncated, not a database, a zeroed
page, zero length — is moved aside to `<db>.corrupt-<UTC time>` (with its `-wal`/`-shm`), a fresh
database is rebuilt from the journal, and a `FlagsRecoveredWarning` says what happened (also kept in
`FlagStore.recoveries`). An operation that meets a damaged file later does the same and is retried
once. A missing database with a journal is rebuilt from the journal (to start afresh, delete both).
Repairs take an exclusive `flock` on `<db>.lock`; normal operations take it shared, so a repair never
runs under a write in flight.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.store.flags_journal import Journal, apply, new_tx, salvage

try:
    import fcntl
except ImportError:  # Windows: no repair lock (single-process use)
    fcntl = None  # type: ignore[assignment]

_T = TypeVar("_T")
LOCK_WAIT_S = 5.0
"""Longest wait for another writer's lock (or a repair in progress) before an operation gives up."""
SCHEMA_VERSION = 1
_MAGIC = b"SQLite format 3\x00"
_MISSING = "missing"

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


class FlagsRecoveredWarning(UserWarning):
    """A damaged flags database was moved aside and rebuilt (the message says where and how much)."""


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
            `<workspace>/flags.sqlite`; the journal is `<path>.journal.jsonl`.
        lock_wait_s: Longest wait for another writer's lock before `ArtifactError`.

    Attributes:
        recoveries: Messages of the repairs this object made (empty when the file was sound).

    Raises:
        ArtifactError: The database cannot be opened or repaired (the message says why and what to do).
    """

    def __init__(self, path: str | Path, *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.path.with_name(self.path.name + ".journal.jsonl"))
        self.lock_wait_s = float(lock_wait_s)
        self.recoveries: list[str] = []
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._guard(exclusive=False):
            problem = self._diagnose()
            if problem is None:
                self._keep_journal()
                return
        with self._guard(exclusive=True):
            self._repair_if_needed()

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
        entry = {
            "op": "flag",
            "tx": new_tx(),
            "run": _text(run_key, "run_key"),
            "ids": [_text(i, "example_id") for i in example_ids],
            "label": _label(suggested_label),
            "note": _text(note, "note"),
            "at": _now(),
        }
        return self._write(entry) if entry["ids"] else 0

    def unflag(self, run_key: str, example_id: str) -> bool:
        """Clear an example's flag, keeping its row, suggested label and note.

        Returns:
            True if the example was flagged before.
        """
        run, ex = _text(run_key, "run_key"), _text(example_id, "example_id")
        return self._write({"op": "unflag", "tx": new_tx(), "run": run, "id": ex, "at": _now()}) > 0

    def forget(self, run_key: str, example_id: str | None = None) -> int:
        """Delete rows for good: one example's, or with `example_id=None` all of a run's.

        Returns:
            The number of rows deleted.
        """
        ex = None if example_id is None else _text(example_id, "example_id")
        return self._write({"op": "forget", "tx": new_tx(), "run": _text(run_key, "run_key"), "id": ex})

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

    def _write(self, entry: dict[str, Any]) -> int:
        """Apply `entry` and append it to the journal inside one `BEGIN IMMEDIATE` transaction."""

        def op(con: sqlite3.Connection) -> int:
            con.execute("BEGIN IMMEDIATE")
            try:
                n = apply(con, entry)
                self.journal.append(entry, sync=False)  # under the write lock: journal order = commit order
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
            try:
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(OSError):
                    self.journal.append({"op": "undo", "tx": entry["tx"]})
                raise
            self.journal.sync()  # durable before we return, without holding the write lock
            return n

        return self._run(op)

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {max(1, int(timeout_s * 1000))}")
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
        """Run `op` on a fresh connection: wait at most `lock_wait_s` for locks, repair damage once."""
        start = time.monotonic()
        repaired = False
        while True:
            left = self.lock_wait_s - (time.monotonic() - start)
            try:
                with self._guard(exclusive=False), contextlib.closing(self._connect(max(left, 0.01))) as con:
                    return op(con)
            except sqlite3.DatabaseError as exc:
                if _is_lock_error(exc):
                    waited = time.monotonic() - start
                    if waited >= self.lock_wait_s:
                        raise ArtifactError(
                            f"Flags database {self.path} is locked by another writer (waited {waited:.1f} s). "
                            "Another app session or CLI command is writing flags to this workspace; try "
                            "again, and if it stays locked, close the other app or CLI processes."
                        ) from exc
                    time.sleep(min(0.02 * (1 + random.random()), max(left, 0.0)))
                    continue
                if repaired:
                    raise ArtifactError(f"Flags database {self.path}: {exc} (even after a repair).") from exc
                with self._guard(exclusive=True):
                    if not self._repair_if_needed(cause=str(exc)):
                        raise ArtifactError(
                            f"Flags database {self.path}: {exc}. The file passes SQLite's check; if this "
                            f"persists, move it away (the flags are rebuilt from {self.journal.path.name})."
                        ) from exc
                repaired = True
            except OSError as exc:
                raise ArtifactError(f"Flags database {self.path}: cannot write its journal ({exc}).") from exc

    @contextlib.contextmanager
    def _guard(self, *, exclusive: bool) -> Iterator[None]:
        """Hold `<db>.lock` shared (operations) or exclusive (repairs), waiting at most `lock_wait_s`."""
        if fcntl is None:
            yield
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ArtifactError(
                f"Flags database {self.path}: cannot open its lock file {self._lock_path.name} ({exc}); "
                "the workspace folder must be writable."
            ) from exc
        try:
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + max(self.lock_wait_s, 1.0)
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ArtifactError(
                            f"Flags database {self.path}: another process is "
                            f"{'using' if exclusive else 'repairing'} it ({self._lock_path.name} held for "
                            f"{max(self.lock_wait_s, 1.0):.0f} s); try again."
                        ) from None
                    time.sleep(0.01 * (1 + random.random()))
            yield
        finally:
            os.close(fd)  # releases the lock

    def _diagnose(self) -> str | None:
        """None if the database file is sound, `_MISSING` if absent, else what is wrong with it."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return _MISSING
        if size == 0:
            return "the file is empty (0 bytes)"
        with open(self.path, "rb") as f:
            head = f.read(len(_MAGIC))
        if head != _MAGIC:
            return f"not an SQLite database (its first bytes are {head[:16]!r})"
        try:
            with contextlib.closing(self._connect(self.lock_wait_s)) as con:
                result = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
                if result != ["ok"]:
                    return "PRAGMA quick_check: " + "; ".join(" ".join(str(r).split()) for r in result[:3])
                tables = con.execute("SELECT name FROM sqlite_master WHERE name = 'flags'").fetchall()
                if not tables:
                    return "the flags table is missing"
        except sqlite3.DatabaseError as exc:
            if _is_lock_error(exc):
                return None  # busy, not damaged: the operation itself will wait or report it
            return f"{type(exc).__name__}: {exc}"
        return None

    def _keep_journal(self) -> None:
        """Start the journal from the database's rows if there is none yet (a store made before
        journals), or compact it into one snapshot once it is large. Call under the guard."""
        if self.journal.exists() and not self.journal.needs_compaction():
            return
        try:
            with contextlib.closing(self._connect(self.lock_wait_s)) as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    if not self.journal.exists() or self.journal.needs_compaction():
                        self.journal.snapshot(con)
                finally:
                    con.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise ArtifactError(f"Flags database {self.path}: cannot start its journal ({exc}).") from exc

    def _repair_if_needed(self, cause: str | None = None) -> bool:
        """Under the exclusive guard: create a missing database, or move a damaged one aside and
        rebuild it from the journal. Returns True if a repair was made."""
        problem = self._diagnose()
        if problem is None:
            if cause is None:
                self._keep_journal()
            return False
        backup = None
        if problem != _MISSING:
            backup = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{backup}{suffix}")
        had_journal = self.journal.exists()
        try:
            with contextlib.closing(self._connect(self.lock_wait_s)) as con:
                self._init_schema(con)
                applied, skipped = self.journal.replay(con)
                salvaged = 0 if had_journal or backup is None else salvage(backup, con)
                n_rows = con.execute("SELECT COUNT(*) FROM flags").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            kept = f"; the damaged file is {backup}" if backup else ""
            raise ArtifactError(
                f"Flags database {self.path} ({problem}) could not be rebuilt from {self.journal.path} "
                f"({exc}){kept}. Try again; if it persists, move both files away to start afresh."
            ) from exc
        if not had_journal:
            self._keep_journal()
        if backup is None and not had_journal:
            return False  # a new, empty store
        if backup is None:
            msg = f"Flags database {self.path} was missing; rebuilt {n_rows} flag row(s) from {self.journal.path}."
        else:
            source = (
                f"restored {n_rows} flag row(s) from the journal {self.journal.path.name} ({applied} operations)"
                if had_journal
                else f"there was no journal, {salvaged} row(s) could be read back from the damaged file"
            )
            msg = (
                f"Flags database {self.path} was damaged ({problem}); moved it to {backup.name} and {source}."
            )
        if skipped:
            msg += f" {skipped} unreadable journal line(s) were skipped."
        self.recoveries.append(msg)
        warnings.warn(msg, FlagsRecoveredWarning, stacklevel=3)
        return True


def _is_lock_error(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


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
