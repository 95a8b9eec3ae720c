"""The app's main settings: every name it offers is a real setting of the attributor it belongs to."""

from __future__ import annotations

import pytest

from tda_explorer.attributors import ATTRIBUTORS, make_attributor
from tda_explorer.attributors.ui_settings import MAIN_SETTINGS, main_settings, settings_kwargs
from tda_explorer.errors import ConfigError


def test_every_registered_attributor_has_an_entry():
    assert set(ATTRIBUTORS) <= set(MAIN_SETTINGS), sorted(set(ATTRIBUTORS) - set(MAIN_SETTINGS))


@pytest.mark.parametrize("name", sorted(ATTRIBUTORS))
def test_each_setting_and_choice_is_accepted(name):
    for s in main_settings(name):
        assert s.kind in ("choice", "int", "float"), s
        values = [s.default, *s.choices] if s.kind == "choice" else [s.default]
        if s.kind == "choice":
            assert s.default in s.choices, s
        for v in values:
            kwargs = settings_kwargs({s.name: v})
            attributor = make_attributor(name, **kwargs)
            leaf = attributor.settings
            for part in s.name.split("."):
                leaf = leaf[part]
            assert leaf == v, (name, s.name, leaf, v)


# the app deliberately starts these cheaper than the library default (one model, last layer)
APP_CHEAPER_DEFAULTS = {("tracin", "params"), ("trak", "n_models")}


@pytest.mark.parametrize("name", sorted(ATTRIBUTORS))
def test_defaults_shown_are_the_attributors_own(name):
    specs = main_settings(name)
    own = make_attributor(name).settings
    for s in specs:
        if (name, s.name) in APP_CHEAPER_DEFAULTS:
            continue
        leaf = own
        for part in s.name.split("."):
            leaf = leaf[part]
        if s.kind == "float" and s.default is None:  # left empty: not passed, the attributor decides
            assert leaf in (None, "auto"), (name, s.name, leaf)
            continue
        assert leaf == s.default, (name, s.name, leaf, s.default)


def test_settings_kwargs_nests_dotted_names():
    got = settings_kwargs({"pooling": "sum", "data.n_subsets": 32, "data.alpha": 0.4, "encoder.dim": 8})
    assert got == {"pooling": "sum", "data": {"n_subsets": 32, "alpha": 0.4}, "encoder": {"dim": 8}}


def test_a_bogus_name_would_be_rejected():
    with pytest.raises(ConfigError):
        make_attributor("source", **settings_kwargs({"n_segments": 3}))
