"""Sharded, resumable featurization: per-example features saved shard by shard, then one memory-mapped array.

`features[i]` is the feature row of example i (`float32 [n, d]`, rows in the order of the ExampleSet):
- kind "grad": the gradient of example i's objective ("loss" or "margin") w.r.t. a parameter subset,
  projected to `projection_dim` dims by a seeded `RandomProjector` when given (TRAK's Phi, Grad-Dot);
- kind "repr": the model's representation `model.features(x_i)`, unit rows when `normalize`.

Rows `[a, b)` form a shard (`shard_size` rows). Each shard is one job for an Executor (local processes
or Ray) and is saved as its own artifact (kind "feature_shard") in this process as soon as it finishes,
so a featurization interrupted at any point — even by SIGKILL — resumes from its finished shards, and an
artifact is either complete or absent. When all shards exist they are copied, chunk by chunk, into the
artifact of kind "features" (`features.npy` + `ids.npy`), read back with `np.load(mmap_mode="r")`.
The keys hash the model weights, the examples and the settings; the shard boundaries are in the shard
keys, not in the result's key (the last bits of a row may depend on how rows were batched).
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tda_explorer.backend.bounded import NpyWriter
from tda_explorer.backend.features import gradient_features, representations
from tda_explorer.backend.grads import OBJECTIVES, ParamSubset
from tda_explorer.backend.projection import PROJECTIONS, RandomProjector
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ArtifactError, ConfigError, check_choice
from tda_explorer.models import ModelConfig, prepare_inputs
from tda_explorer.store import Workspace, load_array, require_workspace, save_array
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.trainer import Progress, load_model

FEATURES_KIND = register_kind(
    ArtifactKind(
        "features",
        files=("features.npy", "ids.npy"),
        recompute="featurize again (finished shards of kind 'feature_shard' are reused)",
    )
).name
SHARD_KIND = "feature_shard"
FEATURE_KINDS = ("grad", "repr")


@dataclass(frozen=True)
class FeatureConfig:
    """What features are computed.

    Args:
        kind: "grad" (per-example gradients) or "repr" (`model.features`).
        params: for "grad": the parameter subset ("all", "head", or name prefixes).
        objective: for "grad": "loss" or "margin" (see `backend.grads.OBJECTIVES`).
        projection_dim: for "grad": project to this many dims (None = the raw `p`-dim gradient).
        projection_seed, projection_kind: the seeded projection ("rademacher" or "gaussian").
        normalize: for "repr": unit-normalise the rows.
        shard_size: rows per shard (the resume granularity).
    """

    kind: str = "grad"
    params: str | tuple[str, ...] = "all"
    objective: str = "loss"
    projection_dim: int | None = None
    projection_seed: int = 0
    projection_kind: str = "rademacher"
    normalize: bool = True
    shard_size: int = 1024

    def __post_init__(self) -> None:
        check_choice("feature kind", self.kind, FEATURE_KINDS)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("projection_kind", self.projection_kind, PROJECTIONS)
        if not isinstance(self.params, str):
            object.__setattr__(self, "params", tuple(str(p) for p in self.params))
        for name, minimum in (("shard_size", 1), ("projection_seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}.")
        d = self.projection_dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1):
            raise ConfigError(f"projection_dim must be a positive integer or None, got {d!r}.")

    def key_dict(self) -> dict:
        """The settings that determine the features (the ones that apply to `kind`)."""
        if self.kind == "repr":
            return {"kind": "repr", "normalize": self.normalize}
        d = asdict(self)
        del d["normalize"], d["shard_size"]
        d["params"] = d["params"] if isinstance(d["params"], str) else list(d["params"])
        return d


@dataclass(frozen=True)
class FeatureJob:
    """One shard for an Executor (picklable): the model, the shard's examples, the settings."""

    model_config: ModelConfig
    input_shape: tuple[int, ...]
    n_classes: int
    state: dict[str, torch.Tensor]
    examples: ExampleSet
    config: FeatureConfig
    start: int


def featurize_shard(job: FeatureJob) -> np.ndarray:
    """Executor entry point: the feature rows `float32 [b, d]` of one shard's examples."""
    model = load_model(job.model_config, job.input_shape, job.n_classes, job.state)
    inputs = prepare_inputs(model, job.examples.inputs)
    cfg = job.config
    if cfg.kind == "repr":
        out = representations(model, inputs, normalize=cfg.normalize)
    else:
        projector = None
        if cfg.projection_dim is not None:
            p = ParamSubset.resolve(model, cfg.params).numel
            projector = RandomProjector(p, cfg.projection_dim, cfg.projection_seed, cfg.projection_kind)
        out = gradient_features(model, inputs, job.examples.labels, cfg.params, cfg.objective, projector)
    return out.detach().float().cpu().numpy()


@dataclass(frozen=True, eq=False)
class Features:
    """Features of an ExampleSet in the workspace.

    Attributes:
        array: `float32 [n, d]`, memory-mapped read-only (`np.load(mmap_mode="r")`).
        ids: the examples' ids (row order).
        config: the FeatureConfig.
        key: the artifact key (kind "features"); path: its directory.
    """

    array: np.ndarray
    ids: tuple[str, ...]
    config: FeatureConfig
    key: str
    path: Path


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex) of a model state: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1e".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def examples_fingerprint(examples: ExampleSet) -> str:
    """SHA-256 (16 hex) of an ExampleSet's kind, ids, labels and inputs."""
    h = hashlib.sha256()
    h.update(examples.kind.encode() + b"\x1f" + "\x1e".join(examples.ids).encode())
    h.update(examples.labels.numpy().astype("<i8").tobytes())
    if examples.kind == "text":
        h.update("\x1e".join(examples.inputs).encode())
    else:
        x = examples.inputs.detach().cpu().contiguous()
        h.update(f"{x.dtype}{tuple(x.shape)}".encode() + x.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def features_config(
    model_config: ModelConfig, state: dict[str, torch.Tensor], examples: ExampleSet, config: FeatureConfig
) -> dict:
    """The config dict that keys the "features" artifact."""
    return {
        "model": model_config.to_dict(),
        "weights": state_fingerprint(state),
        "examples": {"fingerprint": examples_fingerprint(examples), "n": len(examples)},
        "dtype": "float32",
        **config.key_dict(),
    }


def featurize(
    model_config: ModelConfig,
    state: dict[str, torch.Tensor],
    examples: ExampleSet,
    config: FeatureConfig | None = None,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Features:
    """Compute (or reuse, or finish) the features of `examples` under a model; see the module docstring.

    Args:
        model_config: the model's config; `state` its weights (e.g. `run.checkpoints[seed][-1].state`).
        examples: the examples (n rows); input shape and class count come from them.
        config: what to compute (default `FeatureConfig()`: raw per-example loss gradients).
        workspace: where shards and the result are cached (required).
        executor: runs the shards (default `LocalExecutor()`; `RayExecutor` spreads them over Ray).
        progress: `progress(done, total, msg)` over shards (shards already saved count as done).

    Returns:
        Features with a memory-mapped `array [n, d]`.
    """
    config = config or FeatureConfig()
    ws = require_workspace(workspace, "featurize")
    executor = executor or LocalExecutor()
    cfg = features_config(model_config, state, examples, config)
    n, size = len(examples), config.shard_size
    shards = [(a, min(a + size, n)) for a in range(0, n, size)]

    def shard_cfg(a: int, b: int) -> dict:
        return {**cfg, "rows": [a, b]}

    def compute() -> int:  # every shard saved (missing ones computed); returns the feature width d
        if n == 0:
            raise ConfigError("featurize needs at least one example.")
        todo = [(a, b) for a, b in shards if not ws.exists(SHARD_KIND, shard_cfg(a, b))]
        done_before = len(shards) - len(todo)
        if progress is not None and done_before:
            progress(done_before, len(shards), f"features: {done_before} shard(s) reused from the workspace")
        jobs = [
            FeatureJob(
                model_config,
                examples.input_shape,
                examples.n_classes,
                state,
                examples.subset(np.arange(a, b)),
                config,
                a,
            )
            for a, b in todo
        ]

        def save_shard(i: int, rows: np.ndarray) -> None:
            a, b = todo[i]
            if rows.ndim != 2 or len(rows) != b - a:
                raise ArtifactError(f"feature shard rows {a}-{b - 1} came back with shape {rows.shape}.")
            with ws.write(SHARD_KIND, shard_cfg(a, b), extra={"rows": [a, b]}) as d:
                save_array(d, "features", rows)

        def report(done: int, _total: int, msg: str) -> None:
            if progress is not None:
                progress(done_before + done, len(shards), f"features: {msg}")

        executor.map(featurize_shard, jobs, report, on_result=save_shard)
        return _load_shard(ws, shard_cfg(*shards[0]), shards[0]).shape[1]

    def save(d: Path, dim: int) -> None:  # the shards copied, chunk by chunk, into one [n, dim] array
        with NpyWriter(d / "features.npy", (n, dim)) as writer:
            for a, b in shards:
                writer.write(_load_shard(ws, shard_cfg(a, b), (a, b)))
        save_array(d, "ids", np.asarray(examples.ids, dtype=str))

    return ws.cached(
        FEATURES_KIND,
        cfg,
        compute,
        save,
        lambda path, _meta: _load(path, config),
        extra=lambda dim: {"config": asdict(config), "n": n, "dim": dim},
    )


def _load_shard(ws: Workspace, cfg: dict, rows: tuple[int, int]) -> np.ndarray:
    arr = load_array(ws.open(SHARD_KIND, cfg) / "features.npy")
    if arr.ndim != 2 or len(arr) != rows[1] - rows[0]:
        raise ArtifactError(
            f"feature shard {ws.key(SHARD_KIND, cfg)} has shape {arr.shape}, expected {rows[1] - rows[0]} "
            "rows; delete it from the workspace and rerun."
        )
    return arr


def _load(path: Path, config: FeatureConfig) -> Features:
    array = load_array(path / "features.npy", mmap_mode="r")
    ids = tuple(str(i) for i in load_array(path / "ids.npy"))
    if array.ndim != 2 or len(array) != len(ids):
        raise ArtifactError(f"features {path} are inconsistent ({array.shape}, {len(ids)} ids); delete it.")
    return Features(array, ids, config, path.name, path)
