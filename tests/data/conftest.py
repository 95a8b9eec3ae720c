"""Fixtures for the data-layer tests: small generated files, written only under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

SST2_PATH = Path("/work/shared/data/sst2")
if not SST2_PATH.is_dir():  # same place the loader looks by default (<repo>/../shared/data/sst2)
    SST2_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"


@pytest.fixture(scope="session")
def sst2_path() -> Path:
    """The shared GLUE SST-2 copy; tests that need it skip only when it is absent."""
    if not (SST2_PATH / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2_PATH}")
    return SST2_PATH


@pytest.fixture
def table_df() -> pd.DataFrame:
    """50 rows: two numeric features, one bool feature, a string label (3 classes), an id column."""
    rng = np.random.default_rng(0)
    n = 50
    return pd.DataFrame(
        {
            "uid": [f"u{i:03d}" for i in range(n)],
            "height": rng.normal(170.0, 10.0, n).round(3),
            "weight": rng.normal(70.0, 5.0, n).round(3),
            "smoker": rng.random(n) < 0.3,
            "label": [("cat", "dog", "bird")[i % 3] for i in range(n)],
        }
    )


@pytest.fixture
def table_csv(tmp_path: Path, table_df: pd.DataFrame) -> Path:
    path = tmp_path / "animals.csv"
    table_df.to_csv(path, index=False)
    return path


@pytest.fixture
def text_df() -> pd.DataFrame:
    """30 short texts (with commas, quotes and the word null) and int labels 0/1."""
    texts = [f'review {i}: "great", fun, {"null" if i == 3 else "film"} number {i}' for i in range(30)]
    return pd.DataFrame({"id": list(range(100, 130)), "text": texts, "stars": [i % 2 for i in range(30)]})


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array ([H, W] -> mode "L", [H, W, 3] -> "RGB") as a PNG with PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes ("circle", "square"), 5 grayscale 6x4 (HxW) PNGs each; pixel value = 10 * k + class."""
    root = tmp_path / "shapes"
    for c, name in enumerate(("circle", "square")):
        for k in range(5):
            write_png(root / name / f"img{k}.png", np.full((6, 4), 10 * k + c))
    (root / "circle" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


@pytest.fixture
def png():
    """The `write_png(path, array)` helper, as a fixture (test modules do not import conftest)."""
    return write_png
