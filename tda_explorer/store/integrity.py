"""Content checksums of artifacts: recorded when an artifact is written, verified when a file is loaded.

When `Workspace.write` commits an artifact it hashes every file in it (SHA-256) and records the digests
in its `meta.json`, together with a digest of the metadata itself:

    "checksums": {"sha256": {"scores.npy": "<64 hex>", "sub/x.pt": "..."}},
    "meta_sha256": "<64 hex of the canonical JSON of the other meta fields>"

`load_array` / `load_tensors` check a file against the digest in the `meta.json` of its artifact before
reading (or memory-mapping) it, and `Workspace.meta` checks `meta_sha256`; a mismatch raises
`ArtifactError` naming the artifact, the file and how to recompute it.

Cost: a file is hashed at most once per process per version on disk — digests are cached by
`(device, inode, size, mtime_ns, ctime_ns)`, so the write path's digest is reused when the same process
loads the file it has just written, and repeated loads cost one `stat`. A new process hashes a file on
its first load (SHA-256 runs at about 1-2 GB/s: ~0.05 s for a 64 MB `[4000, 4000]` float32 score matrix).

Artifacts written before checksums existed have no `checksums` entry: they load unverified. A file that
is not listed in a `checksums` entry (added to the folder afterwards) is also loaded unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from tda_explorer.errors import ArtifactError
from tda_explorer.store.kinds import artifact_kind

META_FILE = "meta.json"
CHECKSUMS = "checksums"
META_DIGEST = "meta_sha256"
ALGORITHM = "sha256"
_CHUNK = 1 << 20
_MAX_CACHE = 4096
_KEY_NAME = re.compile(r"[0-9a-f]{16}")

_cache: dict[tuple[int, ...], str] = {}
_sound_metas: set[tuple[int, ...]] = set()
"""Versions (stat keys) of meta files whose `meta_sha256` was already checked in this process."""
_lock = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's content, cached per process by the file's identity and times.

    Args:
        path: A regular file.

    Returns:
        64 lowercase hex characters.

    Raises:
        OSError: The file cannot be read.
    """
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        key = _stat_key(before)
        with _lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        digest = h.hexdigest()
        if _stat_key(os.fstat(f.fileno())) == key:  # not modified while we read it
            with _lock:
                if len(_cache) >= _MAX_CACHE:
                    _cache.clear()
                _cache[key] = digest
    return digest


def tree_digests(root: str | Path) -> dict[str, str]:
    """Digests of every regular file under `root` except its `meta.json`, by POSIX relative path."""
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == META_FILE or p.is_symlink() or not p.is_file():
                continue
            out[rel] = file_digest(p)
    return out


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `meta` without its own `meta_sha256` field."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(meta: dict[str, Any], directory: str | Path) -> dict[str, Any]:
    """Return `meta` with the checksums of the files in `directory` and its own digest added."""
    sealed = {**meta, CHECKSUMS: {ALGORITHM: tree_digests(directory)}}
    sealed[META_DIGEST] = meta_digest(sealed)
    return sealed


def how_to_recompute(directory: str | Path) -> str:
    """The fix for a damaged artifact folder: delete it and rerun the step that wrote it."""
    directory = Path(directory)
    step = artifact_kind(directory.parent.name).recompute
    return f"Delete the folder {directory} and {step}."


def check_meta(meta: dict[str, Any], file: Path) -> None:
    """Raise ArtifactError if `meta` carries a `meta_sha256` that does not match its content."""
    stored = meta.get(META_DIGEST)
    if stored is None:
        return  # written before checksums existed
    if not isinstance(stored, str) or meta_digest(meta) != stored:
        raise ArtifactError(
            f"Artifact {file.parent.parent.name}/{file.parent.name}: {file} does not match the checksum "
            f"recorded when it was written (it was edited or damaged on disk). {how_to_recompute(file.parent)}"
        )


def verify_file(path: str | Path) -> bool:
    """Check a file inside an artifact against the checksum recorded in the artifact's `meta.json`.

    The artifact is the nearest parent folder (up to three levels up) that holds a `meta.json`.

    Args:
        path: A file inside an artifact folder.

    Returns:
        True if the file was verified, False if there is nothing to verify it against (no artifact
        folder, an artifact written before checksums, or a file not listed in it).

    Raises:
        ArtifactError: The file's content differs from the recorded checksum, or the artifact's
            `meta.json` is unreadable or damaged.
    """
    path = Path(path)
    found = _artifact_of(path)
    if found is None:
        return False
    directory, meta = found
    listed = meta.get(CHECKSUMS)
    digests = listed.get(ALGORITHM) if isinstance(listed, dict) else None
    if not isinstance(digests, dict):
        return False
    expected = digests.get(path.relative_to(directory).as_posix())
    if expected is None:
        return False
    try:
        actual = file_digest(path)
    except OSError as exc:
        raise ArtifactError(f"Cannot read {path} ({exc}). {how_to_recompute(directory)}") from exc
    if actual != expected:
        raise ArtifactError(
            f"Artifact {directory.parent.name}/{directory.name}: file {path.name} does not match the checksum "
            f"recorded when it was written (sha256 {actual[:12]}…, expected {expected[:12]}…), so it was "
            f"changed or damaged on disk. {how_to_recompute(directory)}"
        )
    return True


def _artifact_of(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The artifact folder holding `path` and its meta (checked), or None outside any artifact."""
    directory = path.parent
    for _ in range(3):
        meta_file = directory / META_FILE
        if meta_file.is_file():
            # a folder named like an artifact key must hold a valid meta; elsewhere a foreign meta.json
            # (e.g. in a user's data folder) just means "not an artifact"
            meta = read_meta(meta_file, strict=_KEY_NAME.fullmatch(directory.name) is not None)
            return None if meta is None else (directory, meta)
        if directory.parent == directory:
            break
        directory = directory.parent
    return None


def read_meta(file: Path, *, strict: bool = True) -> dict[str, Any] | None:
    """Read and check an artifact's `meta.json` (JSON object with a `config`, matching `meta_sha256`).

    Args:
        file: The `meta.json`.
        strict: If False, a JSON file that is not an artifact meta (no `config`) gives None.

    Raises:
        ArtifactError: Unreadable, not JSON, not a meta file (if `strict`), or its content differs
            from its digest.
    """
    try:
        with open(file, "rb") as f:
            key = _stat_key(os.fstat(f.fileno()))
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"Cannot read {file} ({exc}). {how_to_recompute(file.parent)}") from exc
    if not isinstance(meta, dict) or "config" not in meta:
        if not strict:
            return None
        raise ArtifactError(f"{file} is not an artifact meta file. {how_to_recompute(file.parent)}")
    if not isinstance(meta.get("extra", {}), dict):
        raise ArtifactError(f"{file}: its extra metadata is not a mapping. {how_to_recompute(file.parent)}")
    with _lock:
        known = key in _sound_metas
    if not known:
        check_meta(meta, file)
        with _lock:
            if len(_sound_metas) >= _MAX_CACHE:
                _sound_metas.clear()
            _sound_metas.add(key)
    return meta
