"""The registry of artifact kinds: what a `<root>/<kind>/` folder holds and how to make it again.

Every kind of artifact the package writes has one `ArtifactKind`: its folder name under the workspace root,
the files each artifact of it must hold (checked when it is opened through `Workspace.cached`), how a value
is saved into / loaded from an artifact folder, and the step that recomputes it (named in the error a
damaged artifact raises; see `store.integrity`). Modules that own a kind register it when imported:

    MAP = register_kind(ArtifactKind("map", files=("coords.npy",), save=_save, load=_load,
                                     recompute="open the map again (it is cached by config)"))
    result = ws.cached(MAP.name, cfg, compute)   # save/load come from the registry

A kind nobody registered still works with explicit `save`/`load` (the checks are then skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tda_explorer.errors import ArtifactError

DEFAULT_RECOMPUTE = "rerun the step that computed it (it is cached by config)"

Save = Callable[[Path, Any], None]
"""`save(temp_dir, value)`: write the files of one artifact into its (temporary) folder."""
Load = Callable[[Path, dict[str, Any]], Any]
"""`load(folder, meta)`: the value of a complete artifact, from its folder and its checked `meta.json`."""


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of workspace artifact.

    Attributes:
        name: The kind, and its folder `<root>/<name>/` (letters, digits, `_.-`).
        files: Files (relative paths) every artifact of this kind holds; a missing one is damage.
        save: Default `save` of `Workspace.cached` for this kind (None: the caller passes one).
        load: Default `load` of `Workspace.cached` for this kind (None: the caller passes one).
        recompute: What to run to make a deleted artifact again (ends the damage message).
    """

    name: str
    files: tuple[str, ...] = ()
    save: Save | None = None
    load: Load | None = None
    recompute: str = DEFAULT_RECOMPUTE

    def check(self, directory: Path) -> None:
        """Raise ArtifactError naming the folder to delete if a file this kind always holds is missing."""
        missing = [f for f in self.files if not (directory / f).is_file()]
        if missing:
            raise ArtifactError(
                f"Artifact {self.name}/{directory.name} lacks {', '.join(missing)}. "
                f"Delete the folder {directory} and {self.recompute}."
            )


_KINDS: dict[str, ArtifactKind] = {}


def register_kind(kind: ArtifactKind) -> ArtifactKind:
    """Add (or replace, e.g. on a module reload) the registry entry of `kind.name`; returns `kind`."""
    _KINDS[kind.name] = kind
    return kind


def artifact_kind(name: str) -> ArtifactKind:
    """The registered kind `name`, or a bare entry (no files, save or load) for an unregistered one."""
    return _KINDS.get(name) or ArtifactKind(name)


def registered_kinds() -> dict[str, ArtifactKind]:
    """All registered kinds by name (a copy)."""
    return dict(_KINDS)


# Kinds whose artifacts are written outside `Workspace.cached` (a run is written seed by seed) register
# here only what makes the damage message useful.
register_kind(
    ArtifactKind(
        "runs",
        recompute="train the run again (`tda-explorer train ...` or the app's Setup page; finished "
        "seeds are reused)",
    )
)
register_kind(
    ArtifactKind("models", recompute="train the run again (`tda-explorer train ...` or the app's Setup page)")
)
register_kind(
    ArtifactKind(
        "scores",
        files=("scores.npy",),
        recompute="compute the scores again (`tda-explorer attribute ...` or the app's Attribution page)",
    )
)
