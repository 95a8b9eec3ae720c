"""Helpers shared by the loaders: seeded splits, label mapping, spec dicts, fingerprints, messages.

Not public API; the loaders in `builtins`, `user_files` and the registry use them.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import torch

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError, DataError

SPEC_FIELDS: tuple[str, ...] = ("name", "path", "options", "noise_fraction", "noise_seed", "split_seed")
"""Keys of a dataset spec dict (see `registry.DatasetSpec.to_dict`)."""

DERIVED_SPEC_KEYS: tuple[str, ...] = ("fingerprint", "noise", "columns")
"""Keys a loader or `inject_label_noise` may add to a spec dict on top of `SPEC_FIELDS` (`columns`:
the columns a user table's loader used, by role)."""


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
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split by fractions; a non-zero fraction gets at least one example.

    Stratified by `labels` (see `stratified_split`) when given, else a plain permutation
    (`split_by_counts`).
    """
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
    if labels is not None:
        return stratified_split(labels, n_val, n_test, seed)
    return split_by_counts(n, n_val, n_test, seed)


def make_splits(full: ExampleSet, parts: Sequence[np.ndarray], spec: dict) -> DatasetSplits:
    """Cut `full` into train / val / test at the given positions and attach `spec`."""
    base = full.name or "data"
    train, val, test = (
        full.subset(idx, name=f"{base}:{part}")
        for idx, part in zip(parts, ("train", "val", "test"), strict=True)
    )
    return DatasetSplits(train=train, val=val, test=test, spec=spec)


def map_labels(values: Sequence[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Map label strings to classes `0..K-1`; class names are the strings themselves.

    The rule (documented for users in `user_files`): labels are compared as numbers only when
    every value is a plain decimal number (`-3`, `07`, `1.0`, `2e3`; not `nan`, `inf`, `0x1F`,
    `1_000`) AND no two distinct strings denote the same number (`1` and `01`, or `1` and `1.0`,
    would). Then classes are ordered by value (`"3"` before `"10"`); otherwise the distinct
    strings are ordered as strings. Either way `class_names[k]` is the user's spelling.

    Args:
        values: one label string per example (already checked non-empty).

    Returns:
        `(labels int64 [n], class_names)`.
    """
    unique = list(dict.fromkeys(values))
    numbers = {v: decimal_number(v) for v in unique}
    parsed = [x for x in numbers.values() if x is not None]
    if len(parsed) == len(unique) and len(set(parsed)) == len(unique):
        unique.sort(key=lambda v: numbers[v])
    else:
        unique.sort()
    code = {v: k for k, v in enumerate(unique)}
    labels = torch.tensor([code[v] for v in values], dtype=torch.int64)
    return labels, tuple(unique)


DECIMAL_PATTERN = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
"""A plain decimal number: digits with an optional point and exponent (not `nan`, `inf`, `0x1F`, `1_000`)."""
_DECIMAL = re.compile(DECIMAL_PATTERN)


def decimal_number(text: str) -> Decimal | None:
    """The exact value of a plain decimal number (`"007"`, `"-1.50"`, `"2e3"`), else None."""
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


def _allocate(total: int, quota: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Integers `a` with `sum(a) == total`, `low <= a <= high` where possible, close to `quota`."""
    a = np.clip(np.floor(quota).astype(np.int64), low, high)
    while a.sum() < total:
        room = np.flatnonzero(a < high)
        if not len(room):
            break
        a[room[np.argmax(quota[room] - a[room])]] += 1
    while a.sum() > total:
        spare = np.flatnonzero(a > low)
        if not len(spare):
            spare = np.flatnonzero(a > 0)
        a[spare[np.argmax(a[spare] - quota[spare])]] -= 1
    return a


def stratified_split(
    labels: np.ndarray, n_val: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split of positions `0..n-1` keeping each class's share in every part.

    Exactly `n_val` / `n_test` positions go to validation / test (as `split_by_counts`). Each class
    gets about its share of both; a class with at least 3 examples (2 when one part is empty)
    gets at least one example in every non-empty part when the part is large enough to hold one
    of every class, and every class keeps at least one training example when possible.

    Args:
        labels: `int [n]` class of each position.
        n_val: size of the validation part.
        n_test: size of the test part.
        seed: seed of the per-class permutations (`numpy.random.default_rng(seed)`).

    Returns:
        `(train, val, test)`, each `int64 [size]`, sorted ascending (file order inside a split).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n_val + n_test >= n:
        return split_by_counts(n, n_val, n_test, seed)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    parts_needed = 1 + (n_val > 0) + (n_test > 0)
    keep = (sizes >= parts_needed).astype(np.int64)  # classes that can be in every part
    val = np.zeros_like(sizes)
    if n_val:
        high = np.maximum(sizes - 1 - (keep if n_test else 0), 0)
        val = _allocate(n_val, n_val * sizes / n, np.minimum(keep, high), high)
    test = np.zeros_like(sizes)
    if n_test:
        high = np.maximum(sizes - val - 1, 0)
        test = _allocate(n_test, n_test * sizes / n, np.minimum(keep, high), high)
    if val.sum() != n_val or test.sum() != n_test:  # too many tiny classes: fall back
        return split_by_counts(n, n_val, n_test, seed)
    out_val = [m[:v] for m, v in zip(members, val, strict=True)]
    out_test = [m[v : v + t] for m, v, t in zip(members, val, test, strict=True)]
    out_train = [m[v + t :] for m, v, t in zip(members, val, test, strict=True)]
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (out_train, out_val, out_test))


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
