"""2-D maps of the training set (and optionally the test set): UMAP over a chosen representation.

Representations: "penultimate" (the model's `features`, unit rows), "head_gradients" (per-example
loss gradients of the last layer — examples the model treats alike for learning sit together).
A map is an artifact (kind "map") keyed by run, representation, test inclusion and UMAP settings,
so it is computed once and shared by the app and the CLI.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from tda_explorer.backend.features import representations
from tda_explorer.backend.grads import example_grads
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.store import Workspace, load_array, save_array
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

REPRESENTATIONS = ("penultimate", "head_gradients")


@dataclass
class MapResult:
    """`coords [n, 2]` float32 for `ids` (train first, then test when included); `split[i]` is "train"/"test"."""

    coords: np.ndarray
    ids: list[str]
    split: list[str]
    key: str


def example_representation(
    run: TrainedRun, splits: DatasetSplits, name: str, include_test: bool
) -> np.ndarray:
    """Features `[n, d]` float32 of train (+ test) examples under the run's first model."""
    if name not in REPRESENTATIONS:
        raise ConfigError(f"representation {name!r} is not one of {REPRESENTATIONS}.")
    model = run.model()
    parts = [splits.train] + ([splits.test] if include_test else [])
    out = []
    for es in parts:
        inputs = prepare_inputs(model, es.inputs)
        if name == "penultimate":
            f = representations(model, inputs)
        else:
            f = torch.nn.functional.normalize(example_grads(model, inputs, es.labels, params="head"), dim=1)
        out.append(f.detach().cpu().float().numpy())
    return np.concatenate(out)


def compute_map(
    run: TrainedRun,
    splits: DatasetSplits,
    representation: str = "penultimate",
    include_test: bool = False,
    n_neighbors: int = 15,
    seed: int = 0,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> MapResult:
    """UMAP coordinates of the run's examples (cached; see module docstring)."""
    ws = workspace or Workspace()
    cfg = {
        "run": run.key,
        "representation": representation,
        "include_test": bool(include_test),
        "n_neighbors": int(n_neighbors),
        "seed": int(seed),
    }
    ids = list(splits.train.ids) + (list(splits.test.ids) if include_test else [])
    split = ["train"] * len(splits.train) + (["test"] * len(splits.test) if include_test else [])
    if not ws.exists("map", cfg):
        if progress:
            progress(0, 2, f"{representation} features")
        feats = example_representation(run, splits, representation, include_test)
        if progress:
            progress(1, 2, "UMAP layout (first use compiles numba code: ~30 s)")
        import umap  # heavy import (numba), only when a map is computed

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coords = umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine", random_state=seed)
            coords = coords.fit_transform(feats).astype(np.float32)
        with ws.write("map", cfg, extra={"ids": ids, "split": split}) as d:
            save_array(d, "coords", coords)
        if progress:
            progress(2, 2, "done")
    path = ws.open("map", cfg)
    meta = ws.meta("map", path.name)
    return MapResult(load_array(path / "coords.npy"), meta["extra"]["ids"], meta["extra"]["split"], path.name)
