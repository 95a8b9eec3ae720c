"""Method settings: one frozen dataclass per method whose defaults are the ones Python, the app's form and
the CLI show; validation with clear errors; cache keys and deprecated names kept."""

from __future__ import annotations

import dataclasses
import re

import pytest

from appsettings import form_widgets
from tda_explorer.attributors import ATTRIBUTORS, make_attributor
from tda_explorer.attributors.base import attributor_from_config
from tda_explorer.attributors.method_settings import METHOD_SETTINGS, InfluenceSettings, TRAKSettings
from tda_explorer.attributors.settings import default_of
from tda_explorer.attributors.settings_help import format_default, main_fields, nest
from tda_explorer.cli import build_parser
from tda_explorer.cli_commands.common import method_settings_from_args
from tda_explorer.errors import ConfigError


def test_every_registered_method_has_its_settings_class():
    assert set(METHOD_SETTINGS) == set(ATTRIBUTORS)
    for name, cls in ATTRIBUTORS.items():
        assert cls.Settings is METHOD_SETTINGS[name], name


def _cli_defaults() -> dict[str, dict[str, str]]:
    """`{method: {setting: default text}}` as `attribute --help` prints them."""
    text = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(
        "attribute")).format_help()  # fmt: skip
    out: dict[str, dict[str, str]] = {}
    method = None
    for line in text.split("default shown):", 1)[1].splitlines():
        if re.fullmatch(r"\w+:", line):
            method = line[:-1]
            out[method] = {}
        elif line.startswith("  ") and method:
            name, value = line.strip().split("  ", 1)[0].split("=", 1)
            out[method][name] = value
    return out


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_defaults_appear_once_python_app_and_cli_show_the_dataclass_defaults(method):
    fields = {f.name: default_of(f) for f in dataclasses.fields(METHOD_SETTINGS[method])}
    # Python: an attributor built without settings has exactly these (dicts completed by their configs)
    built = make_attributor(method).settings
    for name, default in fields.items():
        if not isinstance(default, dict):
            assert getattr(built, name) == default, (method, name)
    # CLI: every setting is listed with its dataclass default
    assert _cli_defaults()[method] == {n: format_default(d) for n, d in fields.items()}
    # app: each main widget starts at the default, or empty (the default kept) when it is not a number
    defaults = METHOD_SETTINGS[method]()
    for w in form_widgets(method):
        name = w.setting.name
        *parents, leaf = name.split(".")
        want = getattr(defaults, parents[0])[leaf] if parents else getattr(defaults, name)
        assert w.setting.default == want, (method, name)
        if w.value is None:
            assert not isinstance(want, (int, float)) or isinstance(want, bool), (method, name)
            assert format_default(want) in w.help, (method, name, w.help)
        else:
            assert w.value == want, (method, name)


def test_the_app_form_offers_the_main_settings():
    names = {m: [w.setting.name for w in form_widgets(m)] for m in METHOD_SETTINGS}
    assert names["influence"] == ["solver", "damping_factor", "params"]
    assert names["trak"] == ["proj_dim", "proj_type", "n_models", "proj_layout"]
    assert names["airrep"] == ["data.n_subsets", "encoder.image_backbone", "training.epochs"]
    assert names["repsim"] == []


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_each_main_setting_and_choice_is_accepted(method):
    for s in main_fields(method):
        for value in [s.default, *s.choices]:
            got = make_attributor(method, **nest({s.name: value})).settings
            for part in s.name.split("."):
                got = got[part]
            assert got == value, (method, s.name, value)


def test_unknown_setting_lists_the_valid_names_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown setting 'solvr' for method 'influence' \(did you mean 'solver'\?\)"
    ):
        make_attributor("influence", solvr="cg")
    with pytest.raises(ConfigError, match="valid settings: params, seeds"):
        make_attributor("grad_dot", foo=1)
    with pytest.raises(ConfigError, match="did you mean 'trak'"):
        make_attributor("trek")


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("trak", {"proj_dim": "big"}, r"'proj_dim' must be None or int"),
        ("trak", {"proj_dim": 0}, r"'proj_dim' must be in \[1, None\]"),
        ("trak", {"proj_type": "sjtl"}, r"did you mean 'sjlt'"),
        ("influence", {"damping_factor": "gcv"}, r"must be one of \['auto'\]"),
        ("influence", {"damping": -1.0}, r"'damping' must be in \[0, None\]"),
        ("influence", {"solver": "exact", "preconditioner": "ekfac"}, "only used by solver='cg'"),
        ("source", {"segments": True}, "'segments' must be int"),
        ("source", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ("ensemble", {"base": "trak", "base_settings": {"n_models": 2}}, "leave 'n_models' out"),
        ("dtda", {"base_settings": {"seeds": "all"}}, "may not set"),
        ("airrep", {"data": {"n_subset": 3}}, "bad AirRep data settings"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(method, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_attributor(method, **settings)


def test_settings_are_frozen_and_rebuild_an_equal_attributor():
    attr = make_attributor("influence", solver="exact", params=["fc"], damping=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attr.settings.solver = "cg"  # type: ignore[misc]
    assert attr.settings.params == ("fc",) and attr.settings["params"] == ["fc"]
    again = make_attributor("influence", **attr.settings)
    assert again.settings == attr.settings and again.config() == attr.config()
    passed = ATTRIBUTORS["influence"](InfluenceSettings(solver="exact", params=("fc",), damping=0.5))
    assert passed.config() == attr.config()
    assert attr.clone(damping=1.0).settings.damping == 1.0 and attr.settings.damping == 0.5
    assert attr.get_params() == dict(attr.settings) and attr.get_params()["params"] == ["fc"]


def test_trak_damping_keeps_its_old_name_in_cache_keys_and_as_a_deprecated_alias():
    new = make_attributor("trak", damping=0.5, damping_factor=2.0)
    cfg = new.config()
    assert cfg["regularization"] == 0.5 and cfg["regularization_factor"] == 2.0 and "damping" not in cfg
    with pytest.warns(DeprecationWarning, match="use 'damping'"):
        old = make_attributor("trak", regularization=0.5, regularization_factor=2.0)
    assert old.settings == new.settings
    with pytest.raises(ConfigError, match="give 'damping' only"):
        make_attributor("trak", regularization=0.5, damping=0.5)
    assert attributor_from_config(cfg).settings == new.settings  # a stored key maps back, no warning
    assert TRAKSettings(damping=0).damping == 0.0 and isinstance(TRAKSettings(damping=0).damping, float)
    # wrapped TRAK keeps the old key names too
    dtda = make_attributor("dtda", base="trak", base_settings={"damping": 0.1})
    assert dtda.config()["base_settings"]["regularization"] == 0.1
    assert dtda.settings.base_settings["damping"] == 0.1


def test_ensemble_keys_only_the_fields_of_its_kind():
    independent = make_attributor("ensemble", base="grad_dot").config()
    assert set(independent) == {"method", "base", "base_settings", "kind", "combine", "n_models"}
    lora = make_attributor("ensemble", base="grad_dot", kind="lora").config()
    assert {"n_adapters", "rank", "lora_targets"} <= set(lora) and "n_masks" not in lora


def test_cli_setting_flags_and_set_give_the_same_settings():
    parser = build_parser()
    args = parser.parse_args(
        ["attribute", "--run", "r", "--method", "trak", "--proj-dim", "512", "--set", "params=head",
         "--damping", "null", "--proj-type", "gaussian", "--proj-per-model", "false"]
    )  # fmt: skip
    want = {
        "proj_dim": 512,
        "params": "head",
        "damping": None,
        "proj_type": "gaussian",
        "proj_per_model": False,
    }
    assert method_settings_from_args(args) == want
    assert make_attributor("trak", **want).settings.proj_dim == 512
    help_text = parser._subparsers._group_actions[0].choices["attribute"].format_help()
    assert "--proj-dim V" in help_text and "--damping-factor V" in help_text
    # commands with --method get the flags too, but never replace their own options
    explain = parser._subparsers._group_actions[0].choices["explain"]
    assert "--proj-dim" in explain._option_string_actions
