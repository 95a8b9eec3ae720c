"""Crash-safe writes: a file or an artifact directory appears complete, or not at all.

Everything is written under a temporary name in the destination's own directory (so the final
rename never crosses filesystems), flushed with `os.fsync`, then renamed into place. Names used
next to a destination `<name>` (readers skip every name that starts with a dot):

- `.tmp-<name>-<token>`: a file or directory being written;
- `.tmp-<name>-<token>.lock`: a file the live writer of that directory holds an `flock` on, so a
  cleaner can tell a dead writer (lock free) from a slow one (lock held), whatever their age;
- `.trash-<name>-<token>`: the previous version of a directory while it is being replaced.

Replacing an existing directory uses Linux `renameat2(RENAME_EXCHANGE)` where available — one
atomic swap. Elsewhere the old directory is renamed to a `.trash-` name and the new one renamed
into place; a crash between those two renames leaves the old version under the trash name, and
:func:`clean_stale_temps` (run whenever a `Workspace` opens) puts it back. Either way a crash at
any point leaves the old or the new complete directory, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tda_explorer.store.keys import to_jsonable

try:
    import fcntl
except ImportError:  # Windows: liveness falls back to the age of the leftovers
    fcntl = None  # type: ignore[assignment]

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LOCK_SUFFIX = ".lock"
STALE_AFTER_S = 15 * 60.0
"""Leftovers without a lock to ask (plain temp files) are removed once older than this."""

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_COMMIT_ATTEMPTS = 5
_TOKEN_BYTES = 6
_OURS = re.compile(r"\.(?:tmp|trash)-.+-(?:del)?[0-9a-f]{12}(?:\.lock)?")
"""Names this module creates; nothing else is ever cleaned."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically: `write(f)` fills a temp file that then replaces `path`.

    Args:
        path: The destination; its parent directory is created if needed.
        write: Called once with a binary file object open for writing.

    Returns:
        `path` as a `Path`.

    Raises:
        Exception: Whatever `write` or the filesystem raises; the temp file is then removed and an
            existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path.parent, path.name, suffix="", flags=os.O_WRONLY)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically replace `path` with `data` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace `path` with `text` encoded as `encoding` (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically replace `path` with `obj` as JSON (strict: no NaN/Infinity).

    `obj` is first normalised by :func:`tda_explorer.store.keys.to_jsonable` (numpy scalars, paths,
    tuples, dataclasses), so nothing is written if it cannot be serialised.

    Raises:
        ConfigError: `obj` holds a value with no JSON form.
    """
    text = json.dumps(to_jsonable(obj, path="json"), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name and move it to `final` only if the block succeeds.

    Example:
        >>> with atomic_directory(root / "runs" / key) as tmp:  # doctest: +SKIP
        ...     torch.save(state, tmp / "seed0.pt")

    Args:
        final: Where the finished directory goes. An existing directory there is replaced as a
            whole when the block exits normally, and left untouched if it raises.

    Yields:
        A fresh, empty temp directory next to `final` (same parent, name starting with `.tmp-`).
    """
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock, lock_fd = _create_temp(parent, final.name, suffix=LOCK_SUFFIX, flags=os.O_RDWR)
    try:
        if fcntl is not None:  # blocking: a cleaner may hold it for an instant while it checks
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        stem = lock.name[: -len(LOCK_SUFFIX)]
        tmp = parent / stem
        os.mkdir(tmp)
        try:
            yield tmp
            _fsync_tree(tmp)
            _commit(tmp, final, parent / (TRASH_PREFIX + stem[len(TMP_PREFIX) :]))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(lock_fd)


def remove_directory(path: str | Path) -> bool:
    """Delete a directory so that readers see it whole or gone: rename it to a `.tmp-` name, then delete.

    A crash during the deletion leaves only a lock-less `.tmp-` leftover that
    :func:`clean_stale_temps` removes once stale.

    Returns:
        False if `path` did not exist.
    """
    path = Path(path)
    doomed = path.parent / f"{TMP_PREFIX}{path.name}-del{secrets.token_hex(_TOKEN_BYTES)}"
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def clean_stale_temps(root: str | Path, max_age_s: float = STALE_AFTER_S, max_depth: int = 2) -> list[Path]:
    """Remove leftovers of interrupted writes under `root`; restore directories a crash left in trash.

    A `.tmp-` directory whose writer's lock is free (the writer died) is removed at once; one whose
    lock is held is left alone, however old. Leftovers with no lock to ask (temp files) are removed
    once older than `max_age_s`. A `.trash-<name>-…` directory is the previous version of `<name>`:
    it is deleted if `<name>` exists, and renamed back to `<name>` if the replacement never arrived.

    Args:
        root: The directory to clean (a workspace root).
        max_age_s: Age (by modification time) after which lock-less leftovers count as stale.
        max_depth: How many directory levels below `root` to scan (`root/kind/key` is depth 2).

    Returns:
        The paths removed or restored.
    """
    done: list[Path] = []
    now = time.time()
    for directory in _dirs_to_scan(Path(root), max_depth):
        try:
            entries = sorted(
                (e for e in os.scandir(directory) if _OURS.fullmatch(e.name)), key=lambda e: e.name
            )
        except OSError:
            continue
        for e in entries:  # trash first: restoring needs the writer's lock file still in place
            if e.name.startswith(TRASH_PREFIX) and _is_stale(e, now, max_age_s):
                done.append(_settle_trash(Path(e.path)))
        for e in entries:
            if not e.name.startswith(TMP_PREFIX) or e.name.endswith(LOCK_SUFFIX):
                continue
            if _is_stale(e, now, max_age_s):
                _remove(Path(e.path))
                _remove(_lock_for(e.name, directory))
                done.append(Path(e.path))
        for e in entries:  # locks left behind by a writer that died before making its directory
            if e.name.endswith(LOCK_SUFFIX) and e.name.startswith(TMP_PREFIX) and os.path.lexists(e.path):
                if _writer_alive(Path(e.path)) is not True and _age(e, now) > max_age_s:
                    _remove(Path(e.path))
    return done


# --- internals ---------------------------------------------------------------------------------


def _create_temp(parent: Path, name: str, suffix: str, flags: int) -> tuple[Path, int]:
    """Create `parent/.tmp-<name>-<token><suffix>` exclusively; return its path and an open fd."""
    while True:
        path = parent / f"{TMP_PREFIX}{name}-{secrets.token_hex(_TOKEN_BYTES)}{suffix}"
        try:
            return path, os.open(path, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _commit(tmp: Path, final: Path, trash: Path) -> None:
    """Move the finished `tmp` to `final`, replacing an existing directory as a whole."""
    for _ in range(_COMMIT_ATTEMPTS):
        try:
            os.rename(tmp, final)  # POSIX: also replaces an *empty* directory
            break
        except OSError as exc:
            if not os.path.lexists(final):
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue  # another writer's version came and went; try again
                raise
        if _exchange(tmp, final):  # one atomic swap; tmp now holds the old version
            shutil.rmtree(tmp, ignore_errors=True)
            break
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, final)
        except OSError:
            with contextlib.suppress(OSError):
                os.rename(trash, final)  # put the old version back
            continue
        shutil.rmtree(trash, ignore_errors=True)
        break
    else:
        raise OSError(f"could not move {tmp} into place at {final} after {_COMMIT_ATTEMPTS} attempts")
    _fsync_dir(final.parent)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux `renameat2`); False if unsupported or it failed."""
    fn = _renameat2()
    if fn is None:
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file under `root`, then every directory, deepest first."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _dirs_to_scan(root: Path, max_depth: int) -> Iterator[Path]:
    level = [root]
    for depth in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            yield d
            if depth < max_depth:
                with contextlib.suppress(OSError):
                    nxt.extend(
                        Path(e.path)
                        for e in os.scandir(d)
                        if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                    )
        level = nxt


def _lock_for(entry_name: str, directory: str | Path) -> Path:
    """The lock file of a `.tmp-<name>-<token>` or `.trash-<name>-<token>` entry."""
    prefix = TRASH_PREFIX if entry_name.startswith(TRASH_PREFIX) else TMP_PREFIX
    return Path(directory) / f"{TMP_PREFIX}{entry_name[len(prefix) :]}{LOCK_SUFFIX}"


def _writer_alive(lock: Path) -> bool | None:
    """True if someone holds `lock`, False if it is free, None if unknown (no file or no flock)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _age(entry: os.DirEntry, now: float) -> float:
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _is_stale(entry: os.DirEntry, now: float, max_age_s: float) -> bool:
    alive = _writer_alive(_lock_for(entry.name, os.path.dirname(entry.path)))
    if alive is not None:
        return not alive
    return _age(entry, now) > max_age_s


def _settle_trash(trash: Path) -> Path:
    """Delete a stale trash directory, or restore it if its destination is missing."""
    stem = trash.name[len(TRASH_PREFIX) :]
    final = trash.parent / stem.rsplit("-", 1)[0]
    if not os.path.lexists(final):
        with contextlib.suppress(OSError):
            os.rename(trash, final)
            _fsync_dir(trash.parent)
            return final
    _remove(trash)
    return trash


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
