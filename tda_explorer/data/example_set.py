"""`ExampleSet`: the one container of examples that flows through the package.

An ExampleSet holds, for n examples:
- `ids`: stable string ids (the public identity of an example, kept through to exports),
- `inputs`: `float32` tensor `[n, C, H, W]` (kind "image", values in [0, 1]),
  `float32` tensor `[n, d]` (kind "tabular"), or a tuple of n strings (kind "text"),
- `labels`: `int64` tensor `[n]` with values in `[0, n_classes)`; for a regression set (no class names)
  float targets `[n]` or `[n, d]` (see `models.tasks`),
- `class_names`: one name per class (empty for regression targets),
- `kind`: "image" | "text" | "tabular" — tells the viewers how to draw an example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from tda_explorer.errors import DataError

Kind = Literal["image", "text", "tabular"]
KINDS: tuple[str, ...] = ("image", "text", "tabular")


@dataclass(frozen=True)
class ExampleSet:
    """A set of labelled examples with stable string ids (see module docstring for shapes)."""

    ids: tuple[str, ...]
    inputs: torch.Tensor | tuple[str, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    kind: Kind
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        where = f"example set {self.name!r}" if self.name else "example set"
        if self.kind not in KINDS:
            raise DataError(f"{where}: kind {self.kind!r} is not one of {KINDS}.")
        if len(self.inputs) != n or len(self.labels) != n:
            raise DataError(
                f"{where}: {n} ids but {len(self.inputs)} inputs and {len(self.labels)} labels; "
                "they must have one entry per example."
            )
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))
            raise DataError(f"{where}: id {dup!r} appears more than once; ids must be unique.")
        if self.kind == "text":
            if not isinstance(self.inputs, tuple):
                raise DataError(f"{where}: text inputs must be a tuple of strings.")
        elif not isinstance(self.inputs, torch.Tensor):
            raise DataError(f"{where}: {self.kind} inputs must be a tensor.")
        if self.is_regression:
            if not self.labels.is_floating_point():
                raise DataError(
                    f"{where}: regression targets (no class names) must be floats, got {self.labels.dtype}."
                )
            return
        if self.labels.dtype != torch.int64:
            raise DataError(f"{where}: labels must be int64, got {self.labels.dtype}.")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise DataError(
                f"{where}: labels must lie in [0, {len(self.class_names)}) "
                f"(one per class name), got range [{int(self.labels.min())}, {int(self.labels.max())}]."
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_regression(self) -> bool:
        """True for float targets without class names (a regression set)."""
        return not self.class_names and self.labels.is_floating_point()

    @property
    def n_outputs(self) -> int:
        """Model outputs per example: the class count, or the regression target's width."""
        if self.is_regression:
            return 1 if self.labels.ndim == 1 else int(self.labels.shape[1])
        return self.n_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (`(C, H, W)`, `(d,)`, or `()` for text)."""
        if self.kind == "text":
            return ()
        return tuple(self.inputs.shape[1:])

    def index_of(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of the given ids, `int64 [len(ids)]`; raises DataError naming an unknown id."""
        lookup = {k: i for i, k in enumerate(self.ids)}
        out = []
        for k in ids:
            if k not in lookup:
                raise DataError(f"id {k!r} is not in example set {self.name!r}.")
            out.append(lookup[k])
        return np.asarray(out, dtype=np.int64)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor, name: str | None = None) -> ExampleSet:
        """Examples at the given positions (int array) or where a boolean mask of length n is True."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            if idx.numel() != len(self):
                raise DataError(f"mask has length {idx.numel()}, the set has {len(self)} examples.")
            idx = idx.nonzero().flatten()
        idx = idx.long()
        pos = idx.tolist()
        inputs = tuple(self.inputs[i] for i in pos) if self.kind == "text" else self.inputs[idx]
        return ExampleSet(
            ids=tuple(self.ids[i] for i in pos),
            inputs=inputs,
            labels=self.labels[idx],
            class_names=self.class_names,
            kind=self.kind,
            name=self.name if name is None else name,
            meta=dict(self.meta),
        )

    def with_labels(self, labels: torch.Tensor) -> ExampleSet:
        """The same examples with other labels (e.g. after label-noise injection)."""
        return ExampleSet(
            self.ids,
            self.inputs,
            labels if self.is_regression else labels.to(torch.int64),
            self.class_names,
            self.kind,
            self.name,
            dict(self.meta),
        )


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset as train / validation / test ExampleSets plus a description of how it was made.

    `spec` is a JSON-able dict that identifies the data exactly (it goes into artifact keys).
    `flipped_ids` lists the training ids whose label was flipped by noise injection (empty if none).
    """

    train: ExampleSet
    val: ExampleSet
    test: ExampleSet
    spec: dict
    flipped_ids: tuple[str, ...] = ()
    original_labels: dict[str, int] = field(default_factory=dict, compare=False)


def examples_fingerprint(examples: ExampleSet) -> str:
    """SHA-256 (16 hex chars) of an ExampleSet's ids, labels, inputs, class names and kind.

    Labels are part of it, so a noisy copy of a dataset has another fingerprint than the clean one.
    """
    h = hashlib.sha256()
    h.update(examples.kind.encode())
    h.update("\x1f".join(examples.class_names).encode())
    h.update("\x1e".join(examples.ids).encode())
    h.update(examples.labels.numpy().astype("<i8").tobytes())
    if examples.kind == "text":
        h.update("\x1e".join(examples.inputs).encode())
    else:
        inputs = examples.inputs.detach().cpu().contiguous()
        h.update(str(inputs.dtype).encode() + str(tuple(inputs.shape)).encode())
        h.update(inputs.numpy().tobytes())
    return h.hexdigest()[:16]
