"""Artifact keys: a stable hash of the configuration that produced an artifact.

The key of a config is the first 16 hex characters of the SHA-256 of its canonical JSON
(`sort_keys=True`, `separators=(",", ":")`, no NaN/Infinity). Before hashing, values are
normalised by :func:`to_jsonable`:

- tuples, lists and numpy arrays become lists; sets become lists sorted by their canonical JSON;
- dataclass instances become dicts of their fields (like `dataclasses.asdict`; the class name is not
  part of the key — the artifact kind already namespaces it);
- `pathlib` paths become POSIX strings; enums become their value;
- numpy scalars become the matching Python scalar;
- dict keys must be strings (ints are accepted and turned into strings when that creates no clash).

The hash is **type-aware**: `1`, `1.0` and `True` are three different values (JSON writes them as
`1`, `1.0` and `true`), and so are `0.0` and `-0.0`. A config that switches a field from int to float
therefore misses the cache rather than silently reusing a result; config dataclasses should coerce
their fields in `__post_init__` so the same setting always has the same type.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from tda_explorer.errors import ConfigError

KEY_LENGTH = 16
"""Number of hex characters of the SHA-256 kept in a key (64 bits)."""


def to_jsonable(obj: Any, *, path: str = "config", nonfinite: str = "error") -> Any:
    """Return `obj` as plain JSON values (dict, list, str, int, float, bool, None).

    Args:
        obj: The value to convert; see the module docstring for the rules.
        path: Name of `obj` used in error messages; nested values extend it (`config.optim.betas[1]`).
        nonfinite: What to do with NaN and +-Infinity: `"error"` (raise) or `"null"` (store None).

    Returns:
        A fresh structure of JSON-able Python values.

    Raises:
        ConfigError: A value (named by its key path) has no JSON form, or is NaN/Infinity when
            `nonfinite="error"`.
    """
    if obj is None or isinstance(obj, str | bool):
        return obj.value if isinstance(obj, enum.Enum) else obj
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, path=path, nonfinite=nonfinite)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _finite(float(obj), path, nonfinite)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), path=path, nonfinite=nonfinite)
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise ConfigError(
                f"{path}: object arrays cannot be part of a config; pass a list of plain values."
            )
        return to_jsonable(obj.tolist(), path=path, nonfinite=nonfinite)
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return _mapping(fields, path, nonfinite)
    if isinstance(obj, Mapping):
        return _mapping(obj, path, nonfinite)
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, path=f"{path}[{i}]", nonfinite=nonfinite) for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        items = [to_jsonable(v, path=f"{path}{{}}", nonfinite=nonfinite) for v in obj]
        return sorted(items, key=canonical_json)
    raise ConfigError(
        f"{path}: a {type(obj).__name__} ({obj!r:.80}) has no JSON form, so it cannot be part of a config. "
        "Use numbers, strings, bools, None, lists, dicts, paths or dataclasses of those."
    )


def _finite(value: float, path: str, nonfinite: str) -> float | None:
    if math.isfinite(value):
        return value
    if nonfinite == "null":
        return None
    raise ConfigError(f"{path}: {value} is not allowed in a config (JSON has no NaN/Infinity); use None.")


def _mapping(obj: Mapping, path: str, nonfinite: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(k, bool) or not isinstance(k, str | int | np.integer):
            raise ConfigError(f"{path}: key {k!r} is a {type(k).__name__}; config keys must be strings.")
        name = str(k)
        if name in out:
            raise ConfigError(f"{path}: keys {k!r} and {name!r} clash once written as JSON strings.")
        out[name] = to_jsonable(v, path=f"{path}.{name}", nonfinite=nonfinite)
    return out


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of an already JSON-able value (sorted keys, no spaces, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Mapping[str, Any] | Any) -> str:
    """Return the artifact key of a config: 16 hex chars of the SHA-256 of its canonical JSON.

    Args:
        config: A mapping or a dataclass instance (nested values follow :func:`to_jsonable`).

    Returns:
        A 16-character lowercase hex string; equal configs (up to dict order) give equal keys.

    Raises:
        ConfigError: The config holds a value with no JSON form (the message names its key path).
    """
    text = canonical_json(to_jsonable(config))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def config_diff(stored: Any, requested: Any, path: str = "") -> list[str]:
    """List the differences between two JSON-able configs, one line per differing field.

    Args:
        stored: The config saved with an artifact.
        requested: The config asked for now (same JSON-able form).
        path: Prefix of the field names (used by the recursion).

    Returns:
        Lines like `"optim.lr: stored 0.1, requested 0.2"`; empty if the configs are equal.
    """
    if isinstance(stored, dict) and isinstance(requested, dict):
        lines: list[str] = []
        for k in sorted(set(stored) | set(requested)):
            sub = f"{path}.{k}" if path else k
            if k not in stored:
                lines.append(f"{sub}: not in the stored config, requested {_short(requested[k])}")
            elif k not in requested:
                lines.append(f"{sub}: stored {_short(stored[k])}, missing from the requested config")
            else:
                lines.extend(config_diff(stored[k], requested[k], sub))
        return lines
    if canonical_json(stored) == canonical_json(requested):
        return []
    return [f"{path or '<config>'}: stored {_short(stored)}, requested {_short(requested)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
