"""A preview of loaded data (what the app shows after loading) and a one-line name for a dataset spec."""

from __future__ import annotations

from pathlib import Path

from tda_explorer.data.example_set import DatasetSplits

_PARTS = ("train", "val", "test")


def describe_splits(splits: DatasetSplits) -> dict:
    """Rows, columns used and class counts per split, as a JSON-able dict.

    Args:
        splits: loaded data.

    Returns:
        `{"name", "kind", "source", "rows": {split: n}, "classes": [class names],
        "class_counts": {split: {class name: n}} (empty for regression targets), "columns": {role: column(s)} (user tables, else {}),
        "inputs": [input names] (tabular: after one-hot encoding) or the input shape,
        "preprocessing": the fitted `TablePreprocessor` dict (tabular) or None}`.
    """
    train = splits.train
    counts = {}
    for part in _PARTS:
        s = getattr(splits, part)
        if getattr(s, "is_regression", False):  # float targets: no classes to count
            counts[part] = {}
            continue
        per_class = [0] * s.n_classes
        for y in s.labels.tolist():
            per_class[y] += 1
        counts[part] = dict(zip(s.class_names, per_class, strict=True))
    path = splits.spec.get("path")
    return {
        "name": splits.spec.get("name", train.name),
        "kind": train.kind,
        "source": Path(path).name if path else splits.spec.get("name", ""),
        "rows": {part: len(getattr(splits, part)) for part in _PARTS},
        "classes": list(train.class_names),
        "class_counts": counts,
        "columns": dict(train.meta.get("columns", splits.spec.get("columns", {}))),
        "inputs": list(train.meta.get("feature_names", train.input_shape)),
        "preprocessing": train.meta.get("preprocessing"),
    }


def describe_spec(spec: dict, width: int = 60) -> str:
    """A short human name of a dataset spec dict: the built-in name, or the user file and its columns.

    e.g. `"mnist5k"`, `"tabular wine.csv (label=label; 13 features)"`,
    `"text reviews.tsv (text=1, label=0)"`, `"images shapes/"`. Cut to about `width` characters.
    """
    name = spec.get("name", "?")
    path = spec.get("path")
    if not path or name not in ("tabular", "text", "images"):
        return str(name)
    opts = spec.get("options", {}) or {}
    cols = spec.get("columns") or {}
    if name == "images":
        out = f"{name} {Path(path).name}/"
    else:
        parts = []
        if opts.get("text_column") is not None:
            parts.append(f"text={opts['text_column']}")
        parts.append(f"label={opts.get('label_column')}")
        features = cols.get("features") or opts.get("feature_columns")
        if features:
            parts.append(f"{len(features)} feature{'s' if len(features) != 1 else ''}")
        if opts.get("split_column"):
            parts.append(f"split={opts['split_column']}")
        out = f"{name} {Path(path).name} ({', '.join(parts)})"
    return out if len(out) <= width else out[: width - 1] + "…"
