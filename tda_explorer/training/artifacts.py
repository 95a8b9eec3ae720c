"""The workspace artifacts of training: one "models" artifact per seed, one "runs" artifact per run.

- "models" (`<root>/models/<key>/`): `ckpt<i>.pt` (the i-th checkpoint's tensors, the last one is the
  final model); `meta.json` extra `{"checkpoints": [info per checkpoint], "metrics": {...}}` with
  `<split>_acc` and the wall `seconds` of training.
- "runs" (`<root>/runs/<key>/`): written last, after every seed; extra = `run_summary` (per-seed metrics,
  input shape, class count); a staged run also holds `stage_masks.npy` (bool `[n_stages, n_train]`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ArtifactError
from tda_explorer.store import Workspace, load_tensors, save_arrays, save_tensors
from tda_explorer.store.kinds import artifact_kind, register_kind
from tda_explorer.training.trainer import Checkpoint, TrainResult

SeedValue = tuple[TrainResult, dict]
"""What one seed's "models" artifact is made from: the training result and its metrics."""

_CKPT_FILE = re.compile(r"ckpt(\d+)\.pt")
_CHECKPOINT_KEYS = ("step", "epoch", "lr", "segment_mean_lr", "segment_steps")


def _seed_extra(value: SeedValue) -> dict:
    result, metrics = value
    return {"checkpoints": [c.info() for c in result.checkpoints], "metrics": metrics}


def _write_seed(directory: Path, value: SeedValue) -> None:
    for i, c in enumerate(value[0].checkpoints):
        save_tensors(directory, f"ckpt{i}", c.state)


def _read_seed(path: Path, meta: dict) -> tuple[list[Checkpoint], dict]:
    """One seed's checkpoints and metrics from its "models" artifact folder and meta.

    Raises:
        ArtifactError: `meta.json` does not describe the checkpoint files the folder holds (e.g. lists
            fewer checkpoints than there are `ckpt<i>.pt` files, which would silently make another
            checkpoint the final model); the message says to delete the folder and retrain.
    """
    fix = f"delete {path} and run the training again (the other seeds are reused)"
    extra = meta.get("extra")
    infos = extra.get("checkpoints") if isinstance(extra, dict) else None
    metrics = extra.get("metrics") if isinstance(extra, dict) else None
    if not isinstance(infos, list) or not infos or not isinstance(metrics, dict):
        raise ArtifactError(
            f"models artifact {path.name} ({path}): meta.json has no checkpoint list or metrics; {fix}."
        )
    files = sorted(int(m.group(1)) for f in path.iterdir() if (m := _CKPT_FILE.fullmatch(f.name)))
    if files != list(range(len(infos))):
        raise ArtifactError(
            f"models artifact {path.name} ({path}): meta.json lists {len(infos)} checkpoint(s) but the folder "
            f"holds {len(files)} checkpoint file(s) {[f'ckpt{i}.pt' for i in files][:8]}; {fix}."
        )
    ckpts = []
    for i, info in enumerate(infos):
        if not isinstance(info, dict):
            raise ArtifactError(
                f"models artifact {path.name} ({path}): checkpoint {i} in meta.json is not a mapping; {fix}."
            )
        fields = {k: info[k] for k in (*_CHECKPOINT_KEYS, "stage") if k in info}  # imported: may be None
        ckpts.append(Checkpoint(state=load_tensors(path / f"ckpt{i}.pt"), **fields))
    return ckpts, metrics


MODELS = register_kind(
    replace(artifact_kind("models"), files=("ckpt0.pt",), save=_write_seed, load=_read_seed)
)


def save_seed(ws: Workspace, cfg: dict, result: TrainResult, metrics: dict) -> None:
    """Write one seed's "models" artifact (replacing one with the same config)."""
    value = (result, metrics)
    with ws.write(MODELS.name, cfg, extra=_seed_extra(value)) as d:
        _write_seed(d, value)


def load_seed(ws: Workspace, cfg: dict) -> tuple[list[Checkpoint], dict]:
    """One seed's `(checkpoints, metrics)` from its "models" artifact.

    Raises:
        ArtifactError: The artifact is missing or inconsistent (see `_read_seed`).
    """
    path = ws.open(MODELS.name, cfg)
    return _read_seed(path, ws.meta(MODELS.name, path.name))


def cached_seed(ws: Workspace, cfg: dict, compute: Callable[[], SeedValue]) -> tuple[list[Checkpoint], dict]:
    """One seed's `(checkpoints, metrics)`, made by `compute()` and stored first if not in the workspace."""
    return ws.cached(MODELS.name, cfg, compute, extra=_seed_extra)


def run_summary(splits: DatasetSplits, metrics: dict[int, dict]) -> dict:
    """The "runs" artifact's extra metadata: per-seed metrics, input shape and class count."""
    return {
        "metrics": {str(s): m for s, m in metrics.items()},
        "input_shape": list(splits.train.input_shape),
        "n_classes": splits.train.n_outputs,
    }


def store_run(ws: Workspace, cfg: dict, extra: dict[str, Any], arrays: Mapping[str, np.ndarray] = {}) -> str:  # noqa: B006
    """Write (or reuse) the "runs" artifact of `cfg`, holding `arrays` (`name -> array`); its key."""
    return ws.cached(
        "runs", cfg, lambda: arrays, save=save_arrays, load=lambda path, _meta: path.name, extra=extra
    )
