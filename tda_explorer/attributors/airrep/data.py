"""AirRep training data: subset retraining and normalised labels, cached and resumable.

For M random training subsets S_j (each `round(alpha * N)` examples, subset j drawn by
`numpy.random.default_rng([subset_seed, j])` — the same rule as the LDS subsets, so a different
`subset_seed` gives different subsets), a model is retrained on each S_j (R seeds, through an Executor)
and the loss of every label query x is recorded. The label of (x, S_j) is

    r(x, S_j) = clip((mean_k loss(x; theta_k) - loss(x; theta_j)) / std_k loss(x; theta_k), -10, 10)

over the M subsets k (std with ddof 0; a zero std counts as 1; losses are averaged over the R seeds
first). Sign: r > 0 when training on S_j gives x a lower loss than usual, i.e. S_j helps x.

Separation from the evaluation:
- label queries must not be training examples (checked by id); use the validation split, never the
  test queries the method is evaluated on;
- the subsets must differ from the LDS evaluation subsets: `subset_seed` must differ from the LDS
  `eval_subset_seed`, and `check_disjoint_subsets` asserts that no training mask equals an evaluation
  mask (ConfigError otherwise).

Caching: retraining runs in shards of `shard_size` subsets, each its own artifact (kind "airrep_shard");
an interrupted generation resumes from its finished shards. The result is the artifact "airrep_data".
"""

from __future__ import annotations

import hashlib
import numbers
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tda_explorer.backend.stats import random_subset_masks
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.models import ModelConfig
from tda_explorer.store import Workspace, load_array, require_workspace, save_array, save_arrays
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.runs import retrain_on_subsets
from tda_explorer.training.trainer import Progress

DATA_KIND = "airrep_data"
SHARD_KIND = "airrep_shard"
LABEL_CLIP = 10.0
DATA_ARRAYS = ("masks", "seed_losses", "losses", "labels", "train_ids", "query_ids")


@dataclass(frozen=True)
class AirRepDataConfig:
    """How AirRep's training data is made.

    Args:
        n_subsets: M, number of random training subsets (each retrained R times).
        alpha: subset size as a fraction of the training set, in (0, 1).
        subset_seed: seed of the subsets (subset j uses `default_rng([subset_seed, j])`).
        seeds: retraining seeds (R = len(seeds)); losses are averaged over them.
        shard_size: subsets retrained and saved together (resume granularity; not in the key).
        eval_n_subsets, eval_alpha, eval_subset_seed: the LDS evaluation subsets the training subsets
            must not repeat (defaults = `LDSConfig()`); checked, not part of the key.
    """

    n_subsets: int = 256
    alpha: float = 0.5
    subset_seed: int = 1
    seeds: tuple[int, ...] = (0,)
    shard_size: int = 32
    eval_n_subsets: int = 100
    eval_alpha: float = 0.5
    eval_subset_seed: int = 0

    def __post_init__(self) -> None:
        seeds = (self.seeds,) if isinstance(self.seeds, numbers.Integral) else tuple(self.seeds)
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"AirRep data seeds must be distinct and non-empty, got {self.seeds}.")
        for name in ("n_subsets", "shard_size", "eval_n_subsets"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, numbers.Integral)
                or v < (2 if name == "n_subsets" else 1)
            ):
                raise ConfigError(
                    f"AirRep data {name} must be a positive integer (n_subsets >= 2), got {v!r}."
                )
        for name in ("alpha", "eval_alpha"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ConfigError(f"AirRep data {name} must be in (0, 1), got {getattr(self, name)!r}.")
        if self.subset_seed == self.eval_subset_seed:
            raise ConfigError(
                f"AirRep subset_seed {self.subset_seed} equals the LDS evaluation subset seed: the encoder "
                "would be trained on the subsets it is evaluated on. Choose another subset_seed."
            )

    def subset_size(self, n_train: int) -> int:
        """`round(alpha * n_train)`; ConfigError if that leaves no example in or out."""
        k = round(self.alpha * n_train)
        if not 1 <= k < n_train:
            raise ConfigError(f"alpha={self.alpha} of {n_train} training examples gives subsets of {k}.")
        return k

    def key_dict(self) -> dict:
        """The fields that determine the data (not shard_size or the evaluation-subset check)."""
        d = asdict(self)
        for k in ("shard_size", "eval_n_subsets", "eval_alpha", "eval_subset_seed"):
            del d[k]
        return d


@dataclass(frozen=True, eq=False)
class AirRepData:
    """AirRep training data.

    Attributes:
        masks: bool `[M, N]`, `masks[j, i]` = training example i is in subset j.
        seed_losses: float64 `[M, R, n_query]`, query cross-entropy after training on S_j with each seed.
        losses: float64 `[M, n_query]`, the same averaged over seeds.
        labels: float32 `[n_query, M]`, `r(x_q, S_j)` (see module docstring; positive = S_j helps x_q).
        train_ids, query_ids: ids of the N training examples and the label queries.
        config: the AirRepDataConfig.
        key: artifact key; seconds: wall seconds spent retraining (summed over shards).
    """

    masks: np.ndarray
    seed_losses: np.ndarray
    losses: np.ndarray
    labels: np.ndarray
    train_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    config: AirRepDataConfig
    key: str
    seconds: float


def training_subset_masks(n_train: int, config: AirRepDataConfig, indices=None) -> np.ndarray:
    """Boolean masks `[len(indices), n_train]` of the training subsets (default all M)."""
    k = config.subset_size(n_train)
    rows = range(config.n_subsets) if indices is None else list(indices)
    masks = np.zeros((len(rows), n_train), dtype=bool)
    for r, j in enumerate(rows):
        masks[
            r, np.random.default_rng([config.subset_seed, int(j)]).choice(n_train, size=k, replace=False)
        ] = True
    return masks


def check_disjoint_subsets(train_masks: np.ndarray, eval_masks: np.ndarray) -> None:
    """Raise ConfigError if any training mask `[M, N]` equals an evaluation mask `[M', N]`."""
    train_masks, eval_masks = np.asarray(train_masks, bool), np.asarray(eval_masks, bool)
    if train_masks.shape[1:] != eval_masks.shape[1:]:
        return  # masks over different training sets cannot coincide
    seen = {np.packbits(m).tobytes(): j for j, m in enumerate(eval_masks)}
    for i, m in enumerate(train_masks):
        j = seen.get(np.packbits(m).tobytes())
        if j is not None:
            raise ConfigError(
                f"AirRep training subset {i} is identical to LDS evaluation subset {j}; training and "
                "evaluation subsets must be disjoint (use another subset_seed)."
            )


def evaluation_masks(n_train: int, config: AirRepDataConfig) -> np.ndarray:
    """The LDS evaluation masks `[eval_n_subsets, N]` named by `config`: the subsets `evaluation.lds` draws
    for `LDSConfig(eval_n_subsets, eval_alpha, eval_subset_seed)` (same size rule, same generator)."""
    size = round(config.eval_alpha * n_train)
    if not 1 <= size < n_train:
        raise ConfigError(f"eval_alpha={config.eval_alpha} of {n_train} examples gives subsets of {size}.")
    return random_subset_masks(n_train, size, config.eval_subset_seed, range(config.eval_n_subsets))


def normalise_labels(losses: np.ndarray) -> np.ndarray:
    """Labels `[n_query, M]` float32 from losses `[M, n_query]`: `(mean - loss) / std`, clipped to +-10.

    Mean and std (ddof 0) run over the M subsets per query; a zero std is replaced by 1.
    """
    losses = np.asarray(losses, dtype=np.float64)
    mean, std = losses.mean(0), losses.std(0)
    std = np.where(std > 0, std, 1.0)
    return np.clip((mean - losses) / std, -LABEL_CLIP, LABEL_CLIP).T.astype(np.float32)


def examples_fingerprint(examples: ExampleSet) -> str:
    """SHA-256 (16 hex) of an ExampleSet's kind, ids, labels and inputs."""
    h = hashlib.sha256()
    h.update(examples.kind.encode() + b"\x1f" + "\x1e".join(examples.ids).encode())
    h.update(examples.labels.numpy().astype("<i8").tobytes())
    if examples.kind == "text":
        h.update("\x1e".join(examples.inputs).encode())
    else:
        h.update(str(tuple(examples.inputs.shape)).encode() + examples.inputs.float().numpy().tobytes())
    return h.hexdigest()[:16]


def data_config(
    train: ExampleSet,
    queries: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    config: AirRepDataConfig,
) -> dict:
    """The config dict that keys the "airrep_data" artifact."""
    return {
        "train": {"fingerprint": examples_fingerprint(train), "n": len(train)},
        "queries": {"fingerprint": examples_fingerprint(queries), "n": len(queries)},
        "model": model_config.to_dict(),
        "training": train_config.to_dict(),
        "target": "loss",
        **config.key_dict(),
    }


def check_queries(train: ExampleSet, queries: ExampleSet) -> None:
    """ConfigError if a label query is also a training example (by id) or the kinds differ."""
    shared = set(train.ids).intersection(queries.ids)
    if shared:
        raise ConfigError(
            f"{len(shared)} AirRep label queries are training examples (e.g. {sorted(shared)[0]!r}); "
            "label queries must come from a held-out split (the validation split)."
        )
    if train.kind != queries.kind:
        raise ConfigError(f"label queries are {queries.kind} but the training set is {train.kind}.")


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-example cross-entropy float64: logits `[..., n, C]`, labels `[n]` -> `[..., n]`."""
    lead = logits.shape[:-1]
    flat = logits.double().reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, labels.expand(lead).reshape(-1), reduction="none").reshape(lead).numpy()


def generate_airrep_data(
    train: ExampleSet,
    queries: ExampleSet,
    recipe: tuple[ModelConfig, TrainConfig],
    config: AirRepDataConfig | None = None,
    *,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> AirRepData:
    """AirRep's training data, retrained or reused from `workspace` (required); see the module docstring.

    The M subsets of `train` (N examples) that `config` names (default `AirRepDataConfig()`) are each
    retrained with `recipe = (model_config, train_config)` (as for the run being explained) through
    `executor` (default `LocalExecutor()`), and every label query is scored: `queries` must be held out
    from `train` (by id; e.g. the validation split). `progress(done, total, msg)` counts the M * R
    retrainings (those of finished shards count as done).

    Returns:
        AirRepData (masks `[M, N]`, losses `[M, n_query]`, labels `[n_query, M]`).
    """
    config = config or AirRepDataConfig()
    executor = executor or LocalExecutor()
    model_config, train_config = recipe
    check_queries(train, queries)
    ws = require_workspace(workspace, "generate_airrep_data")
    n, m, r = len(train), config.n_subsets, len(config.seeds)
    masks = training_subset_masks(n, config)
    check_disjoint_subsets(masks, evaluation_masks(n, config))
    cfg = data_config(train, queries, model_config, train_config, config)
    base = {k: v for k, v in cfg.items() if k != "n_subsets"}
    shards = [(a, min(a + config.shard_size, m)) for a in range(0, m, config.shard_size)]
    done = [0]  # retrainings finished or reused, for progress

    def shard_losses(a: int, b: int) -> np.ndarray:
        """Query losses `[b - a, R, n_query]` after retraining on subsets a..b-1."""
        before = done[0]

        def report(d: int, _t: int, msg: str) -> None:
            if progress is not None:
                progress(before + d, m * r, f"AirRep data, subsets {a}-{b - 1}: {msg}")

        logits = retrain_on_subsets(
            model_config, train_config, train, masks[a:b], config.seeds, queries, executor, report
        )
        done[0] += (b - a) * r
        return _cross_entropy(logits, queries.labels)

    def shard(a: int, b: int) -> tuple[np.ndarray, float]:
        """`(seed_losses, seconds)` of one "airrep_shard" artifact (computed or reused)."""
        start = time.perf_counter()
        return ws.cached(
            SHARD_KIND,
            {**base, "subsets": [a, b]},
            lambda: shard_losses(a, b),
            save=lambda d, v: save_array(d, "seed_losses", v),
            load=lambda path, meta: (_check_shard(path, (b - a, r, len(queries))), meta["extra"]["seconds"]),
            extra=lambda _v: {"seconds": time.perf_counter() - start, "loadavg": list(os.getloadavg())},
        )

    def compute() -> dict[str, np.ndarray]:
        done[0] = sum((b - a) * r for a, b in shards if ws.exists(SHARD_KIND, {**base, "subsets": [a, b]}))
        if progress is not None and done[0]:
            progress(done[0], m * r, f"AirRep data: {done[0]} retrainings reused from finished shards")
        parts = [shard(a, b) for a, b in shards]
        seed_losses = np.concatenate([p for p, _ in parts])
        seconds[0] = sum(s for _, s in parts)
        losses = seed_losses.mean(1)
        return {
            "masks": masks,
            "seed_losses": seed_losses,
            "losses": losses,
            "labels": normalise_labels(losses),
            "train_ids": np.asarray(train.ids, dtype=str),
            "query_ids": np.asarray(queries.ids, dtype=str),
        }

    seconds = [0.0]
    extra = {"config": asdict(config), "train_name": train.name, "query_name": queries.name}
    return ws.cached(
        DATA_KIND,
        cfg,
        compute,
        load=lambda path, meta: _load(path, meta, config),
        extra=lambda _v: {**extra, "seconds": seconds[0]},
    )


def _check_shard(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    part = load_array(path / "seed_losses.npy")
    if part.shape != shape:
        raise ArtifactError(
            f"AirRep shard {path} has shape {part.shape}, expected {shape}; delete it and rerun."
        )
    return part


def _load(path: Path, meta: dict, config: AirRepDataConfig) -> AirRepData:
    return data_from_arrays({k: load_array(path / f"{k}.npy") for k in DATA_ARRAYS}, path, meta, config)


def data_from_arrays(
    arr: dict[str, np.ndarray], path: Path, meta: dict, config: AirRepDataConfig
) -> AirRepData:
    """AirRepData from a stored artifact's arrays (`DATA_ARRAYS`; without "seed_losses", the losses are
    taken as one seed's), its folder and meta; ArtifactError if the shapes do not fit `config`."""
    m, n, nq = config.n_subsets, len(arr["train_ids"]), len(arr["query_ids"])
    if arr["masks"].shape != (m, n) or arr["labels"].shape != (nq, m) or arr["losses"].shape != (m, nq):
        raise ArtifactError(f"AirRep data {path} is inconsistent; delete it and recompute.")
    return AirRepData(
        masks=arr["masks"].astype(bool),
        seed_losses=arr["seed_losses"] if "seed_losses" in arr else arr["losses"][:, None, :],
        losses=arr["losses"],
        labels=arr["labels"],
        train_ids=tuple(str(i) for i in arr["train_ids"]),
        query_ids=tuple(str(i) for i in arr["query_ids"]),
        config=config,
        key=path.name,
        seconds=float(meta["extra"]["seconds"]),
    )


register_kind(
    ArtifactKind(
        DATA_KIND,
        files=tuple(f"{k}.npy" for k in DATA_ARRAYS),
        save=save_arrays,
        recompute="make the AirRep data again (`generate_airrep_data` / fitting airrep; finished shards are reused)",
    )
)
register_kind(
    ArtifactKind(
        SHARD_KIND,
        files=("seed_losses.npy",),
        recompute="make the AirRep data again (other shards are reused)",
    )
)
