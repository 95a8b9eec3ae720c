"""Helpers shared by the loaders: seeded splits, label mapping, spec dicts, fingerprints, messages.

Not public API; the loaders in `builtins`, `user_files` and the registry use them.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError, DataError

SPEC_FIELDS: tuple[str, ...] = ("name", "path", "options", "noise_fraction", "noise_seed", "split_seed")
"""Keys of a dataset spec dict (see `registry.DatasetSpec.to_dict`)."""

DERIVED_SPEC_KEYS: tuple[str, ...] = ("fingerprint", "noise")
"""Keys a loader or `inject_label_noise` may add to a spec dict on top of `SPEC_FIELDS`."""


def jsonable(value: object) -> object:
    """`value` with tuples turned into lists (recursively), so that it equals its JSON round trip."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def spec_dict(name: str, path: str | Path | None, options: dict, split_seed: int) -> dict:
    """The spec dict of a freshly loaded (noise-free) dataset, shaped like `DatasetSpec.to_dict()`."""
    return {
        "name": name,
        "path": None if path is None else str(path),
        "options": jsonable(dict(options)),
        "noise_fraction": 0.0,
        "noise_seed": 0,
        "split_seed": int(split_seed),
    }


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """Return `value` as int if it is an integer >= `minimum`, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_fraction(value: object, name: str) -> float:
    """Return `value` as float if it lies in [0, 1), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}.")
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ConfigError(f"{name} must lie in [0, 1), got {value!r}.")
    return value


def split_by_counts(n: int, n_val: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint split of positions `0..n-1` into train / val / test.

    Args:
        n: number of examples.
        n_val: size of the validation part.
        n_test: size of the test part; the rest (at least one example) is train.
        seed: seed of the permutation (`numpy.random.default_rng(seed)`).

    Returns:
        `(train, val, test)`, each `int64 [size]`, sorted ascending (file order inside a split).
    """
    if n_val + n_test >= n:
        raise DataError(
            f"cannot split {n} examples into {n_val} validation + {n_test} test and a non-empty train part; "
            "ask for smaller validation/test parts or provide more data."
        )
    perm = np.random.default_rng(seed).permutation(n)
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return np.sort(train), np.sort(val), np.sort(test)


def split_by_fractions(
    n: int, val_fraction: float, test_fraction: float, seed: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split by fractions; a non-zero fraction gets at least one example. See `split_by_counts`."""
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction}); "
            "leave some data for training."
        )
    n_val = max(round(val_fraction * n), 1 if val_fraction > 0 else 0)
    n_test = max(round(test_fraction * n), 1 if test_fraction > 0 else 0)
    if n_val + n_test >= n:
        raise DataError(
            f"{where}: only {n} rows, too few for a train / validation / test split "
            f"(val_fraction={val_fraction}, test_fraction={test_fraction}); add rows or lower the fractions."
        )
    return split_by_counts(n, n_val, n_test, seed)


def make_splits(full: ExampleSet, parts: Sequence[np.ndarray], spec: dict) -> DatasetSplits:
    """Cut `full` into train / val / test at the given positions and attach `spec`."""
    base = full.name or "data"
    train, val, test = (
        full.subset(idx, name=f"{base}:{part}")
        for idx, part in zip(parts, ("train", "val", "test"), strict=True)
    )
    return DatasetSplits(train=train, val=val, test=test, spec=spec)


def map_labels(values: Sequence[object]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Map raw label values to `0..K-1` in sorted order of the unique values.

    Integral floats (e.g. `1.0`, what pandas makes of an int column) count as ints.
    Values that cannot be compared with each other are sorted by their string form.

    Returns:
        `(labels int64 [n], class_names)` with `class_names[k] = str(k-th sorted unique value)`.
    """
    clean = [int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v for v in values]
    clean = [v.item() if isinstance(v, np.generic) else v for v in clean]
    unique = list(dict.fromkeys(clean))
    try:
        unique.sort()
    except TypeError:
        unique.sort(key=str)
    code = {v: k for k, v in enumerate(unique)}
    labels = torch.tensor([code[v] for v in clean], dtype=torch.int64)
    return labels, tuple(str(v) for v in unique)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to `name` (case-insensitive first), or None if none is close."""
    choices = [str(c) for c in choices]
    for c in choices:
        if c.lower() == str(name).lower():
            return c
    lower = {c.lower(): c for c in reversed(choices)}  # first spelling wins on case clashes
    match = difflib.get_close_matches(str(name).lower(), list(lower), n=1, cutoff=0.5)
    return lower[match[0]] if match else None


def missing_column_message(file: Path, column: str, role: str, columns: Sequence[str]) -> str:
    """Message for a column that a file lacks: suggests the closest column and lists them all."""
    hint = closest(column, columns)
    suggestion = f" Did you mean {hint!r}?" if hint is not None else ""
    listed = ", ".join(repr(str(c)) for c in columns)
    return (
        f"{file.name}: no column {column!r} (given as {role}).{suggestion} "
        f"Available columns: {listed}. Pass one of these names. (file: {file.resolve()})"
    )


def fingerprint(paths: Iterable[Path], root: Path | None = None) -> str:
    """Short sha256 over the contents (and names relative to `root`) of the given files."""
    h = hashlib.sha256()
    for p in paths:
        if root is not None:
            h.update(str(p.relative_to(root).as_posix()).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]
