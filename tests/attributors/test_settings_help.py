"""Method settings read from the attributors themselves: listed with defaults and help, unknown names
refused with the valid ones and a close match (not a raw TypeError)."""

from __future__ import annotations

import inspect

import pytest

from tda_explorer.attributors import ATTRIBUTORS, make_attributor
from tda_explorer.attributors.settings_help import _doc_args, method_settings, settings_help
from tda_explorer.errors import ConfigError


def test_settings_follow_the_signature_defaults():
    for cls in ATTRIBUTORS.values():
        params = inspect.signature(cls.__init__).parameters
        for s in method_settings(cls):
            assert params[s.name].default == s.default or params[s.name].default is s.default


def test_every_listed_setting_has_help():
    lines = [line for line in settings_help(ATTRIBUTORS).splitlines() if line.startswith("  ")]
    undocumented = [line for line in lines if "  " not in line.strip() and "(no settings)" not in line]
    assert not undocumented, undocumented
    assert "  solver=ekfac  " in settings_help(ATTRIBUTORS, ["influence"])


def test_docstring_entries_with_two_names_and_continuations():
    doc = """Title.

    Args:
        a / b: shared text
            continued.
        c: own text (e.g. x; y).

    Returns:
        nothing.
    """
    assert _doc_args(doc) == {
        "a": "shared text continued.",
        "b": "shared text continued.",
        "c": "own text (e.g. x; y).",
    }


def test_unknown_setting_lists_the_valid_names_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown setting 'solvr' for method 'influence' \(did you mean 'solver'\?\)"
    ):
        make_attributor("influence", solvr="cg")
    with pytest.raises(ConfigError, match="valid settings: params, seeds"):
        make_attributor("grad_dot", foo=1)
    with pytest.raises(ConfigError, match="did you mean 'trak'"):
        make_attributor("trek")
