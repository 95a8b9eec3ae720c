"""Fuzzed user input: every loader answers a malformed file with DataError / ConfigError, nothing else.

Property-based (hypothesis) over CSV / TSV / Parquet tables and image folders: random bytes, wrong
encodings, NaN / inf / huge numbers, missing or unhashable labels, duplicate ids and columns, empty and
huge rows, corrupt, odd-mode and oversized images, file names with path-traversal pieces. A load either
succeeds with a consistent dataset or raises one of our errors; it never writes to the workspace.
Uploads over the size limit are refused with a message. Example counts are modest to keep this fast.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tda_explorer.data import DatasetSpec, load_dataset, load_image_folder, load_tabular, load_text_table
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError, DataError
from tda_explorer.store import Workspace
from tda_explorer.store.uploads import UPLOAD_SUFFIXES, safe_filename, save_upload

OURS = (DataError, ConfigError)
FUZZ = settings(
    max_examples=int(os.environ.get("TDA_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@contextmanager
def workspace_dir() -> Iterator[tuple[Workspace, Path]]:
    """A fresh workspace with one artifact in it, and a folder for the files under test."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        with ws.write("runs", {"probe": 1}, extra={"v": 1}) as d:
            (d / "weights.bin").write_bytes(b"\x01" * 64)
        files = Path(tmp) / "files"
        files.mkdir()
        yield ws, files


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` (the flags db and uploads excepted)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "uploads" not in p.parts and not p.name.startswith("flags.sqlite"):
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check_splits(splits: DatasetSplits) -> None:
    """Invariants of a successful load: disjoint non-empty train, finite inputs, labels in range."""
    ids = splits.train.ids + splits.val.ids + splits.test.ids
    assert len(ids) == len(set(ids)) and len(splits.train) > 0
    for part in (splits.train, splits.val, splits.test):
        if isinstance(part.inputs, torch.Tensor):
            assert part.inputs.dtype == torch.float32 and bool(torch.isfinite(part.inputs).all())
        if len(part):
            assert 0 <= int(part.labels.min()) and int(part.labels.max()) < part.n_classes


def _load_or_refuse(ws: Workspace, load: Callable[[], DatasetSplits]) -> str:
    """Run a load; it must succeed (valid splits) or raise DataError/ConfigError; the workspace is intact."""
    before = _snapshot(ws.root)
    try:
        _check_splits(load())
        outcome = "loaded"
    except OURS as e:
        assert str(e).strip(), "an error without a message"
        outcome = "refused"
    assert _snapshot(ws.root) == before
    assert ws.meta("runs", ws.key("runs", {"probe": 1}))["extra"] == {"v": 1}
    return outcome


# --- CSV / TSV -------------------------------------------------------------------------------------

CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "1e400",
            "-1e-400",
            "NA",
            "null",
            "None",
            "0",
            "1",
            "2",
            "1.5",
            "True",
            "false",
            '"',
            '""',
            "a,b",
            "x\ny",
            "\t",
            "\x00",
            "é",
            "🙂",
            "9" * 40,
            "-0",
            "0x1F",
            "1_000",
            "1,5",
            "=cmd|' /C calc'!A0",
            "../../etc/passwd",
        ]
    ),  # fmt: skip
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-32"])


@st.composite
def text_tables(draw) -> tuple[bytes, list[str]]:
    """Bytes of a delimited table with a header of 1-5 columns, maybe ragged, maybe badly encoded."""
    n_cols = draw(st.integers(1, 5))
    header = draw(
        st.lists(st.sampled_from(["x", "y", "label", "id", "text", "", "x", "a b"]), min_size=n_cols, max_size=n_cols)
    )  # fmt: skip
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=n_cols + 1), min_size=0, max_size=25))
    sep = draw(st.sampled_from([",", "\t", ";"]))
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    if draw(st.booleans()):
        lines.append(sep.join(["7"] * n_cols) + "z" * draw(st.sampled_from([0, 200_000])))  # a huge row
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    data = text.encode(draw(ENCODINGS), errors="replace")
    if draw(st.booleans()):  # corrupt a few bytes
        pos = draw(st.lists(st.integers(0, max(len(data) - 1, 0)), max_size=4))
        buf = bytearray(data)
        for p in pos:
            if buf:
                buf[p] = draw(st.integers(0, 255))
        data = bytes(buf)
    return data, header


@FUZZ
@given(
    table=text_tables(),
    ext=st.sampled_from([".csv", ".tsv"]),
    label=st.sampled_from(["y", "label", "x", "missing"]),
    id_column=st.sampled_from([None, "id", "x"]),
)
def test_fuzzed_text_tables_raise_only_our_errors(table, ext, label, id_column) -> None:
    data, _ = table
    with workspace_dir() as (ws, files):
        path = files / f"t{ext}"
        path.write_bytes(data)
        _load_or_refuse(ws, lambda: load_tabular(path, label, id_column=id_column))
        _load_or_refuse(ws, lambda: load_text_table(path, "text", label, id_column=id_column))
        _load_or_refuse(ws, lambda: load_text_table(path, "x", label))


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from([".csv", ".tsv", ".parquet", ".pq", ".txt", ""]))
def test_random_bytes_raise_only_our_errors(data: bytes, ext: str) -> None:
    with workspace_dir() as (ws, files):
        path = files / f"blob{ext}"
        path.write_bytes(data)
        _load_or_refuse(ws, lambda: load_tabular(path, "y"))
        _load_or_refuse(ws, lambda: load_text_table(path, "text", "y"))
        spec = DatasetSpec("tabular", str(path), {"label_column": "y"})
        _load_or_refuse(ws, lambda: load_dataset(spec))


# --- Parquet ----------------------------------------------------------------------------------------

N_ROWS = 12


def _column(kind: str, draw) -> pa.Array:
    if kind == "float":
        values = draw(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=N_ROWS, max_size=N_ROWS)
        )
        return pa.array(values, pa.float64())
    if kind == "int":
        return pa.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=N_ROWS, max_size=N_ROWS)))
    if kind == "small_int":
        return pa.array([i % draw(st.integers(1, 3)) for i in range(N_ROWS)])
    if kind == "str":
        return pa.array(
            draw(st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=N_ROWS, max_size=N_ROWS))
        )
    if kind == "null":
        return pa.nulls(N_ROWS)
    if kind == "bool":
        return pa.array([bool(i % 2) for i in range(N_ROWS)])
    if kind == "list":
        return pa.array([[i, i + 1] for i in range(N_ROWS)])
    if kind == "struct":
        return pa.array([{"a": i % 2} for i in range(N_ROWS)])
    if kind == "binary":
        return pa.array([bytes([i % 2]) for i in range(N_ROWS)])
    if kind == "dict":
        return pa.array(["a", "b"] * (N_ROWS // 2)).dictionary_encode()
    if kind == "timestamp":
        return pa.array(np.arange(N_ROWS).astype("datetime64[s]"))
    return pa.array([f"id{i % draw(st.integers(1, N_ROWS))}" for i in range(N_ROWS)])  # "ids", maybe dup


KINDS = [
    "float",
    "int",
    "small_int",
    "str",
    "null",
    "bool",
    "list",
    "struct",
    "binary",
    "dict",
    "timestamp",
    "ids",
]


@st.composite
def parquet_files(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(["x", "y", "id", "text", "z"]), min_size=1, max_size=5))
    cols = [_column(draw(st.sampled_from(KINDS)), draw) for _ in names]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(cols, names=names), buf)
    data = buf.getvalue()
    cut = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if cut == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif cut == "flip":
        buf = bytearray(data)
        for p in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            buf[p] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    return data


@FUZZ
@given(data=parquet_files(), label=st.sampled_from(["y", "x", "id"]), id_column=st.sampled_from([None, "id"]))
def test_fuzzed_parquet_raises_only_our_errors(data: bytes, label: str, id_column: str | None) -> None:
    with workspace_dir() as (ws, files):
        path = files / "t.parquet"
        path.write_bytes(data)
        _load_or_refuse(ws, lambda: load_tabular(path, label, id_column=id_column))
        _load_or_refuse(ws, lambda: load_tabular(path, label, feature_columns=["x"]))
        _load_or_refuse(ws, lambda: load_text_table(path, "text", label, id_column=id_column))


def test_unhashable_labels_are_a_data_error(tmp_path: Path) -> None:
    """A label column of lists (Parquet) used to escape as TypeError; it is a DataError now."""
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"x": [1.0] * 10, "y": [[0], [1]] * 5}), path)
    with pytest.raises(DataError, match="label column 'y'"):
        load_tabular(path, "y")
    with pytest.raises(DataError, match="label column 'y'"):
        load_text_table(path, "x", "y")


# --- image folders ---------------------------------------------------------------------------------

MODES = {"1": "png", "L": "png", "LA": "png", "P": "png", "RGB": "png", "RGBA": "png", "I;16": "png",
         "I": "tif", "F": "tif", "CMYK": "jpg", "RGB ": "bmp", "L ": "gif"}  # fmt: skip
NAMES = st.sampled_from(["a", "é x", "..", "...png", "-rf", "%2e%2e", "a b", "CON", "x" * 100])


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """One file for a class folder: a valid image of some mode and size, or corrupt bytes."""
    name = draw(NAMES)
    kind = draw(st.sampled_from(["valid", "valid", "valid", "truncated", "garbage", "empty"]))
    mode = draw(st.sampled_from(sorted(MODES)))
    ext = MODES[mode]
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    buf = io.BytesIO()
    Image.new(mode.strip(), size, color=draw(st.integers(0, 1))).save(
        buf, format={"jpg": "jpeg", "tif": "tiff"}.get(ext, ext)
    )
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: max(1, len(data) // 2)]
    elif kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=64))
    elif kind == "empty":
        data = b""
    return f"{name}.{ext}", data


@FUZZ
@given(
    classes=st.lists(st.lists(image_files(), min_size=0, max_size=5), min_size=0, max_size=3),
    image_size=st.sampled_from([None, (6, 6), (3, 9)]),
    grayscale=st.sampled_from([None, True, False]),
)
def test_fuzzed_image_folders_raise_only_our_errors(classes, image_size, grayscale) -> None:
    with workspace_dir() as (ws, files):
        root = files / "images"
        root.mkdir()
        for k, images in enumerate(classes):
            (root / f"class{k}").mkdir()
            for name, data in images:
                (root / f"class{k}" / name).write_bytes(data)
        _load_or_refuse(ws, lambda: load_image_folder(root, image_size, grayscale, 0.2, 0.2))
        spec = DatasetSpec("images", str(root), {"image_size": image_size, "grayscale": grayscale})
        _load_or_refuse(ws, lambda: load_dataset(spec))


def test_oversized_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images over PIL's pixel limit (decompression bombs, even the 'warning' band) are a DataError."""
    for k in range(2):
        (tmp_path / f"c{k}").mkdir()
        for i in range(3):
            Image.new("L", (40, 40)).save(tmp_path / f"c{k}" / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 px: over the limit, under twice it
    with pytest.raises(DataError, match="cannot read this image"):
        load_image_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: PIL's own error
    with pytest.raises(DataError, match="cannot read this image"):
        load_image_folder(tmp_path)


# --- uploads -----------------------------------------------------------------------------------------


@FUZZ
@given(
    name=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "../../etc/passwd.csv",
                "..\\..\\x.csv",
                "/abs/path.tsv",
                ".hidden.csv",
                "a\x00b.csv",
                "....csv",
                "ok.parquet",
                "CON.csv",
                "x/../../y.pq",
                "é.csv",
            ]
        ),
    ),  # fmt: skip
    size=st.integers(0, 300),
    limit=st.integers(1, 200),
)
def test_uploads_are_contained_and_size_limited(name: str, size: int, limit: int) -> None:
    with workspace_dir() as (ws, _files):
        uploads = ws.root / "uploads"
        before = _snapshot(ws.root)
        data = os.urandom(size)
        try:
            path = save_upload(uploads, name, data, max_bytes=limit)
        except DataError as e:
            msg = str(e)
            assert not uploads.exists() or not any(uploads.iterdir())
            if "unsupported file type" in msg:
                assert Path(safe_filename(name)).suffix.lower() not in UPLOAD_SUFFIXES
            elif size == 0:
                assert "empty" in msg
            elif size > limit and "unsupported file type" not in msg:
                assert "over the upload limit" in msg
        else:
            assert 0 < size <= limit
            assert path.resolve().parent == uploads.resolve() and path.read_bytes() == data
            assert not path.name.startswith(".")
        assert _snapshot(ws.root) == before


def test_upload_over_the_limit_is_refused_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"over the upload limit of 1 MiB; give its path"):
        save_upload(tmp_path / "uploads", "big.csv", b"x" * (2**20 + 1), max_bytes=2**20)
    assert not (tmp_path / "uploads").exists()
    ok = save_upload(tmp_path / "uploads", "big.csv", b"x" * 2**20, max_bytes=2**20)
    assert ok.stat().st_size == 2**20


def test_nan_inf_and_duplicate_ids_name_the_problem(tmp_path: Path) -> None:
    """The structured cases the fuzzers hit, checked for the message too."""
    rows = "id,x,y\n" + "".join(f"r{i},{i},{i % 2}\n" for i in range(8))
    cases = {
        "nan": (rows + "r8,nan,0\n", "missing value"),
        "inf": (rows + "r8,inf,1\n", "non-finite"),
        "huge": (rows + "r8,1e400,1\n", "non-finite"),
        "dup": (rows + "r1,3,1\n", "duplicate value 'r1'"),
        "nolabel": (rows + "r8,3,\n", "label column 'y' is empty"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=expected):
            load_tabular(path, "y", id_column="id")


# --- round-trip oracle: what was written is what loads, or a DataError naming file and place -------

TRICKY = st.sampled_from(
    ["00000", "1.0", "1", "01", "001", "007", "1e5", "3.50", "-0", "NA", "null", "None", "NaN", "n/a", "nan",
     "inf", "True", " x", "x ", "", " ", "a,b", 'say "hi"', '"', "x\ny", "x\r\ny", "\t", "=cmd|' /C calc'!A0",
     "é", "🙂", "\ufeffbom", "#", "0x1F", "1_000", "9" * 30]
)  # fmt: skip
LABELS = st.one_of(TRICKY, st.sampled_from(["pos", "neg", "0", "2", "10", "1.5"]))
CELL_TEXT = st.one_of(TRICKY, st.text(max_size=10))


def _representable(cell: str, fmt: str) -> bool:
    """TSV has no quoting: a cell with a tab or a line break cannot be written as one cell."""
    return fmt != "tsv" or not any(c in cell for c in "\t\n\r")


def _write(path: Path, fmt: str, header: list[str], rows: list[list[str]]) -> None:
    if fmt == "parquet":
        pq.write_table(pa.table({h: [r[j] for r in rows] for j, h in enumerate(header)}), path)
    elif fmt == "parquet-typed":  # int ids and labels, float features: typed Parquet columns
        cols = [
            [int(r[0]) for r in rows],
            [int(r[1]) for r in rows],
            [r[2] for r in rows],
            [float(r[3]) for r in rows],
        ]
        pq.write_table(pa.table(dict(zip(header, cols, strict=True))), path)
    elif fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows([header, *rows])  # quotes cells with \r or \n
        path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    else:
        path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8", newline="")


def _should_refuse(ids: list[str], labels: list[str], texts: list[str], n_splits_min: int) -> bool:
    """What a correct loader must refuse: empty / duplicate ids, empty labels or texts, one class,
    non-integer numeric labels, too few rows for the split."""

    def decimal_number(text: str) -> Decimal | None:  # the documented rule, written independently
        return Decimal(text) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text) else None

    if any(not i.strip() for i in ids) or len(set(ids)) != len(ids):
        return True
    if any(not t.strip() for t in texts) or any(not y.strip() for y in labels):
        return True
    stripped = [y.strip() for y in labels]
    unique = set(stripped)
    numbers = [decimal_number(y) for y in unique]
    if all(x is not None for x in numbers) and len(set(numbers)) == len(unique):
        if any(x != x.to_integral_value() for x in numbers):
            return True
    return len(unique) < 2 or len(ids) < n_splits_min


@st.composite
def written_tables(draw) -> tuple[str, list[list[str]], list[float]]:
    fmt = draw(st.sampled_from(["csv", "tsv", "parquet"]))
    n = draw(st.integers(1, 12))
    ids = draw(st.lists(CELL_TEXT, min_size=n, max_size=n))
    if draw(st.booleans()):  # mostly unique ids, so most inputs get past the id check
        ids = [f"{v}{i}" if draw(st.booleans()) else f"{i:05d}" for i, v in enumerate(ids)]
    labels = draw(st.lists(LABELS, min_size=n, max_size=n))
    texts = draw(st.lists(CELL_TEXT, min_size=n, max_size=n))
    if draw(st.booleans()):  # half the tables have no blank label / text, so more of them load
        labels = [y if y.strip() else "pos" for y in labels]
        texts = [t if t.strip() else "text" for t in texts]
    xs = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=n, max_size=n))
    if fmt == "parquet" and draw(st.booleans()):  # typed: ids / labels as integers read as their digits
        fmt = "parquet-typed"
        ids = [str(v) for v in draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))]
        labels = [str(v) for v in draw(st.lists(st.integers(-3, 12), min_size=n, max_size=n))]
    rows = [[i, y, t, repr(float(x))] for i, y, t, x in zip(ids, labels, texts, xs, strict=True)]
    rows = [[c if _representable(c, fmt) else "z" for c in r] for r in rows]
    return fmt, rows, xs


def _round_trip(tables, counts: dict[str, int]) -> None:
    fmt, rows, xs = tables
    ids, labels, texts = ([r[j] for r in rows] for j in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"written.{fmt.split('-')[0]}"
        _write(path, fmt, ["id", "label", "text", "x"], rows)
        loads = {
            "text": lambda: load_text_table(path, "text", "label", id_column="id", val_fraction=0.2, test_fraction=0.2),
            "tabular": lambda: load_tabular(path, "label", feature_columns=["x"], id_column="id", standardize=False,
                                            val_fraction=0.2, test_fraction=0.2),
        }  # fmt: skip
        for kind, load in loads.items():
            counts["inputs"] += 1
            refuse = _should_refuse(ids, labels, texts if kind == "text" else ["t"] * len(ids), 3)
            try:
                s = load()
            except OURS as e:
                msg = str(e)
                assert path.name in msg and any(w in msg for w in ("row", "column", "rows", "header")), msg
                counts["refused"] += 1
                counts["refused but valid"] += not refuse
                continue
            got = {}
            for part in (s.train, s.val, s.test):
                for k, i in enumerate(part.ids):
                    inp = part.inputs[k] if kind == "text" else float(part.inputs[k, 0])
                    got[i] = (inp, part.class_names[int(part.labels[k])])
            want = {i: (t if kind == "text" else float(np.float32(x)), y.strip())
                    for i, y, t, x in zip(ids, labels, texts, xs, strict=True)}  # fmt: skip
            if got != want or refuse:
                counts["silent changes"] += 1
                if not counts.get("keep going"):
                    raise AssertionError(
                        f"{kind} {fmt}: wrote {want}, loaded {got} (should refuse: {refuse})"
                    )
                continue
            counts["loaded"] += 1


ROUND_TRIP_COUNTS: dict[str, int] = {"inputs": 0, "loaded": 0, "refused": 0, "refused but valid": 0, "silent changes": 0}  # fmt: skip


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=written_tables())
def test_round_trip_quick(tables) -> None:
    """A quick draw of the round-trip oracle (the slow test below runs 1,000+)."""
    _round_trip(tables, ROUND_TRIP_COUNTS)
    assert ROUND_TRIP_COUNTS["silent changes"] == 0 and ROUND_TRIP_COUNTS["refused but valid"] == 0


@pytest.mark.slow
def test_round_trip_1000_inputs(capsys: pytest.CaptureFixture) -> None:
    """>= 1,000 generated tables per loader: ids, labels, texts, features equal what was written,
    or a DataError naming the file and the place; the counts are printed for the closing note."""
    counts = dict.fromkeys(ROUND_TRIP_COUNTS, 0)

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(tables=written_tables())
    def run(tables) -> None:
        _round_trip(tables, counts)

    run()
    with capsys.disabled():
        print(f"\nround-trip oracle (text + tabular loaders): {counts}")
    assert counts["inputs"] >= 2000
    assert counts["silent changes"] == 0 and counts["refused but valid"] == 0


IMAGE_ARRAYS = st.lists(
    st.tuples(st.sampled_from(["L", "I;16", "RGB", "I", "F"]), st.integers(0, 2**16 - 1)),
    min_size=2,
    max_size=6,
)
IMAGE_SIZES = st.tuples(st.integers(1, 5), st.integers(1, 5))


def _image_round_trip(arrays, size, counts: dict[str, int]) -> None:
    """Write images of several bit depths; each loads as its documented [0, 1] value, exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        want = {}
        for k, (mode, seed) in enumerate(arrays):
            rng = np.random.default_rng(seed)
            ext = "tif" if mode in ("I", "F") else "png"
            if mode == "RGB":
                a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                x = a.transpose(2, 0, 1) / 255.0
            else:
                a, scale = {
                    "L": (rng.integers(0, 256, size=size, dtype=np.uint8), 255.0),
                    "I;16": (rng.integers(0, 2**16, size=size, dtype=np.uint16), 65535.0),
                    "I": (rng.integers(0, 2**31 - 1, size=size, dtype=np.int32), 2.0**31 - 1),
                    "F": (rng.random(size, dtype=np.float32), 1.0),
                }[mode]
                x = np.broadcast_to(a / scale, (3, *size))
            (root / f"c{k % 2}").mkdir(exist_ok=True)
            Image.fromarray(a).save(root / f"c{k % 2}" / f"{k}.{ext}")
            want[f"c{k % 2}/{k}.{ext}"] = x
        counts["inputs"] += 1
        s = load_image_folder(root, grayscale=False, val_fraction=0.0, test_fraction=0.0)
        for i, x in zip(s.train.ids, s.train.inputs, strict=True):
            if not np.allclose(x.numpy(), want[i].astype(np.float32), rtol=0, atol=1e-7):
                counts["silent changes"] += 1
                raise AssertionError(f"{i}: pixels differ from what was written")
        counts["loaded"] += 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=IMAGE_ARRAYS, size=IMAGE_SIZES)
def test_image_round_trip(arrays, size) -> None:
    """8-bit gray / RGB, 16-bit gray, int32 and float TIFF pixels load as their documented values."""
    _image_round_trip(arrays, size, {"inputs": 0, "loaded": 0, "silent changes": 0})


@pytest.mark.slow
def test_image_round_trip_1000_inputs(capsys: pytest.CaptureFixture) -> None:
    """>= 1,000 generated image folders: every pixel equals what was written (scaled by bit depth)."""
    counts = {"inputs": 0, "loaded": 0, "silent changes": 0}

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(arrays=IMAGE_ARRAYS, size=IMAGE_SIZES)
    def run(arrays, size) -> None:
        _image_round_trip(arrays, size, counts)

    run()
    with capsys.disabled():
        print(f"\nround-trip oracle (image folders): {counts}")
    assert counts["inputs"] >= 1000 and counts["silent changes"] == 0
