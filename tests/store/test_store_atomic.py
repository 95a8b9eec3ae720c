"""Atomic files and directories: complete or absent, old version kept on failure, leftovers cleaned."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.store import atomic


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_atomic_write_variants_round_trip(tmp_path: Path) -> None:
    atomic.atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic.atomic_write_text(tmp_path / "t.txt", "héllo\n")
    atomic.atomic_write_json(tmp_path / "j.json", {"x": (1, 2), "p": Path("q")})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2], "p": "q"}
    assert _names(tmp_path) == {"a", "t.txt", "j.json"}


def test_atomic_write_json_failure_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"version": "old"})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic.atomic_write_json(target, {"version": "new"})
    monkeypatch.undo()
    with pytest.raises(ConfigError):  # not serialisable: fails before touching the disk
        atomic.atomic_write_json(target, {"version": float("nan")})
    assert json.loads(target.read_text()) == {"version": "old"}
    assert _names(tmp_path) == {"state.json"}


def test_atomic_write_exception_mid_write_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half(f) -> None:
        f.write(b"new but incomplete")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == {"f.bin"}


def test_atomic_directory_creates_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "kind" / "key"
    with atomic.atomic_directory(final) as d:
        assert d.parent == final.parent and d.name.startswith(".tmp-")
        (d / "a.txt").write_text("1")
        assert not final.exists()
    assert _names(final) == {"a.txt"}
    with atomic.atomic_directory(final) as d:
        (d / "b.txt").write_text("2")
        assert (final / "a.txt").exists()  # the old one is served until the swap
    assert _names(final) == {"b.txt"}
    assert _names(final.parent) == {"key"}  # no temp, trash or lock left


def test_atomic_directory_exception_keeps_old(tmp_path: Path) -> None:
    final = tmp_path / "key"
    with atomic.atomic_directory(final) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(ValueError), atomic.atomic_directory(final) as d:
        (d / "a.txt").write_text("new")
        (d / "half.bin").write_bytes(b"x")
        raise ValueError("training diverged")
    assert _names(final) == {"a.txt"} and (final / "a.txt").read_text() == "old"
    assert _names(tmp_path) == {"key"}


def test_atomic_directory_fallback_without_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. macOS, Windows, old kernels
    final = tmp_path / "key"
    for version in ("1", "2", "3"):
        with atomic.atomic_directory(final) as d:
            (d / "v.txt").write_text(version)
    assert (final / "v.txt").read_text() == "3"
    assert _names(tmp_path) == {"key"}


def test_clean_never_touches_a_live_writer(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "abc"
    with atomic.atomic_directory(final) as d:
        (d / "x").write_text("x")
        old = time.time() - 10_000
        os.utime(d, (old, old))
        assert atomic.clean_stale_temps(tmp_path, max_age_s=0) == []
        assert d.exists()
    assert (final / "x").exists()


def test_clean_removes_only_our_stale_names(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-data.json-0123456789ab"  # what atomic_write leaves if killed
    fresh = tmp_path / ".tmp-other.json-ba9876543210"
    foreign = tmp_path / ".tmp-not-ours"
    for p in (stale, fresh, foreign):
        p.write_text("x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    assert atomic.clean_stale_temps(tmp_path, max_age_s=600) == [stale]
    assert _names(tmp_path) == {fresh.name, foreign.name}


def test_remove_directory(tmp_path: Path) -> None:
    d = tmp_path / "k"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("x")
    assert atomic.remove_directory(d) is True
    assert atomic.remove_directory(d) is False
    assert list(tmp_path.iterdir()) == []
