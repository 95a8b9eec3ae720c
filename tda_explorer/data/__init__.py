"""The data layer: built-in datasets, user files, label noise, and the dataset registry.

Everything returns a `DatasetSplits` (train / val / test `ExampleSet`s with stable string ids
and a JSON-able `spec`). Inputs: images `float32 [n, C, H, W]` in [0, 1] (scaled by bit depth),
tables `float32 [n, d]` (numeric columns standardised with train statistics, text columns one-hot),
texts a tuple of str; labels `int64 [n]`.

User files keep what the user wrote: ids and texts verbatim, labels as the user's strings; see
`user_files` for the rules and `describe_splits` for a preview of what was loaded.
"""

from __future__ import annotations

from tda_explorer.data.builtins import SST2_DEFAULT_PATH, load_digits_splits, load_mnist5k, load_sst2
from tda_explorer.data.example_set import KINDS, DatasetSplits, ExampleSet
from tda_explorer.data.noise import inject_label_noise
from tda_explorer.data.preview import describe_spec, describe_splits
from tda_explorer.data.registry import (
    BUILTIN_DATASETS,
    DATASET_NAMES,
    USER_DATASETS,
    DatasetSpec,
    clear_cache,
    load_dataset,
)
from tda_explorer.data.user_files import (
    IMAGE_EXTENSIONS,
    TablePreprocessor,
    load_image_folder,
    load_tabular,
    load_text_table,
    read_table,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "KINDS",
    "SST2_DEFAULT_PATH",
    "USER_DATASETS",
    "DatasetSpec",
    "DatasetSplits",
    "TablePreprocessor",
    "ExampleSet",
    "clear_cache",
    "describe_spec",
    "describe_splits",
    "inject_label_noise",
    "load_dataset",
    "load_digits_splits",
    "load_image_folder",
    "load_mnist5k",
    "load_sst2",
    "load_tabular",
    "load_text_table",
    "read_table",
]
