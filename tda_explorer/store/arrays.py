"""Tensor and array files inside artifacts, written atomically and read without unpickling code.

- Tensors: `dict[str, Tensor]` saved with `torch.save`, loaded with `torch.load(weights_only=True)`,
  which refuses anything but tensors and plain containers — never arbitrary pickled objects.
- Arrays: numpy `.npy` files written and read with `allow_pickle=False`; read them memory-mapped
  with `mmap_mode="r"` to slice large score matrices without loading them.

Both loaders first check the file against the SHA-256 recorded in its artifact's `meta.json` (see
`store.integrity`; cached per process, and done before memory-mapping), so a damaged file raises
`ArtifactError` instead of loading different numbers.

`torch` is imported inside the functions so that importing the store stays light.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from tda_explorer.errors import ArtifactError
from tda_explorer.store.atomic import atomic_write
from tda_explorer.store.integrity import verify_file

if TYPE_CHECKING:
    from torch import Tensor

MmapMode = Literal["r", "r+", "w+", "c"] | None


def _named(directory: str | Path, name: str, suffix: str) -> Path:
    path = Path(directory) / name
    return path if path.suffix == suffix else path.with_name(path.name + suffix)


def _checked(path: str | Path, what: str) -> Path:
    """`path` as a Path once it exists and matches its artifact's checksum (else ArtifactError)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"{what} file {path} does not exist; recompute the artifact that should contain it."
        )
    verify_file(path)
    return path


def save_tensors(directory: str | Path, name: str, tensors: Mapping[str, Tensor]) -> Path:
    """Save named tensors to `directory/<name>.pt` atomically, detached and on the CPU.

    A tensor that is a view of a larger storage is copied first, so only its own elements are saved.

    Args:
        directory: Where to write (typically the temp dir of `Workspace.write`).
        name: File name; `.pt` is appended unless already there.
        tensors: Mapping of string names to tensors.

    Returns:
        The path written.

    Raises:
        ArtifactError: A key is not a string or a value is not a tensor.
    """
    import torch

    state: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            raise ArtifactError(
                f"save_tensors({name!r}): entry {k!r} is {type(t).__name__}; only str -> Tensor entries can "
                "be saved (load_tensors reads with weights_only=True). Convert it or store it in meta extra."
            )
        t = t.detach().cpu()
        if t.layout == torch.strided and (
            not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size()
        ):
            t = t.clone(memory_format=torch.contiguous_format)
        state[k] = t
    return atomic_write(_named(directory, name, ".pt"), lambda f: torch.save(state, f))


def load_tensors(path: str | Path, *, map_location: str = "cpu", mmap: bool = False) -> dict[str, Tensor]:
    """Load a file written by :func:`save_tensors` with `torch.load(weights_only=True)`.

    Args:
        path: The `.pt` file.
        map_location: Device to load onto (default `"cpu"`; move to the compute device afterwards).
        mmap: Memory-map the tensors' storage instead of reading it all.

    Returns:
        The dict of tensors.

    Raises:
        ArtifactError: The file is missing, differs from its artifact's recorded checksum, is corrupt, or
            holds anything but tensors (no code is run).
    """
    import torch

    path = _checked(path, "Tensor")
    try:
        obj = torch.load(path, weights_only=True, map_location=map_location, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(
            f"Cannot read {path} as plain tensors ({exc.__class__.__name__}: {str(exc)[:200]}). "
            "Files are loaded with weights_only=True and never unpickle arbitrary objects; "
            "delete the artifact directory and recompute it."
        ) from exc
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ArtifactError(
            f"{path} does not hold a dict of named tensors; it was not written by save_tensors."
        )
    return obj


def save_array(directory: str | Path, name: str, array: np.ndarray) -> Path:
    """Save a numpy array to `directory/<name>.npy` atomically (no pickles: object arrays refused).

    Args:
        directory: Where to write.
        name: File name; `.npy` is appended unless already there.
        array: Any array-like of a non-object dtype.

    Returns:
        The path written.

    Raises:
        ArtifactError: The array has an object dtype.
    """
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise ArtifactError(
            f"save_array({name!r}): object arrays need pickle, which artifacts never use; "
            "convert to a numeric or fixed-width string dtype first."
        )
    return atomic_write(_named(directory, name, ".npy"), lambda f: np.save(f, arr, allow_pickle=False))


def load_array(path: str | Path, *, mmap_mode: MmapMode = None) -> np.ndarray:
    """Load a `.npy` file with `allow_pickle=False`, optionally memory-mapped.

    Args:
        path: The `.npy` file.
        mmap_mode: `None` to read into memory, or a `numpy.load` mmap mode such as `"r"`.

    Returns:
        The array (a `numpy.memmap` when `mmap_mode` is given).

    Raises:
        ArtifactError: The file is missing, differs from its artifact's recorded checksum, is corrupt,
            or would need pickle.
    """
    path = _checked(path, "Array")
    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(
            f"Cannot read {path} as a plain .npy array ({exc}); "
            "delete the artifact directory and recompute it."
        ) from exc


def save_arrays(directory: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`save_array(directory, name, array)` for each `name -> array` (a `Workspace.cached` save)."""
    for name, array in arrays.items():
        save_array(directory, name, array)


def load_arrays(
    directory: str | Path, names: Iterable[str], *, mmap_mode: MmapMode = None
) -> dict[str, np.ndarray]:
    """`{name: load_array(directory / f"{name}.npy")}` for each name (checked like `load_array`)."""
    return {name: load_array(Path(directory) / f"{name}.npy", mmap_mode=mmap_mode) for name in names}
