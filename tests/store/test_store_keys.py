"""config_hash: canonical, order-independent, type-aware, strict about what is JSON."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.store import canonical_json, config_diff, config_hash, to_jsonable


def test_matches_brute_force_sha256_of_canonical_json() -> None:
    cfg = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    text = '{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}'
    assert config_hash(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert len(config_hash(cfg)) == 16


def test_order_independent_at_every_level() -> None:
    a = {"model": {"width": 64, "depth": 2}, "lr": 0.1, "seeds": [0, 1]}
    b = {"seeds": [0, 1], "lr": 0.1, "model": {"depth": 2, "width": 64}}
    assert config_hash(a) == config_hash(b)
    assert config_hash({"seeds": [1, 0]}) != config_hash({"seeds": [0, 1]})  # list order matters


def test_type_aware_int_float_bool_are_distinct() -> None:
    # Documented choice: 1, 1.0 and True are different configs (a cache miss, never a wrong hit).
    assert len({config_hash({"x": 1}), config_hash({"x": 1.0}), config_hash({"x": True})}) == 3


def test_normalisation_of_python_and_numpy_types() -> None:
    assert config_hash({"t": (1, 2)}) == config_hash({"t": [1, 2]})
    assert config_hash({"n": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True)}) == config_hash(
        {"n": 3, "f": 0.5, "b": True}
    )
    assert config_hash({"a": np.arange(3)}) == config_hash({"a": [0, 1, 2]})
    assert config_hash({"p": Path("data") / "x.csv"}) == config_hash({"p": "data/x.csv"})
    assert config_hash({"p": PurePosixPath("/a/b")}) == config_hash({"p": "/a/b"})
    assert config_hash({"s": {3, 1, 2}}) == config_hash({"s": [1, 2, 3]})
    assert config_hash({1: "a"}) == config_hash({"1": "a"})

    class Mode(enum.Enum):
        FAST = "fast"

    assert config_hash({"m": Mode.FAST}) == config_hash({"m": "fast"})


def test_dataclass_hashes_like_its_fields() -> None:
    @dataclasses.dataclass
    class Optim:
        lr: float = 0.1
        betas: tuple[float, float] = (0.9, 0.999)

    @dataclasses.dataclass
    class Cfg:
        optim: Optim
        epochs: int = 3

    cfg = Cfg(optim=Optim())
    assert config_hash(cfg) == config_hash({"epochs": 3, "optim": {"lr": 0.1, "betas": [0.9, 0.999]}})
    assert config_hash(cfg) == config_hash(dataclasses.asdict(cfg))


@pytest.mark.parametrize(
    ("cfg", "where"),
    [
        ({"optim": {"lr": math.nan}}, "config.optim.lr"),
        ({"x": [1, math.inf]}, "config.x[1]"),
        ({"model": {"act": object()}}, "config.model.act"),
        ({"fn": len}, "config.fn"),
        ({"a": np.array([object()])}, "config.a"),
        ({(1, 2): 3}, "config"),
        ({1: "a", "1": "b"}, "clash"),
    ],
)
def test_rejects_non_json_values_naming_the_key_path(cfg: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=r"\S") as info:
        config_hash(cfg)
    assert where in str(info.value)


def test_nonfinite_can_be_nulled_for_metadata() -> None:
    assert to_jsonable({"loss": math.nan}, nonfinite="null") == {"loss": None}


def test_canonical_json_and_diff() -> None:
    assert canonical_json({"b": 1, "a": [1.5]}) == '{"a":[1.5],"b":1}'
    lines = config_diff({"lr": 0.1, "m": {"w": 1}, "old": 1}, {"lr": 0.2, "m": {"w": 1}, "new": 2})
    assert lines == [
        "lr: stored 0.1, requested 0.2",
        "new: not in the stored config, requested 2",
        "old: stored 1, missing from the requested config",
    ]
    assert config_diff({"a": 1}, {"a": 1}) == []
