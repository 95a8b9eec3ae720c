"""Text datasets from the user's tables (CSV / TSV / Parquet): texts, ids and labels kept verbatim.

A headerless tab-separated corpus (`label<TAB>text` per line, the classic format) reads with
`header=False`: columns are then named by position (`label_column="0"`, `text_column="1"`) or
by `column_names=["label", "text"]`.
"""

from __future__ import annotations

from pathlib import Path

from tda_explorer.data._common import fingerprint, make_splits, spec_dict
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.data.tables import (
    check_roles,
    choose_parts,
    id_values,
    label_classes,
    read_user_table,
    require_filled,
)


def load_text_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
    split_column: str | None = None,
    header: bool = True,
    column_names: list[str] | None = None,
) -> DatasetSplits:
    """A table of texts and labels (CSV / TSV / Parquet) as a text dataset.

    Texts are kept exactly as written (`007`, `1e5`, `NA` stay themselves); only a cell that is
    empty or whitespace is refused. Labels follow `tables.label_classes`, ids `tables.id_values`.

    Args:
        path: the file; .csv (standard quoting), .tsv (tab-separated, no quoting), .parquet / .pq.
        text_column: the column holding the texts (no cell may be empty); default "text".
        label_column: the column holding class labels; default "label".
        id_column: a column of unique example ids (kept verbatim); default "<file stem>-<row>".
        val_fraction: fraction of rows for validation (ignored with `split_column`).
        test_fraction: fraction of rows for test (ignored with `split_column`).
        seed: seed of the split.
        stratify: keep each class's share in every split (every class in every split where possible).
        split_column: a column saying `train` / `val` / `test` per row: the user's split, kept exactly.
        header: whether the first line of a CSV / TSV names the columns (else see `column_names`).
        column_names: names of the columns of a headerless file (default "0", "1", ...).

    Returns:
        DatasetSplits of kind "text" with inputs a tuple of n strings; `spec["fingerprint"]` hashes the
        file and `spec["columns"]` names the columns used.
    """
    file = Path(path).expanduser()
    table = read_user_table(file, header=header, column_names=column_names)
    roles = {"text_column": text_column, "label_column": label_column, "id_column": id_column,
             "split_column": split_column}  # fmt: skip
    check_roles(table, roles)
    texts = table.texts(text_column, "text column")
    require_filled(table, texts, text_column, "a text", "fill it in or drop the row")
    ids = id_values(table, id_column)
    labels, class_names = label_classes(table, label_column)
    columns = {"text": text_column, "label": label_column, "id": id_column, "split": split_column}
    full = ExampleSet(
        ids, tuple(texts), labels, class_names, "text", name=file.stem, meta={"columns": columns}
    )
    parts = choose_parts(table, labels, split_column, val_fraction, test_fraction, seed, stratify)
    options = {
        "text_column": text_column,
        "label_column": label_column,
        "id_column": id_column,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "stratify": stratify,
        "split_column": split_column,
        "header": header,
        "column_names": None if column_names is None else list(column_names),
    }
    spec = {**spec_dict("text", path, options, seed), "fingerprint": fingerprint([file]), "columns": columns}
    return make_splits(full, parts, spec)
