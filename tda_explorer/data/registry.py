"""Dataset registry: a `DatasetSpec` names a dataset exactly; `load_dataset` turns it into splits.

A spec's `to_dict()` is JSON-able and canonical (options are completed with the loader's
defaults), so it can go into artifact cache keys. `load_dataset(spec).spec` is
`spec.to_dict()` plus, where they apply, `"fingerprint"` (a hash of the user's or SST-2's files,
so edited files make new keys) and `"noise"` (see `inject_label_noise`).

Loading is cached per process (keyed by the spec and the files' size / modification time);
every call returns fresh `DatasetSplits` (own spec dicts) that share the cached tensors.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tda_explorer.data import builtins, user_files
from tda_explorer.data._common import DERIVED_SPEC_KEYS, SPEC_FIELDS, check_fraction, jsonable
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.data.noise import inject_label_noise
from tda_explorer.data.options import parse_option_text
from tda_explorer.errors import ConfigError

BUILTIN_DATASETS: tuple[str, ...] = ("mnist5k", "digits", "sst2")
"""Datasets that ship with the package (need no path; sst2 reads the shared GLUE copy by default)."""

USER_DATASETS: tuple[str, ...] = ("tabular", "text", "images")
"""Dataset kinds read from the user's files (need a path)."""

DATASET_NAMES: tuple[str, ...] = BUILTIN_DATASETS + USER_DATASETS

_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "mnist5k": builtins.load_mnist5k,
    "digits": builtins.load_digits_splits,
    "sst2": builtins.load_sst2,
    "tabular": user_files.load_tabular,
    "text": user_files.load_text_table,
    "images": user_files.load_image_folder,
}


def _loader_options(name: str) -> tuple[dict[str, object], tuple[str, ...]]:
    """`(defaults of the optional options, required option names)` from the loader's signature."""
    params = inspect.signature(_LOADERS[name]).parameters
    opts = {k: p for k, p in params.items() if k not in ("path", "seed")}
    defaults = {k: p.default for k, p in opts.items() if p.default is not inspect.Parameter.empty}
    return defaults, tuple(k for k in opts if k not in defaults)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset: which one, from where, how split, how noised.

    Attributes:
        name: one of `DATASET_NAMES` ("mnist5k", "digits", "sst2", "tabular", "text", "images").
        path: the file / folder for user datasets (required there); for "sst2" an optional folder.
        options: the loader's keyword arguments other than path and seed, e.g. `label_column`,
            `text_column`, `min_words`, `n_train`; completed with the loader's defaults.
        noise_fraction: fraction of training labels to flip, in [0, 1).
        noise_seed: seed of the label flips.
        split_seed: seed of the train / val / test split.
    """

    name: str
    path: str | None = None
    options: dict = field(default_factory=dict)
    noise_fraction: float = 0.0
    noise_seed: int = 0
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ConfigError(
                f"unknown dataset name {self.name!r}; choose one of {', '.join(DATASET_NAMES)}."
            )
        if self.path is not None and not isinstance(self.path, (str, Path)):
            raise ConfigError(f"dataset path must be a string or None, got {self.path!r}.")
        if self.name in USER_DATASETS and not self.path:
            raise ConfigError(f"dataset {self.name!r} reads your file: give its path.")
        if self.name in ("mnist5k", "digits") and self.path is not None:
            raise ConfigError(f"dataset {self.name!r} is built in and takes no path (got {self.path!r}).")
        if not isinstance(self.options, dict):
            raise ConfigError(f"dataset options must be a dict, got {type(self.options).__name__}.")
        defaults, required = _loader_options(self.name)
        unknown = sorted(set(self.options) - set(defaults) - set(required))
        if unknown:
            allowed = ", ".join(sorted([*defaults, *required])) or "(none)"
            raise ConfigError(
                f"dataset {self.name!r} has no option(s) {', '.join(unknown)}; its options are: {allowed} "
                "(the split seed and the path are not options: pass DatasetSpec(split_seed=..., path=...), "
                "or --split-seed / --path on the command line)."
            )
        missing = [k for k in required if k not in self.options]
        if missing:
            raise ConfigError(f"dataset {self.name!r} needs the option(s) {', '.join(missing)}.")
        options = jsonable({**defaults, **self.options})
        try:
            json.dumps(options)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"dataset options must be JSON-able (str, number, bool, None, list): {e}"
            ) from e
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "path", None if self.path is None else str(self.path))
        object.__setattr__(self, "noise_fraction", check_fraction(self.noise_fraction, "noise_fraction"))
        for k in ("noise_seed", "split_seed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{k} must be a non-negative integer, got {v!r}.")

    def __hash__(self) -> int:
        return hash(self.key())

    def to_dict(self) -> dict:
        """A JSON-able dict with the keys `name, path, options, noise_fraction, noise_seed, split_seed`."""
        return {k: copy.deepcopy(getattr(self, k)) for k in SPEC_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        """Inverse of `to_dict`; also accepts a loaded `DatasetSplits.spec` (ignores its derived keys)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a dataset spec must be a dict, got {type(d).__name__}.")
        unknown = sorted(set(d) - set(SPEC_FIELDS) - set(DERIVED_SPEC_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown dataset spec key(s) {', '.join(unknown)}; known: {', '.join(SPEC_FIELDS)}."
            )
        if "name" not in d:
            raise ConfigError("a dataset spec needs a 'name'.")
        return cls(**{k: copy.deepcopy(d[k]) for k in SPEC_FIELDS if k in d})

    def key(self) -> str:
        """Canonical JSON of `to_dict()` (sorted keys), for hashing."""
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_options(name: str, texts: dict[str, str]) -> dict[str, object]:
    """Loader options given as text (e.g. the CLI's `--data-option key=value`), typed by the loader.

    Each value is read by the annotation of the loader's parameter (see `data.options`), never by
    guessing: `label_column=123` stays the string "123", `feature_columns=5` is `["5"]`.

    Raises:
        ConfigError: unknown dataset, the split seed or path given as an option, or a value that
            does not read as its option's type (names the option and the expected type).
    """
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset name {name!r}; choose one of {', '.join(DATASET_NAMES)}.")
    out: dict[str, object] = {}
    for key, text in texts.items():
        if key in ("seed", "split_seed", "path"):
            flag = "--path" if key == "path" else "--split-seed"
            raise ConfigError(f"{key} is not a data option: pass it as {flag} (e.g. {flag} 1).")
        out[key] = parse_option_text(_LOADERS[name], key, text)
    return out


def _file_state(spec: DatasetSpec) -> tuple:
    """Size and mtime of the files a spec reads (part of the in-process cache key)."""
    if spec.name == "sst2":
        root = Path(spec.path).expanduser() if spec.path else builtins.SST2_DEFAULT_PATH
        paths = [root / "train.tsv", root / "dev.tsv"]
    elif spec.name in USER_DATASETS:
        root = Path(spec.path).expanduser()
        paths = sorted(root.rglob("*")) if root.is_dir() else [root]
    else:
        return ()
    state = []
    for p in paths:
        try:
            st = p.stat()
            state.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            state.append((str(p), -1, -1))
    return tuple(state)


@functools.lru_cache(maxsize=8)
def _load_cached(key: str, file_state: tuple) -> DatasetSplits:
    del file_state  # only part of the cache key
    spec = DatasetSpec.from_dict(json.loads(key))
    kwargs = dict(spec.options, seed=spec.split_seed)
    if spec.name in USER_DATASETS or (spec.name == "sst2" and spec.path is not None):
        kwargs["path"] = spec.path
    splits = _LOADERS[spec.name](**kwargs)
    out = spec.to_dict()
    for derived in ("fingerprint", "columns"):
        if derived in splits.spec:
            out[derived] = splits.spec[derived]
    splits = DatasetSplits(splits.train, splits.val, splits.test, spec=out)
    if spec.noise_fraction > 0:
        splits = inject_label_noise(splits, spec.noise_fraction, spec.noise_seed)
    return splits


def _fresh(s: ExampleSet) -> ExampleSet:
    return ExampleSet(s.ids, s.inputs, s.labels, s.class_names, s.kind, s.name, copy.deepcopy(s.meta))


def load_dataset(spec: DatasetSpec) -> DatasetSplits:
    """Load the dataset a spec names, split it, and apply its label noise.

    Args:
        spec: the dataset spec.

    Returns:
        DatasetSplits whose `spec` is `spec.to_dict()` plus "fingerprint" (user files, sst2) and
        "noise" (when `noise_fraction > 0`). Repeated calls are served from a per-process cache;
        tensors are shared between calls, dicts are not.
    """
    if not isinstance(spec, DatasetSpec):
        raise ConfigError(f"load_dataset needs a DatasetSpec, got {type(spec).__name__}.")
    cached = _load_cached(spec.key(), _file_state(spec))
    return DatasetSplits(
        train=_fresh(cached.train),
        val=_fresh(cached.val),
        test=_fresh(cached.test),
        spec=copy.deepcopy(cached.spec),
        flipped_ids=cached.flipped_ids,
        original_labels=dict(cached.original_labels),
    )


def clear_cache() -> None:
    """Forget every dataset cached by `load_dataset` (and the built-ins' raw arrays)."""
    _load_cached.cache_clear()
    builtins._mnist_arrays.cache_clear()
    builtins._digits_arrays.cache_clear()
    builtins._read_sst2_tsv.cache_clear()
