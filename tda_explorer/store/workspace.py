"""The workspace: a directory of artifacts keyed by the config that produced them.

Layout:

    <root>/<kind>/<key>/          one artifact (e.g. kind "runs", key = config_hash(config))
    <root>/<kind>/<key>/meta.json {"kind", "key", "config", "created", "extra", "version": 1,
                                   "checksums": {"sha256": {file: digest}}, "meta_sha256": digest}
    <root>/exports/               user-facing exports (CSV, Parquet, ...)
    <root>/flags.sqlite           user flags on examples (see `FlagStore`), with its journal
    <root>/flags.sqlite.journal.jsonl  every flag operation, to rebuild a damaged database

An artifact directory is built under a temp name and renamed into place when complete, with
`meta.json` written last, so an artifact that is visible is complete (see `store.atomic`). The app
and the CLI share one workspace: whoever computes an artifact first, the other reuses it.

Integrity: `meta.json` records the SHA-256 of every file of the artifact and of itself (see
`store.integrity`); `meta`/`open` check the metadata, `load_array`/`load_tensors` check a file before
reading it, `verify` checks every file. Damage raises `ArtifactError` saying which folder to delete.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.store.arrays import load_array, load_tensors, save_array, save_tensors
from tda_explorer.store.atomic import (
    STALE_AFTER_S,
    atomic_directory,
    atomic_write_json,
    clean_stale_temps,
    remove_directory,
)
from tda_explorer.store.flags import FlagStore
from tda_explorer.store.integrity import META_FILE, read_meta, seal, verify_file
from tda_explorer.store.keys import config_diff, config_hash, to_jsonable
from tda_explorer.store.kinds import Load, Save, artifact_kind

ENV_VAR = "TDA_WORKSPACE"
META_VERSION = 1
EXPORTS = "exports"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ArtifactWrite:
    """The context manager returned by :meth:`Workspace.write`; enter it to get the temp dir.

    Attributes:
        kind: Artifact kind.
        key: The artifact's key (known before the block runs).
        path: Where the artifact will be once the block exits normally.
        config: The config in its JSON form, as stored in `meta.json`.
    """

    def __init__(self, workspace: Workspace, kind: str, config: Any, extra: dict[str, Any] | None) -> None:
        self.config = to_jsonable(config)
        self.kind = kind
        self.key = config_hash(self.config)
        self.path = workspace.path(kind, self.key)
        self._extra = {} if extra is None else extra
        to_jsonable(self._extra, path="extra", nonfinite="null")  # fail now rather than after the work
        self._cm: contextlib.AbstractContextManager[Path] | None = None

    def __enter__(self) -> Path:
        if self._cm is not None:
            raise ArtifactError(
                f"This write of {self.kind}/{self.key} was already used; call Workspace.write again."
            )
        self._cm = self._writing()
        return self._cm.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        if self._cm is None:
            raise ArtifactError("ArtifactWrite exited without being entered.")
        return self._cm.__exit__(*exc_info)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Path]:
        with atomic_directory(self.path) as tmp:
            yield tmp
            if (tmp / META_FILE).exists():
                raise ArtifactError(f"{META_FILE} is reserved for the workspace; name the file differently.")
            meta = {
                "kind": self.kind,
                "key": self.key,
                "config": self.config,
                "created": datetime.now(UTC).isoformat(timespec="microseconds"),
                "extra": to_jsonable(self._extra, path="extra", nonfinite="null"),
                "version": META_VERSION,
            }
            atomic_write_json(tmp / META_FILE, seal(meta, tmp))


class Workspace:
    """A directory of config-keyed artifacts, shared by the app and the CLI.

    Opening a workspace creates its root if needed and cleans leftovers of interrupted writes
    (temp directories whose writer died; see `store.atomic.clean_stale_temps`).

    Args:
        root: The workspace directory; default `$TDA_WORKSPACE`, else `./workspace`.
        stale_after_s: Age after which lock-less temp leftovers are removed when opening.

    Example:
        >>> ws = Workspace(tmp_path)  # doctest: +SKIP
        >>> if not ws.exists("runs", cfg):
        ...     with ws.write("runs", cfg, extra={"seconds": 12.5}) as d:
        ...         save_tensors(d, "seed0", model.state_dict())
        >>> run_dir = ws.open("runs", cfg)
        >>> coords = ws.cached("map", cfg, compute)  # exists -> compute -> write -> load, in one call
    """

    save_tensors = staticmethod(save_tensors)
    load_tensors = staticmethod(load_tensors)
    save_array = staticmethod(save_array)
    load_array = staticmethod(load_array)

    def __init__(self, root: str | Path | None = None, *, stale_after_s: float = STALE_AFTER_S) -> None:
        if root is None:
            root = os.environ.get(ENV_VAR) or "workspace"
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.root, max_age_s=stale_after_s)
        self._flags: FlagStore | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # --- names ---------------------------------------------------------------------------------

    def key(self, kind: str, config: Any) -> str:
        """The key an artifact of `kind` made from `config` has (16 hex chars; see `config_hash`)."""
        _check_name(kind, "kind")
        return config_hash(config)

    def path(self, kind: str, key: str) -> Path:
        """The directory of artifact `kind/key` (whether or not it exists)."""
        _check_name(kind, "kind")
        _check_name(key, "key")
        return self.root / kind / key

    @property
    def exports_dir(self) -> Path:
        """`<root>/exports`, created if missing."""
        d = self.root / EXPORTS
        d.mkdir(exist_ok=True)
        return d

    # --- artifacts -----------------------------------------------------------------------------

    def exists(self, kind: str, config: Any) -> bool:
        """True if a complete artifact of `kind` for `config` is in the workspace."""
        return (self.path(kind, self.key(kind, config)) / META_FILE).is_file()

    def write(self, kind: str, config: Any, extra: dict[str, Any] | None = None) -> ArtifactWrite:
        """Write an artifact: the block fills a temp dir that becomes `<root>/<kind>/<key>` on success.

        On normal exit `meta.json` is written and the directory renamed into place, atomically
        replacing an older artifact with the same key; if the block raises (or the process dies),
        nothing becomes visible and an older artifact stays as it was.

        Args:
            kind: Artifact kind, e.g. `"runs"`, `"scores"` (letters, digits, `_.-`).
            config: Everything that determines the artifact (mapping or dataclass); its hash is the key.
            extra: Metadata that does not change the result (timings, versions). The dict is read when
                the block exits, so it may be filled inside the block. NaN/Infinity are stored as null.

        Returns:
            A context manager yielding the temp dir `Path`; its `.key` and `.path` give the final key
            and directory.

        Raises:
            ConfigError: `config` or `extra` holds a value with no JSON form.
        """
        _check_name(kind, "kind")
        return ArtifactWrite(self, kind, config, extra)

    def cached(
        self,
        kind: str,
        config: Any,
        compute: Callable[[], Any],
        save: Save | None = None,
        load: Load | None = None,
        *,
        extra: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    ) -> Any:
        """The artifact of `kind` made from `config`, computed and written first if it is missing.

        `compute()` runs only when no complete artifact exists; its value is written atomically by
        `save(temp_dir, value)` (see `write`), then every caller gets `load(folder, meta)` of the stored
        artifact, so a first call and a later one return the same thing. `save`/`load` default to those
        of the kind's registry entry (`store.kinds`), which also names the files checked on opening.

        Args:
            kind: Artifact kind (its folder name).
            config: Everything that determines the artifact; its hash is the key.
            compute: Makes the value (called at most once per call, not at all when cached).
            save, load: Override the registered ones (required for an unregistered kind).
            extra: Metadata that does not change the result, or `extra(value)` computing it.

        Returns:
            `load(folder, meta)`.

        Raises:
            ConfigError: No `save`/`load` given nor registered for `kind`.
            ArtifactError: The stored artifact is damaged (edited, truncated, a file missing) or was made
                from a different config; it is not recomputed silently: the message names the folder to
                delete, after which the next call recomputes it.
        """
        spec = artifact_kind(kind)
        save, load = save or spec.save, load or spec.load
        if save is None or load is None:
            raise ConfigError(
                f"Workspace.cached({kind!r}): no save/load given and none registered for this kind "
                "(see store.kinds.register_kind)."
            )
        if not self.exists(kind, config):
            value = compute()
            with self.write(kind, config, extra=extra(value) if callable(extra) else extra) as d:
                save(d, value)
        path = self.open(kind, config)
        spec.check(path)
        return load(path, self.meta(kind, path.name))

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        """Read the `meta.json` of artifact `kind/key` (checked against its `meta_sha256`).

        Raises:
            ArtifactError: The artifact is missing, or its meta file is unreadable or damaged (the
                message says which folder to delete and how to recompute it).
        """
        file = self.path(kind, key) / META_FILE
        if not file.is_file():
            raise ArtifactError(
                f"No artifact {kind}/{key} in workspace {self.root}. Compute it first, or open the workspace "
                f"that has it (Workspace(root=...) or ${ENV_VAR})."
            )
        return read_meta(file)

    def verify(self, kind: str, key: str) -> int:
        """Check every file of artifact `kind/key` against the checksums in its `meta.json`.

        Loading checks each file lazily anyway; this checks them all at once (e.g. before sharing a
        workspace).

        Returns:
            The number of files verified (0 for an artifact written before checksums existed).

        Raises:
            ArtifactError: The meta or a file is damaged, or a listed file is missing.
        """
        meta = self.meta(kind, key)
        directory = self.path(kind, key)
        digests = (meta.get("checksums") or {}).get("sha256") or {}
        for rel in digests:
            if not (directory / rel).is_file():
                raise ArtifactError(
                    f"Artifact {kind}/{key}: file {rel} listed in its meta.json is missing. "
                    f"Delete the folder {directory} and recompute it."
                )
            verify_file(directory / rel)
        return len(digests)

    def open(self, kind: str, config: Any) -> Path:
        """Return the directory of the artifact of `kind` made from `config`.

        Raises:
            ArtifactError: No such artifact (compute it first), or its stored config differs from
                `config` (the message lists the fields and the fix).
        """
        requested = to_jsonable(config)
        key = config_hash(requested)
        directory = self.path(kind, key)
        if not (directory / META_FILE).is_file():
            raise ArtifactError(
                f"No {kind!r} artifact for this config (key {key}) in workspace {self.root}. "
                f"Compute it first (the step that writes {kind!r}), or open the workspace that has it "
                f"(Workspace(root=...) or ${ENV_VAR})."
            )
        meta = self.meta(kind, key)
        diff = config_diff(meta["config"], requested)
        if meta.get("kind", kind) != kind:
            diff.insert(0, f"kind: stored {meta.get('kind')!r}, requested {kind!r}")
        if diff:
            raise ArtifactError(
                f"Artifact {directory} was made with a different config than the one requested:\n  "
                + "\n  ".join(diff)
                + f"\nDelete {directory} to recompute it with the requested config, "
                "or change the config back."
            )
        return directory

    def list(self, kind: str) -> list[dict[str, Any]]:
        """The metas of all complete artifacts of `kind`, newest first (by `created`).

        Unreadable artifacts are skipped with a warning; `scan` returns them with the reason.
        """
        metas, broken = self.scan(kind)
        for _key, reason in broken:
            warnings.warn(f"Skipping unreadable artifact: {reason}", stacklevel=2)
        return metas

    def scan(self, kind: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """All artifacts of `kind`: the readable metas (newest first) and `(key, reason)` of the others.

        A folder without `meta.json` is not an artifact (never completed) and is not reported.
        """
        base = self.root / _check_name(kind, "kind")
        if not base.is_dir():
            return [], []
        metas, broken = [], []
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir() or not _NAME.fullmatch(entry.name):
                continue
            try:
                metas.append(self.meta(kind, entry.name))
            except ArtifactError as exc:
                if (Path(entry.path) / META_FILE).exists():
                    broken.append((entry.name, str(exc)))
        metas.sort(key=lambda m: (str(m.get("created", "")), str(m.get("key", ""))), reverse=True)
        return metas, broken

    def list_runs(self) -> list[dict[str, Any]]:
        """The metas of all trained runs, newest first (`list("runs")`)."""
        return self.list("runs")

    def delete(self, kind: str, key: str) -> bool:
        """Delete artifact `kind/key` (readers see it whole or gone). Returns False if it did not exist."""
        return remove_directory(self.path(kind, key))

    # --- flags ---------------------------------------------------------------------------------

    def flags(self) -> FlagStore:
        """The workspace's flag database, `<root>/flags.sqlite`."""
        if self._flags is None:
            self._flags = FlagStore(self.root / "flags.sqlite")
        return self._flags


def default_workspace(workspace: Workspace | None = None) -> Workspace:
    """`workspace`, else the default one (`Workspace()`: `$TDA_WORKSPACE`, else `./workspace`).

    The one place a default workspace is chosen, used only by the public entry points documented with
    one (`train_run`, `import_run`, `import_hf_run`, `load_run`, `compute_scores`); the CLI and the app
    open theirs. Everything below them takes the workspace as an argument (`require_workspace`).
    """
    return Workspace() if workspace is None else workspace


def require_workspace(workspace: Workspace | None, caller: str) -> Workspace:
    """`workspace`, or ConfigError if the caller of `caller` passed none (the core never picks one)."""
    if not isinstance(workspace, Workspace):
        raise ConfigError(
            f"{caller} caches its results in a workspace: pass workspace=Workspace(root) (got "
            f"{type(workspace).__name__}). The core never opens one itself; train_run, import_run, load_run and "
            "compute_scores default to $TDA_WORKSPACE or ./workspace."
        )
    return workspace


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or (what == "kind" and name == EXPORTS):
        raise ConfigError(
            f"Artifact {what} {name!r} is not allowed: use letters, digits, '_', '.', '-' "
            f"(not starting with a dot){' and not ' + repr(EXPORTS) if what == 'kind' else ''}."
        )
    return name
