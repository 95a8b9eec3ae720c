"""What each method's settings are, read from its settings dataclass (`method_settings`), for the front ends.

`method_fields(method)` lists every setting (name, default, help, choices, range); `main_fields(method)`
the ones the app's form shows (fields marked `main`, and AirRep's dotted nested knobs);
`settings_help(methods)` the text the CLI's `--help` prints. Nothing here holds a default: they are
read from the dataclasses, so the app, the CLI and Python show the same values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tda_explorer.attributors.method_settings import METHOD_SETTINGS
from tda_explorer.attributors.settings import annotation_kinds, default_of
from tda_explorer.errors import ConfigError


@dataclass(frozen=True)
class SettingInfo:
    """One setting of a method.

    Attributes:
        name: Keyword name (`make_attributor(method, name=...)`, `--name` / `--set name=...` on the CLI);
            dotted ("data.n_subsets") for a field of a nested settings dict.
        default: Its default value.
        help: One line.
        kind: "choice" (a closed set of strings), "int", "float", "bool" or "json" (anything else:
            lists, dicts, open strings).
        choices: Allowed (or, for an open setting, suggested) strings.
        range: `(low, high)` bounds of a number (None = unbounded), or None.
    """

    name: str
    default: Any
    help: str
    kind: str
    choices: tuple = ()
    range: tuple | None = None


def settings_class(method: str):
    """The settings dataclass of a registered method (ConfigError naming the methods otherwise)."""
    if method not in METHOD_SETTINGS:
        raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHOD_SETTINGS)}.")
    return METHOD_SETTINGS[method]


def _kind(kinds: set[str], default: Any, choices: tuple) -> str:
    if "float" in kinds:
        return "float"
    if "int" in kinds and not isinstance(default, str):
        return "int"
    if kinds == {"bool"}:
        return "bool"
    if choices and isinstance(default, str) and default in choices:
        return "choice"
    return "json"


def _info(f: dataclasses.Field) -> SettingInfo:
    meta, default = f.metadata, default_of(f)
    choices = tuple(meta.get("choices", ()))
    return SettingInfo(f.name, default, meta.get("help", ""), _kind(annotation_kinds(f.type), default, choices),
                       choices, meta.get("range"))  # fmt: skip


def method_fields(method: str) -> list[SettingInfo]:
    """Every setting of `method`, in declaration order."""
    return [_info(f) for f in dataclasses.fields(settings_class(method))]


def main_fields(method: str) -> list[SettingInfo]:
    """The settings the app's form shows for `method` (its `main` fields, then nested main knobs)."""
    cls = settings_class(method)
    out = [_info(f) for f in dataclasses.fields(cls) if f.metadata.get("main")]
    nested = getattr(cls, "NESTED_MAIN", {})
    if nested:
        defaults = cls()  # completes the nested dicts with their configs' defaults
        for name, (text, choices, bounds) in nested.items():
            parent, leaf = name.split(".")
            value = getattr(defaults, parent)[leaf]
            kind = "choice" if choices else "int" if isinstance(value, int) else "float"
            out.append(SettingInfo(name, value, text, kind, tuple(choices), bounds))
    return out


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword values with dotted names nested: `{"data.n_subsets": 32}` -> `{"data": {"n_subsets": 32}}`."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def format_default(value: Any) -> str:
    """A value as the CLI shows and parses it (JSON for null, booleans, lists and dicts; strings bare)."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def settings_help(methods: list[str] | None = None) -> str:
    """Text listing each method's settings: `name=default  help`, one line each, grouped by method."""
    blocks = []
    for method in methods or sorted(METHOD_SETTINGS):
        lines = [f"{method}:"]
        for s in method_fields(method):
            choices = f" [{' | '.join(s.choices)}]" if s.choices else ""
            lines.append(f"  {s.name}={format_default(s.default)}  {s.help}{choices}")
        if len(lines) == 1:
            lines.append("  (no settings)")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
