"""What settings each attributor accepts, read from its `__init__` signature and its docstring's `Args:`.

Used by `make_attributor` to refuse an unknown setting with the valid names (and a close-match
suggestion) instead of a raw `TypeError`, and by the CLI's `--help` to list every method's settings.
Settings come from the class itself, so a default is written once (in the signature).
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any

from tda_explorer.errors import ConfigError

#: Constructor arguments that are not user settings.
_NOT_SETTINGS = ("self", "progress")
#: Settings that take Python objects (not given on a command line); left out of the help listing.
HIDDEN_IN_HELP = ("workspace", "executor")
_ARG_LINE = re.compile(r"^(\s*)([A-Za-z_][\w]*(?:\s*/\s*[A-Za-z_][\w]*)*)(?:\s*\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class SettingInfo:
    """One constructor setting of an attributor.

    Attributes:
        name: Keyword name (as given to `make_attributor` or `--set name=value`).
        default: Its default value (`inspect.Parameter.empty` when required).
        help: The first sentence of its docstring entry ("" when undocumented).
    """

    name: str
    default: Any
    help: str


def _doc_args(doc: str) -> dict[str, str]:
    """`{name: text}` of a Google docstring's `Args:` block (`a / b:` entries document both names)."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    in_args, indent, current = False, None, []
    for line in lines:
        if line.strip() == "Args:":
            in_args, indent, current = True, None, []
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith(" "):  # the next section ("Returns:", ...)
            break
        match = _ARG_LINE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            current = [n.strip() for n in match.group(2).split("/")]
            for n in current:
                out[n] = match.group(3).strip()
        elif current and line.strip():
            for n in current:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def _first_sentence(text: str, limit: int = 110) -> str:
    """Text up to the first ". " or "; " outside parentheses (not after "e.g." / "i.e."), shortened."""
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        after_abbrev = text[max(0, i - 3) : i + 1] in ("e.g.", "i.e.")
        if ch in ".;" and depth <= 0 and text[i + 1 : i + 2] in (" ", "") and not after_abbrev:
            end = i
            break
    sentence = text[:end]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def method_settings(cls: type) -> list[SettingInfo]:
    """The settings of an attributor class in signature order (from `__init__` and the class docstring)."""
    docs = {**_doc_args(cls.__doc__ or ""), **_doc_args(cls.__init__.__doc__ or "")}
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in _NOT_SETTINGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(SettingInfo(p.name, p.default, _first_sentence(docs.get(p.name, ""))))
    return out


def accepts_any(cls: type) -> bool:
    """True when `cls.__init__` takes `**kwargs` (then names cannot be checked up front)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def check_setting_names(method: str, cls: type, settings: dict) -> None:
    """ConfigError naming the valid settings (and the closest one) when `settings` has an unknown key."""
    if accepts_any(cls):
        return
    valid = [s.name for s in method_settings(cls)]
    for name in settings:
        if name in valid or name in _NOT_SETTINGS:  # `progress` is passed by the callers, not the user
            continue
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown setting {name!r} for method {method!r}{hint}; valid settings: {', '.join(valid)}."
        )


def format_default(value: Any) -> str:
    """A default as the CLI shows it (`--set name=value` syntax; required settings as "required")."""
    if value is inspect.Parameter.empty:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, (list, tuple, dict)) else repr(value)


def settings_help(registry: dict[str, type], methods: list[str] | None = None) -> str:
    """Text listing each method's settings: `name=default  help`, one line each, grouped by method.

    A setting without a docstring entry shows the help of the same-named setting of another method.
    """
    shared: dict[str, str] = {}  # one name per knob across methods: an undocumented one borrows the help
    for cls in registry.values():
        for s in method_settings(cls):
            if s.help:
                shared.setdefault(s.name, s.help)
    blocks = []
    for name in methods or sorted(registry):
        lines = [f"{name}:"]
        for s in method_settings(registry[name]):
            if s.name in HIDDEN_IN_HELP:
                continue
            text = s.help or shared.get(s.name, "")
            lines.append(f"  {s.name}={format_default(s.default)}" + (f"  {text}" if text else ""))
        if len(lines) == 1:
            lines.append("  (no settings)")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
