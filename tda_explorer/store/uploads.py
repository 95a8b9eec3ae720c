"""Files a user uploads through the app, kept in `<workspace>/uploads/` under a content-addressed name.

Names are sanitised (no directories, no traversal), size is capped, and the write is atomic; the same
content uploaded twice maps to the same path, so cached runs on it are reused.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tda_explorer.errors import DataError
from tda_explorer.store.atomic import atomic_write_bytes

UPLOAD_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")  # what the table loaders read
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")  # what `import_run` reads
MAX_NAME = 120
DEFAULT_MAX_BYTES = 200 * 2**20


def safe_filename(name: str) -> str:
    """The last path component of `name` with only `[A-Za-z0-9._-]` kept (never empty, never hidden), at most
    `MAX_NAME` characters: a longer name is cut before its extension, which is kept."""
    base = re.split(r"[\\/]", name)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".") or "upload"
    if len(cleaned) <= MAX_NAME:
        return cleaned
    suffix = Path(cleaned).suffix
    if not suffix or len(suffix) > 16:
        return cleaned[:MAX_NAME]
    return cleaned[: MAX_NAME - len(suffix)] + suffix


def save_upload(
    directory: str | Path,
    name: str,
    data: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    suffixes: tuple[str, ...] = UPLOAD_SUFFIXES,
) -> Path:
    """Store uploaded bytes as `<directory>/<sha256[:12]>-<safe name>` and return the path.

    Args:
        suffixes: the accepted file types (tables by default; `WEIGHT_SUFFIXES` for model weights).

    Raises:
        DataError: the file is empty, larger than `max_bytes`, or not a supported type.
    """
    safe = safe_filename(name)
    suffix = Path(safe).suffix.lower()
    if suffixes != UPLOAD_SUFFIXES and suffix not in suffixes:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(none)'}; upload a {', '.join(suffixes)} file."
        )
    if suffix not in suffixes:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(none)'}; upload a {', '.join(UPLOAD_SUFFIXES)} file "
            "(a text dataset is a table with a text column), or give the path of an image folder instead."
        )
    if not data:
        raise DataError(
            f"{name}: the file is empty; upload a file with a header and at least one row per class."
        )
    if len(data) > max_bytes:
        raise DataError(
            f"{name}: {len(data) / 2**20:.1f} MiB is over the upload limit of {max_bytes / 2**20:.0f} MiB; "
            "give its path on this machine instead."
        )
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = Path(directory) / f"{digest}-{safe}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path
