"""Bring your own model: a model trained anywhere becomes an ordinary `TrainedRun` (`import_run`).

The user gives a zero-argument `model_factory` (returns an `nn.Module` mapping a batch of the dataset's
inputs to logits `[n, C]`) and weights: one entry per seed, each a state dict, a file (`.pt`/`.pth`
loaded with `weights_only=True`, `.safetensors`), or a list of checkpoints in training order (each a
state dict / file, or `{"state": ..., "step": int, "lr": float}`). Each seed's weights are loaded
*strictly* into a fresh module; the run is stored in the workspace keyed by the weights' bytes, the
dataset's spec and the factory's name, and re-importing identical weights reuses it.

What the package cannot know is declared, never guessed: `weight_decay` (the L2 term of the user's
objective, added to curvatures; 0 by default) and the training recipe that methods which retrain
need (`train_config` for the package's trainer, or `train_fn(model_factory, train_examples, seed) ->
state_dict` for the user's own loop). Without a recipe those methods raise a ConfigError that says
what to provide (`TrainedRun.require_recipe`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.models import ImportedConfig, model_config_from_dict, prepare_inputs
from tda_explorer.models.imported import (
    ImportedModel,
    call_factory,
    factory_name,
    find_head,
    register_factory,
    resolve_factory,
)
from tda_explorer.models.tasks import check_task
from tda_explorer.store import Workspace, default_workspace
from tda_explorer.training.artifacts import cached_seed, load_seed, run_summary, store_run
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.runs import (
    TrainedRun,
    TrainJob,
    accuracy,
    weights_hash,
)
from tda_explorer.training.trainer import Checkpoint, Progress, TrainResult, predict_logits, single_thread

_CHECKPOINT_FIELDS = ("step", "epoch", "lr", "segment_mean_lr", "segment_steps")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile key prefixes


@dataclass(frozen=True)
class UserTrainFn:
    """The user's training loop as a run's recipe: `fn(model_factory, train_examples, seed) -> state_dict`.

    Used wherever the package retrains the run's model (LDS ground truth, pruning, counterfactuals):
    `train_examples` is the ExampleSet to train on (a subset of the training split), `seed` the seed of
    that retraining; the returned state dict loads strictly into `model_factory()`. `fn` None (a run loaded
    in another process) = the function registered or importable under `name`, looked up when a job runs.
    """

    name: str
    fn: Callable | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"train_fn": self.name}

    def train_job(self, job: TrainJob) -> TrainResult:
        """Run one `TrainJob` with the user's loop (called by `training.runs.run_train_job`)."""
        cfg = job.model_config
        factory = resolve_factory(cfg.factory)
        examples = job.data if job.mask is None else job.data.subset(job.mask)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            fn = self.fn if self.fn is not None else resolve_factory(self.name)  # registered since loading
            state = fn(factory, examples, job.seed)
        model = ImportedModel(call_factory(factory, cfg.factory), cfg.head, cfg.task)
        load_strict(model.body, _as_state_dict(state, f"train_fn {self.name!r} result"), self.name)
        model.eval()
        with single_thread():
            logits = {
                n: predict_logits(model, prepare_inputs(model, es.inputs)) for n, es in job.eval_sets.items()
            }
        ckpts = [Checkpoint(state=full_state(model))] if job.keep_checkpoints else []
        return TrainResult(job.seed, ckpts, time.perf_counter() - start, [], logits)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer as detached CPU tensors (frozen weights included)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _as_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint-file layouts
            if isinstance(obj.get(key), Mapping):
                return _as_state_dict(obj[key], where)
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(
            f"{where}: expected a non-empty state dict (name -> tensor), got {type(obj).__name__}."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{where}: entries {bad[:5]} are not tensors; a state dict maps names to tensors.")
    return dict(obj)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.pt`/`.pth`/`.bin` (torch.load, weights_only=True) or `.safetensors`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"weights file {p} does not exist (or is a folder).")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(
                f"weights file {p}: unsupported type {suffix!r}; use .pt/.pth/.bin or .safetensors."
            )
    except ConfigError:
        raise
    except Exception as e:  # unpickling refused, truncated file, bad header
        raise ConfigError(f"weights file {p} could not be read: {e}") from e
    return _as_state_dict(obj, f"weights file {p}")


def _checkpoint(entry: Any, where: str) -> dict:
    """One checkpoint as `{"state": state dict, <training fields>}`."""
    if isinstance(entry, Mapping) and "state" in entry:
        unknown = set(entry) - {"state", *_CHECKPOINT_FIELDS}
        if unknown:
            raise ConfigError(
                f"{where}: unknown checkpoint fields {sorted(unknown)}; use {list(_CHECKPOINT_FIELDS)}."
            )
        info = {k: entry[k] for k in _CHECKPOINT_FIELDS if entry.get(k) is not None}
        return {"state": _checkpoint(entry["state"], where)["state"], **info}
    if isinstance(entry, (str, Path)):
        return {"state": load_weights_file(entry)}
    return {"state": _as_state_dict(entry, where)}


def _is_single(entry: Any) -> bool:
    return isinstance(entry, (str, Path, nn.Module)) or isinstance(entry, Mapping)


def parse_weights(weights: Any) -> list[list[dict]]:
    """Per seed, its checkpoints in training order (see module docstring for the accepted forms)."""
    if _is_single(weights):
        weights = [weights]
    if not isinstance(weights, Sequence) or not weights:
        raise ConfigError(
            "weights must be one entry per seed (state dict, file, or list of checkpoints); got none."
        )
    seeds = []
    for s, entry in enumerate(weights):
        items = [entry] if _is_single(entry) else list(entry)
        if not items:
            raise ConfigError(f"weights[{s}] is an empty list of checkpoints.")
        seeds.append(
            [
                _checkpoint(c, f"weights[{s}]" + (f"[{i}]" if len(items) > 1 else ""))
                for i, c in enumerate(items)
            ]
        )
    return seeds


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if not (set(state) & expected) and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` into `module` strictly; ConfigError naming missing / unexpected / mis-shaped entries."""
    expected = module.state_dict()
    state = _strip_wrapper_prefix(state, set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: weights {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(
                f"missing {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {unexpected[:5]}"
                + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
            )
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ConfigError(
            f"{where}: the weights do not fit model_factory()'s module: {', '.join(parts)}. Pass the factory "
            "that built the model these weights come from."
        )
    module.load_state_dict(state, strict=True)


def _check_logits(module: nn.Module, splits: DatasetSplits, name: str) -> torch.Tensor:
    """Run the module on a few training inputs; ConfigError unless it returns logits `[n, C]`."""
    sample = splits.train.subset(range(min(8, len(splits.train))))
    x = prepare_inputs(module, sample.inputs)
    try:
        with torch.no_grad():
            out = module.eval()(x)
    except Exception as e:
        raise ConfigError(
            f"model_factory {name!r}: the module failed on a batch of training inputs of shape "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}: {e}"
        ) from e
    n, c = len(sample), splits.train.n_outputs
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, c):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model_factory {name!r}: its module maps {n} training inputs of shape {tuple(x.shape)} to {got}; "
            f"expected outputs [{n}, {c}] ("
            + (
                "one per regression target)."
                if splits.train.is_regression
                else f"logits, one column per class: {list(splits.train.class_names)[:10]})."
            )
        )
    return x


def split_metrics(model: nn.Module, evals: dict) -> dict[str, float]:
    """`<split>_acc` per split (classification), or `<split>_mse` (regression; `_acc` is then NaN)."""
    out = {}
    for k, es in evals.items():
        outputs = predict_logits(model, prepare_inputs(model, es.inputs))
        if es.is_regression:
            target = es.labels.to(outputs.dtype).reshape(outputs.shape)
            out[f"{k}_mse"] = float((outputs - target).square().mean()) if len(es) else float("nan")
            out[f"{k}_acc"] = float("nan")
        else:
            out[f"{k}_acc"] = accuracy(outputs, es.labels)
    return out


def _structure(module: nn.Module) -> str:
    sig = ";".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return hashlib.sha256(sig.encode()).hexdigest()[:12]


def _recipe(train_config: TrainConfig | None, train_fn: Callable | str | None):
    if train_config is not None and train_fn is not None:
        raise ConfigError(
            "give either train_config (the package's trainer) or train_fn (your loop), not both."
        )
    if train_fn is None:
        if train_config is not None and not isinstance(train_config, TrainConfig):
            raise ConfigError(f"train_config must be a TrainConfig, got {type(train_config).__name__}.")
        return train_config
    name = factory_name(train_fn)
    fn = resolve_factory(name) if isinstance(train_fn, str) else train_fn
    register_factory(fn, name)
    return UserTrainFn(name, fn)


def _seed_cfg(spec: dict, model_cfg: ImportedConfig, seed_hash: str, seed: int) -> dict:
    return {"dataset": spec, "model": model_cfg.to_dict(), "imported": {"weights": seed_hash}, "seed": seed}


def import_run(
    model_factory: Callable[[], nn.Module] | str,
    weights: Any,
    splits: DatasetSplits,
    *,
    train_config: TrainConfig | None = None,
    train_fn: Callable | str | None = None,
    task: str = "classification",
    weight_decay: float = 0.0,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> TrainedRun:
    """Import a model trained anywhere as a `TrainedRun` (see the module docstring).

    Args:
        model_factory: zero-argument callable returning the `nn.Module` (or `"package.module:function"`).
        weights: one entry per seed: a state dict, a weights file, or a list of checkpoints in training
            order (state dicts / files / `{"state": ..., "step": ..., "lr": ...}` dicts). A single state
            dict or file is one seed.
        splits: the dataset the model was trained on (its `train` split is what gets attributed).
        train_config: the package's recipe that reproduces the model (for methods that retrain), or None.
        train_fn: the user's own loop `fn(model_factory, train_examples, seed) -> state_dict`, or None.
        task: "classification" (cross-entropy on the logits) or "regression" (half squared error on
            float targets); see `models.tasks`.
        weight_decay: L2 coefficient of the user's objective (`wd/2 ||theta||^2`), added to curvatures.
        workspace: where the run is stored (default: `store.default_workspace`).
        progress: `progress(done, total, msg)` per seed.

    Returns:
        The TrainedRun, with `imported` set; `seeds` are 0..S-1 in the order of `weights`.

    Raises:
        ConfigError: weights that don't load strictly, a module whose output is not `[n, C]`, bad options.
    """
    check_task(task)
    if (task == "regression") != splits.train.is_regression:
        raise ConfigError(
            f"task {task!r} does not match the data: the training targets are "
            f"{'float (regression)' if splits.train.is_regression else 'class labels (classification)'}."
        )
    if not (weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}.")
    name = factory_name(model_factory)
    factory = resolve_factory(name) if isinstance(model_factory, str) else model_factory
    register_factory(factory, name)
    recipe = _recipe(train_config, train_fn)
    per_seed = parse_weights(weights)
    ws = default_workspace(workspace)

    module = call_factory(factory, name)
    load_strict(module, per_seed[0][-1]["state"], "weights[0]")
    x = _check_logits(module, splits, name)
    model_cfg = ImportedConfig(
        factory=name, head=find_head(module.eval(), x), structure=_structure(module), task=task
    )

    hashes, checkpoints, metrics = [], {}, {}
    evals = {"train": splits.train, "val": splits.val, "test": splits.test}
    for seed, ckpts in enumerate(per_seed):
        states = []
        for i, c in enumerate(ckpts):
            m = ImportedModel(call_factory(factory, name), model_cfg.head, task)
            load_strict(m.body, c["state"], f"weights[{seed}]" + (f"[{i}]" if len(ckpts) > 1 else ""))
            states.append((m, full_state(m)))
        infos = [{k: v for k, v in c.items() if k != "state"} for c in ckpts]
        seed_hash = hashlib.sha256(
            (weights_hash([s for _, s in states]) + json.dumps(infos, sort_keys=True)).encode()
        ).hexdigest()[:16]
        hashes.append(seed_hash)
        cfg = _seed_cfg(splits.spec, model_cfg, seed_hash, seed)

        def imported_seed(seed: int = seed, states: list = states, ckpts: list = ckpts) -> tuple:
            with single_thread():
                accs = split_metrics(states[-1][0].eval(), evals)
            ckpt_objs = [
                Checkpoint(state=s, **{k: v for k, v in c.items() if k != "state"})
                for (_, s), c in zip(states, ckpts, strict=True)
            ]
            return TrainResult(seed, ckpt_objs, 0.0, []), accs | {"seconds": 0.0, "imported": True}

        checkpoints[seed], metrics[seed] = cached_seed(ws, cfg, imported_seed)
        if progress is not None:
            progress(seed + 1, len(per_seed), f"seed {seed} imported")

    info = {"factory": name, "weights": hashes, "weight_decay": float(weight_decay), "task": task}
    return store_imported_run(
        ws, splits, model_cfg, recipe, checkpoints, metrics, info, splits.train.n_outputs
    )


def store_imported_run(
    ws: Workspace,
    splits: DatasetSplits,
    model_cfg,
    recipe,
    checkpoints: dict[int, list[Checkpoint]],
    metrics: dict[int, dict],
    info: dict,
    n_outputs: int,
) -> TrainedRun:
    """Write (or reuse) the "runs" artifact of an imported run whose seeds 0..S-1 are stored; the TrainedRun.

    `info` is what was imported (factory, per-seed weight hashes, declared weight decay, task, ...)."""
    seeds = sorted(checkpoints)
    run_cfg = {
        "dataset": splits.spec,
        "model": model_cfg.to_dict(),
        "train": None if recipe is None else recipe.to_dict(),
        "seeds": seeds,
        "imported": info,
    }
    key = store_run(ws, run_cfg, run_summary(splits, metrics) | {"imported": True})
    return TrainedRun(
        key, splits.spec, model_cfg, recipe, tuple(seeds), splits.train.input_shape, n_outputs, checkpoints,
        metrics, imported=info,
    )  # fmt: skip


def load_imported_run(
    key: str,
    meta: dict,
    ws: Workspace,
    model_factory: Callable[[], nn.Module] | None = None,
    train_fn: Callable | None = None,
) -> TrainedRun:
    """An imported run from its stored meta (`load_run` calls this). Factories defined in a script are
    not importable: pass them again (`model_factory=`, `train_fn=`) or `register_factory` them."""
    cfg, extra = meta["config"], meta["extra"]
    info = cfg["imported"]
    model_cfg = model_config_from_dict(cfg["model"])  # an ImportedConfig, or an HFConfig (`imported_hf`)
    if model_factory is not None and isinstance(model_cfg, ImportedConfig):
        register_factory(model_factory, model_cfg.factory)
    train = cfg.get("train")
    if train is None:
        recipe = None
    elif "train_fn" in train:
        name = train["train_fn"]
        if train_fn is not None:
            register_factory(train_fn, name)
        # None: found by name when a job runs (registered by then, or an error saying what to pass)
        recipe = UserTrainFn(name, train_fn)
    else:
        recipe = TrainConfig.from_dict(train)
    checkpoints, metrics = {}, {}
    for seed, h in zip(cfg["seeds"], info["weights"], strict=True):
        checkpoints[seed], metrics[seed] = load_seed(ws, _seed_cfg(cfg["dataset"], model_cfg, h, seed))
    return TrainedRun(
        key,
        cfg["dataset"],
        model_cfg,
        recipe,
        tuple(cfg["seeds"]),
        tuple(extra["input_shape"]),
        int(extra["n_classes"]),
        checkpoints,
        metrics,
        imported=info,
    )
