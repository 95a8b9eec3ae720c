"""Loader options given as text (the CLI's `--data-option key=value`), typed by the loader's signature.

No JSON guessing: the annotation of the loader's parameter decides how the text is read.

- `str`: the text as is (`label_column=123` is the column named "123").
- `int` / `float`: a number; anything else is refused naming the option and the type.
- `bool`: `true` / `false` (also `1` / `0`, `yes` / `no`; any case).
- a list of strings (`feature_columns`, `column_names`): comma-separated names (`a,b,c`; one name
  `5` gives `["5"]`), or a JSON list of strings for names with commas (`["a,b", "c"]`).
- `(height, width)` (`image_size`): two integers, `64,64`, `64x64` or `[64, 64]`.
- a choice (`Literal`): one of the listed values.
- an optional option (`... | None`): an empty value (`id_column=`) means None.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable

from tda_explorer.errors import ConfigError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _kinds(annotation: object) -> tuple[list[object], bool]:
    """The non-None members of an annotation and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = list(typing.get_args(annotation))
    else:
        members = [annotation]
    optional = type(None) in members
    return [m for m in members if m is not type(None)], optional


def _expected(members: list[object], optional: bool) -> str:
    words = []
    for m in members:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin is typing.Literal:
            words.append("one of " + ", ".join(repr(a) for a in args))
        elif origin in (list, tuple) and args and args[0] is int:
            words.append("two integers like 64,64")
        elif origin in (list, tuple):
            words.append("a comma-separated list of names (or a JSON list of strings)")
        elif m is bool:
            words.append("true or false")
        elif m is int:
            words.append("an integer")
        elif m is float:
            words.append("a number")
        else:
            words.append("a string")
    words = list(dict.fromkeys(words))
    return " or ".join(words) + (" (or empty for none)" if optional else "")


def _convert(member: object, text: str) -> object:
    """`text` read as `member`; ValueError when it is not one."""
    origin, args = typing.get_origin(member), typing.get_args(member)
    if origin is typing.Literal:
        if text not in [str(a) for a in args]:
            raise ValueError(text)
        return next(a for a in args if str(a) == text)
    if origin in (list, tuple) and args and args[0] is int:
        parts = re.split(r"\s*[,x×]\s*", text.strip().strip("[]()").strip())
        if len(parts) != 2:
            raise ValueError(text)
        return [int(p) for p in parts]
    if origin in (list, tuple):
        if text.lstrip().startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(text)
            return value
        return [p.strip() for p in text.split(",")] if text else []
    if member is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(text)
    if member is int:
        return int(text.strip())
    if member is float:
        return float(text.strip())
    return text


def parse_option_text(loader: Callable, key: str, text: str) -> object:
    """One option of `loader`, given as text, converted by the parameter's annotation.

    Args:
        loader: the loader function (its signature and annotations decide the type).
        key: the option's name; an unknown name is returned as the text (the spec refuses it later).
        text: the value as typed by the user.

    Raises:
        ConfigError: the text does not read as the option's type (names the option and the type).
    """
    hints = typing.get_type_hints(loader)
    if key not in hints:
        return text
    members, optional = _kinds(hints[key])
    if optional and text == "":
        return None
    for member in members:
        try:
            return _convert(member, text)
        except (ValueError, json.JSONDecodeError):
            continue
    raise ConfigError(
        f"data option {key}={text!r}: {key} expects {_expected(members, optional)}, e.g. "
        f"{_example(members[0])}."
    )


def _example(member: object) -> str:
    origin, args = typing.get_origin(member), typing.get_args(member)
    if origin is typing.Literal:
        return f"{args[0]}"
    if origin in (list, tuple) and args and args[0] is int:
        return "64,64"
    if origin in (list, tuple):
        return "a,b,c"
    return {bool: "true", int: "3", float: "0.1"}.get(member, "name")  # type: ignore[arg-type]
