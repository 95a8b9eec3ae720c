"""Typed method settings: one frozen dataclass per attributor, its defaults written once.

Each field is declared with `setting(default, help, ...)`; its metadata says what the app, the CLI and
the validation need:
- `help`: one line (the CLI's `--help`, the app's tooltip);
- `choices`: the allowed strings (numbers are checked by `range`); `open=True` when they are only
  suggestions (`params` also takes parameter-name prefixes, `seeds` an int or a list);
- `range`: `(low, high)` inclusive bounds for numbers (None = unbounded);
- `main=True`: shown in the app's settings form (the rest keep their defaults there);
- `key`: the name in score-artifact keys when it differs from the field's (renamed settings keep the
  cached scores computed under their old name).

`__post_init__` checks each value's type against its annotation, its choices and range, then the
subclass's `check()` (cross-field rules); lists are stored as tuples (the dataclass is frozen). A
settings object is also a read-only mapping of its JSON-able values, so `make_attributor(name,
**attributor.settings)` rebuilds an equal attributor. `build(**kwargs)` refuses an unknown name with the
valid ones and the closest match, and maps deprecated aliases (with a DeprecationWarning).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tda_explorer.errors import ConfigError

_TYPES = {"int", "float", "str", "bool", "None", "Sequence", "dict"}


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple = (),
    open: bool = False,
    range: tuple[float | None, float | None] | None = None,
    main: bool = False,
    key: str | None = None,
) -> Any:
    """A settings field (see the module docstring for the metadata)."""
    meta = {"help": help, "choices": tuple(choices), "open": open, "range": range, "main": main, "key": key}
    if isinstance(default, dict):  # a mutable default: each instance gets its own copy
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def annotation_kinds(annotation: str) -> set[str]:
    """`"int | Sequence[int] | None"` -> {"int", "Sequence", "None"} (the outer types of a union)."""
    kinds = set()
    for part in str(annotation).split("|"):
        name = part.strip().split("[")[0].split(".")[-1]
        kinds.add(name if name in _TYPES else "object")
    return kinds


def _kind_of(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "Sequence"
    return "object"


def _accepts(kinds: set[str], kind: str) -> bool:
    return "object" in kinds or kind in kinds or (kind == "int" and "float" in kinds)


def jsonable(value: Any) -> Any:
    """Tuples as lists, dataclasses and mappings as dicts (recursively); other values as they are."""
    if isinstance(value, MethodSettings):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class MethodSettings(Mapping):
    """Base of every method's settings dataclass (see the module docstring)."""

    #: Deprecated names still accepted by `build`: {old: new}.
    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            self._check_field(f, value)
        self.check()

    def _check_field(self, f: dataclasses.Field, value: Any) -> None:
        kind, kinds = _kind_of(value), annotation_kinds(f.type)
        meta = f.metadata
        choices = meta.get("choices", ())
        if not _accepts(kinds, kind):
            allowed = " or ".join(sorted(kinds - {"object"})).replace("Sequence", "a list")
            extra = f" (one of {list(choices)})" if choices else ""
            raise ConfigError(f"setting {f.name!r} must be {allowed}{extra}, got {value!r}.")
        if kind == "str" and choices and not meta.get("open") and value not in choices:
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"setting {f.name!r} must be one of {list(choices)}, got {value!r}{hint}.")
        bounds = meta.get("range")
        if bounds and kind in ("int", "float"):
            low, high = bounds
            if math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
                raise ConfigError(f"setting {f.name!r} must be in [{low}, {high}], got {value!r}.")

    def check(self) -> None:
        """Cross-field rules of a method (ConfigError); the per-field checks ran before."""

    # ------------------------------------------------------------------ mapping view and keys
    def as_dict(self) -> dict[str, Any]:
        """`{name: JSON-able value}` of every setting (what `**settings` unpacks)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def config_names(cls) -> dict[str, str]:
        """`{field name: its name in artifact keys}` for the renamed settings."""
        return {f.name: f.metadata["key"] for f in dataclasses.fields(cls) if f.metadata.get("key")}

    def config(self) -> dict[str, Any]:
        """The settings as they key score artifacts: `as_dict` with renamed settings under their old key."""
        keys = self.config_names()
        return {keys.get(k, k): v for k, v in self.as_dict().items()}

    def __getitem__(self, name: str) -> Any:
        return self.as_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    # ------------------------------------------------------------------ construction
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, method: str = "", **values: Any) -> MethodSettings:
        """Settings from keyword values; ConfigError naming the valid settings for an unknown one."""
        valid = cls.names()
        renamed = []
        for old, new in cls.ALIASES.items():
            if old in values:
                if new in values:
                    raise ConfigError(f"give {new!r} only ({old!r} is its deprecated name).")
                values[new] = values.pop(old)
                renamed.append(f"{old!r} is deprecated: use {new!r}")
        if renamed:
            where = method or cls.__name__
            warnings.warn(f"{where} settings: {'; '.join(renamed)}.", DeprecationWarning, stacklevel=4)
        for name in values:
            if name not in valid:
                close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(valid) or "(none)"
                raise ConfigError(
                    f"unknown setting {name!r} for method {method or cls.__name__!r}{hint}; valid settings: "
                    f"{listed}."
                )
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MethodSettings:
        """Settings from a score artifact's `config["method"]` (old key names mapped back, "method" ignored)."""
        names = {key: name for name, key in cls.config_names().items()}
        return cls(**{names.get(k, k): v for k, v in config.items() if k != "method"})

    def replace(self, **changes: Any) -> MethodSettings:
        """A copy with some settings changed (validated again)."""
        return type(self).build(
            "", **{**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes}
        )


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (every settings field has one)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
