"""The built-in demo the app opens on: the MNIST 5k MLP trained over 5 seeds and two fast attributors.

`prepare_demo(workspace, progress)` trains (or reuses) the run and computes (or reuses) Grad-Dot
(last layer) and TRAK (its defaults: count sketch, every seed of the run, damping "auto") on the test set, for both measurements (true label and
predicted class, one fit each). Every product is a cached workspace
artifact, so a second call costs a few loads (times: RESULTS.md, "App").
"""

from __future__ import annotations

from dataclasses import dataclass

from tda_explorer.attributors.measurement import compute_test_scores
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.models import default_model_config
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainedRun, default_train_config, train_run
from tda_explorer.training.trainer import Progress

DEMO_DATASET = "mnist5k"
DEMO_ARCH = "mlp"
DEMO_SEEDS = 5
# (method, settings): the app's Setup defaults for each, so the demo's scores are what a click computes
DEMO_ATTRIBUTORS: tuple[tuple[str, dict], ...] = (
    ("grad_dot", {"params": "head"}),
    ("trak", {}),
)


@dataclass
class Demo:
    """The demo run and the score keys of its attributors (in `DEMO_ATTRIBUTORS` order)."""

    run: TrainedRun
    score_keys: list[str]


def prepare_demo(workspace: Workspace, progress: Progress | None = None, executor=None) -> Demo:
    """Train (or reuse) the demo run and compute (or reuse) its attributors' test scores.

    Args:
        workspace: where the artifacts go (and are reused from).
        progress: `(done, total, message)` over the whole preparation (steps: training, each attributor).
        executor: runs the seeds (default: `LocalExecutor()`, in-process for jobs this small).
    """
    steps = 1 + len(DEMO_ATTRIBUTORS)

    def stage(i: int, what: str) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total, msg: progress(i * 100 + int(100 * done / max(1, total)), steps * 100,
                                                 f"{what}: {msg}")  # fmt: skip

    splits = load_dataset(DatasetSpec(DEMO_DATASET))
    run = train_run(
        splits, default_model_config(DEMO_ARCH), default_train_config(DEMO_ARCH), range(DEMO_SEEDS),
        workspace, executor or LocalExecutor(), stage(0, f"training {DEMO_SEEDS} seeds"),
    )  # fmt: skip
    keys = []
    for i, (method, settings) in enumerate(DEMO_ATTRIBUTORS, start=1):
        result, _ = compute_test_scores(run, splits, method, settings, workspace, stage(i, method))
        keys.append(result.key)
    if progress is not None:
        progress(steps * 100, steps * 100, "demo ready")
    return Demo(run, keys)
