"""Exports round trip (CSV, JSON, Parquet) and safe uploads."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import DataError
from tda_explorer.store import FlagStore
from tda_explorer.store.exports import export_bytes, export_table, kept_ids, read_export, write_exports
from tda_explorer.store.uploads import safe_filename, save_upload


@pytest.fixture
def table(tmp_path):
    flags = FlagStore(tmp_path / "flags.sqlite")
    flags.flag("run", "b", suggested_label="1", note="looks like a one")
    ids = ("a", "b", "c", "d")
    return export_table(ids, np.array([0, 1, 0, 1]), ("zero", "one"), np.array([0.3, -1.0, 0.1, 2.0]),
                        np.array([False, True, False, False]), flags.get("run"))  # fmt: skip


def test_export_round_trip_every_format(tmp_path, table):
    paths = write_exports(tmp_path, "run-grad_dot-1removed", table)
    for fmt in ("csv", "json", "parquet"):
        back = read_export(paths[fmt])
        assert back["id"].tolist() == ["a", "b", "c", "d"]
        assert back["status"].tolist() == ["kept", "removed", "kept", "kept"]
        assert back.loc[back["id"] == "b", "note"].iloc[0] == "looks like a one"
        assert bool(back.loc[back["id"] == "b", "flagged"].iloc[0])
        assert np.allclose(back["score"], [0.3, -1.0, 0.1, 2.0])
        assert kept_ids(paths[fmt]) == ["a", "c", "d"]
    assert kept_ids(paths["kept_csv"]) == ["a", "c", "d"]
    assert export_bytes(table, "csv").startswith(b"id,label,class_name,score,flagged")


def test_export_names_are_sanitised(tmp_path, table):
    paths = write_exports(tmp_path, "../../etc/passwd", table)
    assert all(p.parent == tmp_path for p in paths.values())


def test_read_export_rejects_other_tables(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        read_export(tmp_path / "x.csv")


def test_uploads_are_safe_and_content_addressed(tmp_path):
    assert safe_filename("../../secret/..data.csv") == "data.csv"
    a = save_upload(tmp_path, "../x.csv", b"label,f\n0,1\n1,2\n")
    b = save_upload(tmp_path, "x.csv", b"label,f\n0,1\n1,2\n")
    assert a == b and a.parent == tmp_path and a.read_bytes().startswith(b"label")
    with pytest.raises(DataError, match="over the upload limit"):
        save_upload(tmp_path, "big.csv", b"x" * 2048, max_bytes=1024)
    with pytest.raises(DataError, match="unsupported file type"):
        save_upload(tmp_path, "evil.pkl", b"data")
    with pytest.raises(DataError, match="empty"):
        save_upload(tmp_path, "e.csv", b"")
