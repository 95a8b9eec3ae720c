"""Workspace: keys, write/open round trip, metadata, listing, refusal of mismatched configs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.store import META_FILE, Workspace, config_hash
from tda_explorer.store.integrity import meta_digest

CFG = {"model": "mlp", "lr": 0.1, "epochs": 3, "seeds": (0, 1)}


def test_root_from_argument_env_or_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Workspace(tmp_path / "a").root == tmp_path / "a"
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "env"))
    assert Workspace().root == tmp_path / "env" and (tmp_path / "env").is_dir()
    monkeypatch.delenv("TDA_WORKSPACE")
    monkeypatch.chdir(tmp_path)
    assert Workspace().root == tmp_path / "workspace"


def test_write_then_open_round_trip(ws: Workspace) -> None:
    assert not ws.exists("runs", CFG)
    writer = ws.write("runs", CFG, extra={"note": "first"})
    with writer as d:
        (d / "seed0.txt").write_text("weights")
        assert not ws.exists("runs", CFG)  # invisible while being written
        assert ws.list_runs() == []
    assert writer.key == ws.key("runs", CFG) == config_hash(CFG)
    assert writer.path == ws.path("runs", writer.key) == ws.root / "runs" / writer.key
    assert ws.exists("runs", CFG)
    d = ws.open("runs", dict(reversed(list(CFG.items()))))  # same config, other order
    assert (d / "seed0.txt").read_text() == "weights"
    meta = ws.meta("runs", writer.key)
    assert meta["kind"] == "runs" and meta["key"] == writer.key and meta["version"] == 1
    assert meta["config"] == {"model": "mlp", "lr": 0.1, "epochs": 3, "seeds": [0, 1]}
    assert meta["extra"] == {"note": "first"}
    assert meta["created"].endswith("+00:00")


def test_extra_is_read_at_exit_and_nan_becomes_null(ws: Workspace) -> None:
    extra: dict = {}
    with ws.write("runs", CFG, extra=extra) as d:
        (d / "x").write_text("x")
        extra["seconds"] = 1.5
        extra["final_loss"] = float("nan")
    assert ws.meta("runs", ws.key("runs", CFG))["extra"] == {"seconds": 1.5, "final_loss": None}


def test_failed_overwrite_keeps_old_artifact(ws: Workspace) -> None:
    with ws.write("runs", CFG, extra={"v": 1}) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), ws.write("runs", CFG, extra={"v": 2}) as d:
        (d / "a.txt").write_text("new")
        raise KeyboardInterrupt
    d = ws.open("runs", CFG)
    assert (d / "a.txt").read_text() == "old" and ws.meta("runs", d.name)["extra"] == {"v": 1}
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]


def test_exception_on_first_write_leaves_nothing(ws: Workspace) -> None:
    with pytest.raises(RuntimeError), ws.write("scores", CFG) as d:
        (d / "partial.npy").write_bytes(b"x")
        raise RuntimeError("out of memory")
    assert not ws.exists("scores", CFG)
    assert ws.list("scores") == []
    assert list((ws.root / "scores").iterdir()) == []


def test_open_missing_artifact_says_what_to_do(ws: Workspace) -> None:
    with pytest.raises(ArtifactError) as info:
        ws.open("scores", CFG)
    msg = str(info.value)
    assert "'scores'" in msg and ws.key("scores", CFG) in msg and "Compute it first" in msg


def test_open_refuses_a_different_stored_config(ws: Workspace) -> None:
    with ws.write("runs", CFG) as d:
        (d / "x").write_text("x")
    meta_file = ws.path("runs", ws.key("runs", CFG)) / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["config"]["lr"] = 0.5
    meta["config"]["momentum"] = 0.9
    meta["meta_sha256"] = meta_digest(meta)  # a consistent meta made by another config, not damage
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        ws.open("runs", CFG)
    msg = str(info.value)
    assert "lr: stored 0.5, requested 0.1" in msg
    assert "momentum: stored 0.9, missing from the requested config" in msg
    assert "Delete" in msg and "change the config" in msg


def test_meta_json_is_reserved(ws: Workspace) -> None:
    with pytest.raises(ArtifactError, match="reserved"), ws.write("runs", CFG) as d:
        (d / META_FILE).write_text("{}")
    assert not ws.exists("runs", CFG)


def test_list_runs_newest_first_and_delete(ws: Workspace) -> None:
    keys = []
    for lr in (0.1, 0.2, 0.3):
        w = ws.write("runs", {**CFG, "lr": lr})
        with w as d:
            (d / "x").write_text("x")
        keys.append(w.key)
        time.sleep(0.002)
    runs = ws.list_runs()
    assert [m["key"] for m in runs] == keys[::-1]
    assert [m["config"]["lr"] for m in runs] == [0.3, 0.2, 0.1]
    assert runs[0]["created"] > runs[1]["created"] > runs[2]["created"]
    assert ws.delete("runs", keys[1]) is True and ws.delete("runs", keys[1]) is False
    assert [m["key"] for m in ws.list_runs()] == [keys[2], keys[0]]
    assert ws.list("never-written") == []


def test_names_are_validated(ws: Workspace) -> None:
    for bad in ("../etc", ".hidden", "a/b", "", "exports"):
        with pytest.raises(ConfigError):
            ws.path(bad, "0123456789abcdef")
    with pytest.raises(ConfigError):
        ws.path("runs", "../../x")
    with pytest.raises(ConfigError, match=r"config\.fn"):
        ws.write("runs", {"fn": print})


def test_exports_dir_and_flags(ws: Workspace) -> None:
    assert ws.exports_dir == ws.root / "exports" and ws.exports_dir.is_dir()
    assert ws.flags().path == ws.root / "flags.sqlite"
    assert ws.flags() is ws.flags()
