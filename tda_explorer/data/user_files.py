"""Loaders for the user's own files, gathered in one place.

- `load_tabular` (`tabular`): CSV / TSV / Parquet tables with numeric and categorical features,
  standardised with train-split statistics; stratified or user-given (`split_column`) splits.
- `load_text_table` (`texts`): tables of texts and labels, headerless TSV corpora included.
- `load_image_folder` (`images`): one sub-folder of images per class, scaled by bit depth.
- `read_table` / `read_user_table` (`tables`): every CSV / TSV cell as text, Parquet types explicit.

What the user wrote is what we keep: ids and texts verbatim, labels as the user's strings (see
`_common.map_labels` for when they are ordered as numbers), missing-value spellings (`NA`, `null`,
`None`, ...) are data in label / id / text columns. Every bad input raises `DataError` naming the
file, the row / column, and the fix.
"""

from __future__ import annotations

from tda_explorer.data.images import IMAGE_EXTENSIONS, MAX_IMAGE_SIDE, MAX_TOTAL_VALUES, load_image_folder
from tda_explorer.data.tables import TABLE_FORMATS, Table, read_table, read_user_table
from tda_explorer.data.tabular import MAX_CATEGORIES, TablePreprocessor, load_tabular
from tda_explorer.data.texts import load_text_table

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_CATEGORIES",
    "MAX_IMAGE_SIDE",
    "MAX_TOTAL_VALUES",
    "TABLE_FORMATS",
    "Table",
    "TablePreprocessor",
    "load_image_folder",
    "load_tabular",
    "load_text_table",
    "read_table",
    "read_user_table",
]
