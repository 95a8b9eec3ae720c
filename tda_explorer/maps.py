"""2-D maps of the training set (and optionally the test set): UMAP over a chosen representation.

Representations: "penultimate" (the model's `features`, unit rows), "head_gradients" (per-example
loss gradients of the last layer — examples the model treats alike for learning sit together),
"airrep" (the embeddings `Enc(x, y)` of a fitted AirRep encoder; only when AirRep was computed for
the run, see `airrep_sources` — the encoder and its training data are then loaded from the
workspace, nothing is retrained). A map is an artifact (kind "map") keyed by run, representation
(with the AirRep settings), test inclusion and UMAP settings, so it is computed once and shared by
the app and the CLI.

Helpers for the map page: `map_hover` (hover lines; text datasets show the sentence) and
`locate_examples` (selected ids -> the ExampleSet and position to render a preview from).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tda_explorer.backend.features import representations
from tda_explorer.backend.grads import example_grads
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.store import (
    ArtifactKind,
    Workspace,
    load_array,
    register_kind,
    require_workspace,
    save_array,
)
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

REPRESENTATIONS = ("penultimate", "head_gradients", "airrep")


@dataclass
class MapResult:
    """`coords [n, 2]` float32 for `ids` (train first, then test when included); `split[i]` is "train"/"test"."""

    coords: np.ndarray
    ids: list[str]
    split: list[str]
    key: str


def _load_map(path: Path, meta: dict) -> MapResult:
    extra = meta["extra"]
    return MapResult(load_array(path / "coords.npy"), extra["ids"], extra["split"], path.name)


MAP = register_kind(
    ArtifactKind(
        "map",
        files=("coords.npy",),
        save=lambda d, coords: save_array(d, "coords", coords),
        load=_load_map,
        recompute="draw the map again (the app's Map page or `tda-explorer map ...`)",
    )
)


def airrep_sources(workspace: Workspace, run_key: str) -> list[dict]:
    """Fitted AirRep encoders of a run: one `{"score_key", "settings", "encoder_key"}` per stored AirRep
    score artifact whose encoder is still in the workspace, newest first."""
    from tda_explorer.attributors.airrep.train import ENCODER_KIND
    from tda_explorer.attributors.scores import list_scores

    out = []
    for meta in list_scores(workspace, run_key):
        method = meta["config"]["method"]
        encoder_key = meta.get("extra", {}).get("airrep", {}).get("encoder_key")
        if method.get("method") != "airrep" or not encoder_key:
            continue
        if workspace.path(ENCODER_KIND, encoder_key).exists():
            settings = {k: v for k, v in method.items() if k != "method"}
            out.append({"score_key": meta["key"], "settings": settings, "encoder_key": encoder_key})
    return out


def airrep_embeddings(
    run: TrainedRun, splits: DatasetSplits, settings: Mapping, include_test: bool, workspace: Workspace
) -> np.ndarray:
    """AirRep embeddings `[n, out_dim]` float32 of train (+ test) examples from a stored encoder.

    `settings`: AirRep's settings (a dict or `AirRepSettings`). ConfigError unless AirRep with these
    settings was computed for the run (see `airrep_sources`), so drawing a map never starts AirRep's subset
    retrainings.
    """
    settings = settings.as_dict() if hasattr(settings, "as_dict") else dict(settings)
    as_stored = json.loads(json.dumps(settings))  # tuples -> lists, as in the artifact's metadata
    if not any(src["settings"] == as_stored for src in airrep_sources(workspace, run.key)):
        raise ConfigError(
            "no fitted AirRep encoder with these settings: compute AirRep on the Setup page first."
        )
    from tda_explorer.attributors.base import make_attributor

    airrep = make_attributor("airrep", workspace=workspace, **settings).fit(run, splits.train)
    parts = [airrep.train_embeddings_] + ([airrep.embed(splits.test)] if include_test else [])
    return torch.cat(parts).float().numpy()


def example_representation(
    run: TrainedRun,
    splits: DatasetSplits,
    name: str,
    include_test: bool,
    airrep_settings: dict | None = None,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """Features `[n, d]` float32 of train (+ test) examples under the run's first model (or AirRep's
    encoder for `name="airrep"`, which needs `airrep_settings` of a stored AirRep result)."""
    if name not in REPRESENTATIONS:
        raise ConfigError(f"representation {name!r} is not one of {REPRESENTATIONS}.")
    if name == "airrep":
        if airrep_settings is None:
            raise ConfigError("the airrep representation needs the settings of a computed AirRep.")
        return airrep_embeddings(
            run, splits, airrep_settings, include_test, require_workspace(workspace, "example_representation")
        )
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
    airrep_settings: dict | None = None,
) -> MapResult:
    """UMAP coordinates of the run's examples (cached; see module docstring)."""
    ws = require_workspace(workspace, "compute_map")
    cfg = {
        "run": run.key,
        "representation": representation,
        **({"airrep": airrep_settings} if representation == "airrep" else {}),
        "include_test": bool(include_test),
        "n_neighbors": int(n_neighbors),
        "seed": int(seed),
        "layout": LAYOUT,
    }
    ids = list(splits.train.ids) + (list(splits.test.ids) if include_test else [])
    split = ["train"] * len(splits.train) + (["test"] * len(splits.test) if include_test else [])

    def compute() -> np.ndarray:
        if progress:
            progress(0, 2, f"{representation} features")
        feats = example_representation(run, splits, representation, include_test, airrep_settings, ws)
        if progress:
            progress(1, 2, "UMAP layout (the first map of a server compiles numba code: ~15 s)")
        coords = umap_layout(feats, n_neighbors, seed)
        if progress:
            progress(2, 2, "done")
        return coords

    return ws.cached(MAP.name, cfg, compute, extra={"ids": ids, "split": split})


# How the layout is made (part of the map's key): exact cosine k-nearest neighbours (brute force, no
# nearest-neighbour descent to compile), a PCA initialisation and 200 epochs (UMAP's own choice for large
# data). On the MNIST demo (4,000 examples, 2 loaded cores) the first map of a process takes ~20 s instead of
# 64 s, later ones ~5 s.
LAYOUT = "umap-exact-knn-pca-200"


def umap_layout(feats: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """UMAP coordinates `[n, 2]` float32 of `feats` `[n, d]` (cosine metric; see `LAYOUT`)."""
    import umap  # heavy import (numba), only when a map is computed
    from sklearn.neighbors import NearestNeighbors

    n = len(feats)
    k = max(2, min(int(n_neighbors), n - 1))
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(feats)
    dist, idx = nn.kneighbors(feats)  # each point is its own first neighbour, as in UMAP's own search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_neighbors=k, min_dist=0.1, metric="cosine", random_state=seed, n_epochs=200,
            init="pca" if n > 3 else "random", precomputed_knn=(idx, dist.astype(np.float32), None),
        )  # fmt: skip
        return reducer.fit_transform(feats).astype(np.float32)


def _hover_snippet(text: str, width: int = 60, lines: int = 4) -> str:
    """`text` escaped for plotly hover HTML and wrapped at `width` characters, at most `lines` lines."""
    import html
    import textwrap

    wrapped = textwrap.wrap(" ".join(text.split()), width)[:lines]
    if len(wrapped) == lines:
        wrapped[-1] += " …"
    return "<br>".join(html.escape(line) for line in wrapped)


def map_hover(splits: DatasetSplits, ids: list[str], split: list[str]) -> list[str]:
    """One hover text per map point (`ids[i]` from `split[i]`): `id · split · label y`, and for text
    datasets the (wrapped, escaped, shortened) sentence below it."""
    import html

    from tda_explorer.viz.render import example_text

    out = []
    for es, pos in locate_examples(splits, ids, split):
        where, label = "train" if es is splits.train else "test", es.class_names[int(es.labels[pos])]
        line = f"{html.escape(str(es.ids[pos]))} · {where} · label {html.escape(str(label))}"  # hover is HTML
        if es.kind == "text":
            line += "<br>" + _hover_snippet(example_text(es, pos, 240))
        out.append(line)
    return out


def locate_examples(
    splits: DatasetSplits, ids: list[str], split: list[str] | None = None
) -> list[tuple[ExampleSet, int]]:
    """`(ExampleSet, position)` of each id, from the training set or the test set.

    `split[i]` ("train"/"test") says where `ids[i]` lives; without it an id is looked up in the training
    set first, then the test set. ConfigError for an id in neither.
    """
    where = {"train": splits.train, "test": splits.test}
    train_pos = {i: p for p, i in enumerate(splits.train.ids)}
    test_pos = {i: p for p, i in enumerate(splits.test.ids)}
    out = []
    for j, example_id in enumerate(ids):
        if split is not None:
            es = where[split[j]]
            pos = (train_pos if es is splits.train else test_pos).get(example_id)
        elif example_id in train_pos:
            es, pos = splits.train, train_pos[example_id]
        else:
            es, pos = splits.test, test_pos.get(example_id)
        if pos is None:
            raise ConfigError(f"example id {example_id!r} is in neither the training nor the test set.")
        out.append((es, pos))
    return out
