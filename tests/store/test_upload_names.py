"""Upload names (issue 20 item 15): long names keep their extension; the hint lists what the loaders read."""

from __future__ import annotations

import pytest

from tda_explorer.errors import DataError
from tda_explorer.store.uploads import MAX_NAME, UPLOAD_SUFFIXES, safe_filename, save_upload


def test_long_upload_names_are_shortened_keeping_the_extension(tmp_path):
    name = "reviews-" + "x" * 300 + ".parquet"
    safe = safe_filename(name)
    assert len(safe) == MAX_NAME and safe.endswith(".parquet")
    path = save_upload(tmp_path, name, b"PAR1")
    assert path.suffix == ".parquet"


def test_the_hint_offers_only_formats_the_loaders_read(tmp_path):
    assert ".txt" not in UPLOAD_SUFFIXES
    with pytest.raises(DataError) as e:
        save_upload(tmp_path, "notes.txt", b"a,b\n1,2\n")
    assert ".txt file" not in str(e.value) and ".csv" in str(e.value)
