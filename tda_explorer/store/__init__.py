"""The workspace store: config-keyed artifacts written atomically, tensor/array files, user flags.

Artifacts live in `<root>/<kind>/<key>/` with a `meta.json`; the key is `config_hash(config)`. Writes
go to a temp directory renamed into place when complete, so readers (the app, the CLI, another
process) never see half-written results. See `Workspace` for the API.
"""

from __future__ import annotations

from tda_explorer.store.arrays import (
    load_array,
    load_arrays,
    load_tensors,
    save_array,
    save_arrays,
    save_tensors,
)
from tda_explorer.store.atomic import (
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    remove_directory,
)
from tda_explorer.store.flags import FlagRecord, FlagsRecoveredWarning, FlagStore
from tda_explorer.store.keys import canonical_json, config_diff, config_hash, to_jsonable
from tda_explorer.store.kinds import ArtifactKind, artifact_kind, register_kind
from tda_explorer.store.workspace import (
    META_FILE,
    ArtifactWrite,
    Workspace,
    default_workspace,
    require_workspace,
)

__all__ = [
    "META_FILE",
    "ArtifactKind",
    "ArtifactWrite",
    "FlagRecord",
    "FlagStore",
    "FlagsRecoveredWarning",
    "Workspace",
    "artifact_kind",
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "clean_stale_temps",
    "config_diff",
    "config_hash",
    "default_workspace",
    "load_array",
    "load_arrays",
    "load_tensors",
    "register_kind",
    "remove_directory",
    "require_workspace",
    "save_array",
    "save_arrays",
    "save_tensors",
    "to_jsonable",
]
