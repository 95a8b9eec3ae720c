"""Hugging Face folders as runs: `import_hf_run(folder, splits, ...)` (see `models.hf` for the model).

One seed per folder (a list of `save_pretrained` folders, e.g. fine-tunes with different seeds), or
one seed per peft adapter folder on a shared base folder. The run's model config is an `HFConfig` on
the first seed's folders (architecture, tokenizer, frozen base weights; its content hash is recorded and
checked on every build); each seed's checkpoint holds that seed's trainable parameters: every weight
of a plain model, the LoRA matrices and `modules_to_save` layers (the head) of an adapter. Re-importing
identical folders reuses the stored run; runs are keyed like `import_run`'s (the weights' bytes, the
dataset's spec, the folders).

As for `import_run`, what the package cannot know is declared: `weight_decay` (0 by default) and the
recipe (`train_config`) that methods which fine-tune or retrain need (LoRA ensembles fine-tune new
adapters on top of the imported model with it). Retraining-based evaluations (LDS ground truth,
pruning) start each retraining from the folder's weights, i.e. they measure a warm start, not a
fine-tune from the pretrained base; a user's own `train_fn` is not supported for Hugging Face runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.models import HFConfig, prepare_inputs
from tda_explorer.models.hf import HFClassifier, check_folder, folder_fingerprint
from tda_explorer.store import Workspace, default_workspace
from tda_explorer.training.artifacts import cached_seed
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.imported import _seed_cfg, store_imported_run
from tda_explorer.training.runs import (
    TrainedRun,
    accuracy,
    weights_hash,
)
from tda_explorer.training.trainer import (
    Checkpoint,
    Progress,
    TrainResult,
    model_state,
    predict_logits,
    single_thread,
)

GENERIC_LABEL = "LABEL_"  # transformers' default id2label names


def _as_list(value, what: str) -> list[str | None]:
    if value is None or isinstance(value, (str, Path)):
        return [None if value is None else str(value)]
    items = [str(v) for v in value]
    if not items:
        raise ConfigError(f"{what}: an empty list; give one folder per seed.")
    return items


def seed_folders(folder, adapter) -> list[tuple[str, str | None]]:
    """`(model folder, adapter folder or None)` per seed, from one or a list of each (lists pair up)."""
    folders, adapters = _as_list(folder, "folder"), _as_list(adapter, "adapter")
    if folders == [None]:
        raise ConfigError("import_hf_run needs the folder of a save_pretrained model.")
    if len(folders) > 1 and len(adapters) > 1 and len(folders) != len(adapters):
        raise ConfigError(
            f"{len(folders)} model folders but {len(adapters)} adapter folders; give one adapter per folder, "
            "or one base folder with several adapters."
        )
    n = max(len(folders), len(adapters))
    pairs = [(folders[min(i, len(folders) - 1)], adapters[min(i, len(adapters) - 1)]) for i in range(n)]
    out = []
    for f, a in pairs:
        f = str(check_folder(f))
        a = None if a is None else str(check_folder(a, "adapter folder"))
        out.append((f, a))
    return out


def check_class_names(model: HFClassifier, splits: DatasetSplits) -> list[str]:
    """The model's class names (`id2label` in output order); ConfigError when they are the dataset's
    class names in another order."""
    id2label = {int(k): str(v) for k, v in (model.hf_config.id2label or {}).items()}
    names = [id2label.get(i, "") for i in range(len(id2label))]
    if all(n.startswith(GENERIC_LABEL) for n in names):
        return names
    lower, classes = [n.lower() for n in names], list(splits.train.class_names)
    if sorted(lower) == sorted(c.lower() for c in classes) and lower != [c.lower() for c in classes]:
        raise ConfigError(
            f"the model's classes {names} (config id2label) are the dataset's {classes} in another order: "
            "label i of the dataset must be the model's output i. Relabel the dataset to the model's order."
        )
    return names


def _seed_state(cfg: HFConfig, n_classes: int, first: dict | None, where: str):
    model = HFClassifier(cfg, n_classes)
    state = model_state(model)
    if first is not None:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != first:
            diff = sorted(set(shapes) ^ set(first)) or [k for k in shapes if shapes[k] != first.get(k)]
            raise ConfigError(
                f"{where} does not have the architecture of the first seed's folder (differs at {diff[:3]}); "
                "every seed of a run must be the same model."
            )
    return model, state


def import_hf_run(
    folder: str | Path | Sequence[str | Path],
    splits: DatasetSplits,
    *,
    adapter: str | Path | Sequence[str | Path] | None = None,
    max_length: int = 128,
    train_config: TrainConfig | None = None,
    weight_decay: float = 0.0,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> TrainedRun:
    """Import local Hugging Face sequence classifiers (one folder, or adapter, per seed) as a TrainedRun.

    Args:
        folder: a `save_pretrained` folder of an `AutoModelForSequenceClassification` (with its tokenizer),
            or a list of them (one per seed).
        splits: the text dataset the model was fine-tuned on; its class count must equal `num_labels`.
        adapter: a peft adapter folder on top of `folder`, or a list (one per seed; with one `folder`,
            all on that base). Gradients can then be restricted to `params="lora"` (LoRA + head).
        max_length: token limit per text (incl. special tokens).
        train_config: the package's recipe for methods that fine-tune or retrain (LoRA ensembles), or None.
        weight_decay: L2 coefficient of the fine-tuning objective, added to curvatures (0 by default).
        workspace: where the run is stored (default: `store.default_workspace`).
        progress: `progress(done, total, msg)` per seed.

    Returns:
        The TrainedRun (`imported` set, `model_config` an `HFConfig`); seeds 0..S-1 in folder order.

    Raises:
        ConfigError: a missing folder, `num_labels` != the dataset's classes (both named), class names in
            another order, seeds of different architectures, adapters on different base weights.
    """
    if splits.train.kind != "text":
        raise ConfigError(f"a Hugging Face text classifier needs a text dataset, got {splits.train.kind!r}.")
    if train_config is not None and not isinstance(train_config, TrainConfig):
        raise ConfigError(
            f"train_config must be a TrainConfig, got {type(train_config).__name__} (a user's train_fn is "
            "not supported for Hugging Face runs)."
        )
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}.")
    pairs = seed_folders(folder, adapter)
    n_classes = splits.train.n_classes
    if any(a is not None for _, a in pairs):
        if any(a is None for _, a in pairs):
            raise ConfigError("give an adapter for every seed, or for none.")
        bases = {folder_fingerprint(f) for f, _ in pairs}
        if len(bases) > 1:
            raise ConfigError(
                "the adapters sit on base folders with different weights; a run's seeds share one base."
            )
    ws = default_workspace(workspace)
    f0, a0 = pairs[0]
    model_cfg = HFConfig(f0, a0, max_length, fingerprint=folder_fingerprint(f0, a0))
    evals = {"train": splits.train, "val": splits.val, "test": splits.test}
    shapes, hashes, labels, checkpoints, metrics = None, [], None, {}, {}
    for seed, (f, a) in enumerate(pairs):
        where = f"seed {seed} ({f}" + (f" + {a})" if a else ")")
        model, state = _seed_state(HFConfig(f, a, max_length), n_classes, shapes, where)
        if shapes is None:
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            labels = check_class_names(model, splits)
        seed_hash = weights_hash([state])
        hashes.append(seed_hash)
        cfg = _seed_cfg(splits.spec, model_cfg, seed_hash, seed)

        def imported_seed(seed: int = seed, model=model, state: dict = state) -> tuple:
            model.eval()
            with single_thread():
                accs = {
                    f"{k}_acc": accuracy(predict_logits(model, prepare_inputs(model, es.inputs)), es.labels)
                    for k, es in evals.items()
                }
            return TrainResult(seed, [Checkpoint(state=state)], 0.0, []), accs | {
                "seconds": 0.0,
                "imported": True,
            }

        checkpoints[seed], metrics[seed] = cached_seed(ws, cfg, imported_seed)
        if progress is not None:
            progress(seed + 1, len(pairs), f"seed {seed} imported")

    info = {
        "factory": f"hf:{Path(f0).name}" + (f"+{Path(a0).name}" if a0 else ""),
        "hf": {"folders": [f for f, _ in pairs], "adapters": [a for _, a in pairs], "class_names": labels},
        "weights": hashes,
        "weight_decay": float(weight_decay),
        "task": "classification",
    }
    return store_imported_run(ws, splits, model_cfg, train_config, checkpoints, metrics, info, n_classes)
