"""The app's per-method settings form, generated from the settings dataclasses (`method_settings`).

`form_widgets(method)` says which widget each main setting gets (pure, tested against the dataclass
defaults); `settings_form(method)` draws them and returns the keyword arguments for `make_attributor`.
A number whose default is not a number (None, "auto") is an empty box: left empty, the setting keeps
its default; filled, it overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from tda_explorer.attributors.settings_help import SettingInfo, format_default, main_fields, nest


@dataclass(frozen=True)
class Widget:
    """One form widget: `kind` "select" (choices), "int" or "float"; `value` what it shows first (None =
    empty, meaning the setting's own default, `default`)."""

    setting: SettingInfo
    kind: str
    value: Any
    options: tuple = ()

    @property
    def help(self) -> str:
        s = self.setting
        if self.kind != "select" and self.value is None:
            return f"{s.help} (empty = {format_default(s.default)})"
        return s.help


def _widget(s: SettingInfo) -> Widget:
    if s.kind == "choice":
        return Widget(s, "select", s.default, s.choices)
    number = isinstance(s.default, (int, float)) and not isinstance(s.default, bool)
    if s.kind in ("int", "float"):
        return Widget(s, s.kind, s.default if number else None)
    raise TypeError(f"setting {s.name!r} ({s.kind}) has no form widget; mark it main=False.")


def form_widgets(method: str) -> list[Widget]:
    """The widgets of `method`'s main settings, in order."""
    return [_widget(s) for s in main_fields(method)]


def settings_form(method: str) -> dict[str, Any]:
    """Draw `method`'s main settings (inside a form/expander of the caller); returns the keyword arguments
    for `make_attributor` (only the settings the user filled; dotted names nested)."""
    values: dict[str, Any] = {}
    for w in form_widgets(method):
        name, key = w.setting.name, f"set_{method}_{w.setting.name}"
        low = None if not w.setting.range else w.setting.range[0]
        high = None if not w.setting.range else w.setting.range[1]
        if w.kind == "select":
            values[name] = st.selectbox(name, w.options, index=w.options.index(w.value), help=w.help, key=key)
            continue
        cast = int if w.kind == "int" else float
        value = st.number_input(
            name,
            value=None if w.value is None else cast(w.value),
            min_value=None if low is None else cast(low),
            max_value=None if high is None else cast(high),
            help=w.help,
            key=key,
            format=None if w.kind == "int" else "%g",
            step=1 if w.kind == "int" else None,
        )
        if value is not None:
            values[name] = cast(value)
    return nest(values)
