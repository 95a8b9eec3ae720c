"""RayExecutor on a local Ray instance (2 CPUs): the same results as LocalExecutor, bit for bit.

Covers multi-seed training (`train_run`), subset retraining (`retrain_on_subsets`), sharded gradient
featurization (`scale.featurize`), error propagation, the `make_executor` factory and `--executor ray`.
One Ray instance serves the whole module and is shut down at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.cli import build_parser, main
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.models import LogRegConfig, MLPConfig
from tda_explorer.scale.featurize import FeatureConfig, featurize
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, retrain_on_subsets, train_model, train_run
from tda_explorer.training.executor import make_executor
from tda_explorer.training.ray_executor import RayExecutor
from tda_explorer.training.runs import TrainJob, run_train_job

pytestmark = pytest.mark.slow
FAST = TrainConfig(optimizer="sgd", lr=0.1, epochs=2, batch_size=64, checkpoints=2, schedule="cosine")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(seed=0)


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    executor = RayExecutor(workers=2, init_kwargs={"include_dashboard": False})
    executor.ray()  # ray.init(num_cpus=2, include_dashboard=False, ...)
    assert ray.cluster_resources()["CPU"] == 2
    yield executor
    executor.shutdown()
    assert not ray.is_initialized()


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_subset_retraining_matches_local_bit_for_bit(digits, ray_executor) -> None:
    cfg, data = MLPConfig(hidden=(16,), dropout=0.1), digits.train
    masks = np.random.default_rng(0).random((3, len(data))) < 0.5
    calls: list[tuple[int, int]] = []
    on_ray = retrain_on_subsets(
        cfg, FAST, data, masks, [0, 1], digits.test, ray_executor, lambda d, t, m: calls.append((d, t))
    )
    local = retrain_on_subsets(cfg, FAST, data, masks, [0, 1], digits.test, LocalExecutor(1))
    assert on_ray.shape == (3, 2, len(digits.test), 10)
    assert torch.equal(on_ray, local)
    assert sorted(calls) == [(i, 6) for i in range(1, 7)]


def test_multi_seed_training_matches_local_and_saves_each_seed(digits, ray_executor, tmp_path) -> None:
    on_ray = train_run(digits, LogRegConfig(), FAST, [0, 1, 2], Workspace(tmp_path / "a"), ray_executor)
    local = train_run(digits, LogRegConfig(), FAST, [0, 1, 2], Workspace(tmp_path / "b"), LocalExecutor(1))
    assert on_ray.key == local.key
    for s in (0, 1, 2):
        assert [c.info() for c in on_ray.checkpoints[s]] == [c.info() for c in local.checkpoints[s]]
        assert all(
            _states_equal(a.state, b.state)
            for a, b in zip(on_ray.checkpoints[s], local.checkpoints[s], strict=True)
        )
    assert len(Workspace(tmp_path / "a").list("models")) == 3


def test_sharded_featurization_matches_local(digits, ray_executor, tmp_path) -> None:
    cfg = MLPConfig(hidden=(16,))
    state = train_model(cfg, FAST, digits.train, seed=0).final_state
    fc = FeatureConfig(projection_dim=24, shard_size=300)
    on_ray = featurize(cfg, state, digits.train, fc, Workspace(tmp_path / "a"), ray_executor)
    local = featurize(cfg, state, digits.train, fc, Workspace(tmp_path / "b"), LocalExecutor(1))
    assert on_ray.key == local.key and on_ray.array.shape == (len(digits.train), 24)
    # Ray workers run torch with one intra-op thread and this process with several, so the float32
    # projection sums in another order: equal to rounding, not bit for bit.
    np.testing.assert_allclose(np.asarray(on_ray.array), np.asarray(local.array), rtol=1e-5, atol=1e-6)


def test_results_keep_job_order_and_errors_keep_their_type(digits, ray_executor) -> None:
    jobs = [TrainJob(LogRegConfig(), FAST, digits.train, s, eval_sets={"t": digits.test}) for s in (3, 1, 2)]
    seen: list[int] = []
    results = ray_executor.map(run_train_job, jobs, on_result=lambda i, r: seen.append(i))
    assert [r.seed for r in results] == [3, 1, 2] and sorted(seen) == [0, 1, 2]
    bad = TrainJob(LogRegConfig(), FAST, digits.train, 0, mask=np.zeros(len(digits.train), dtype=bool))
    with pytest.raises(ConfigError, match="selects no example"):
        ray_executor.map(run_train_job, [jobs[0], bad])
    assert ray_executor.map(run_train_job, []) == []


def test_cli_train_with_ray_executor(ray_executor, tmp_path, capsys) -> None:
    args = ["--workspace", str(tmp_path / "ws"), "train", "--dataset", "digits", "--model", "logreg"]
    args += ["--seeds", "2", "--epochs", "1", "--executor", "ray"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "seed 0: test acc" in out and "seed 1: test acc" in out
    import ray

    assert ray.is_initialized()  # an instance it did not start is left running


def test_make_executor_and_flags(monkeypatch) -> None:
    monkeypatch.delenv("TDA_EXECUTOR", raising=False)
    assert isinstance(make_executor(), LocalExecutor)
    assert isinstance(make_executor("local", workers=1), LocalExecutor)
    ray_ex = make_executor("ray", workers=2)
    assert isinstance(ray_ex, RayExecutor) and ray_ex.workers == 2 and ray_ex.address is None
    assert make_executor(ray_address="ray://head:10001").address == "ray://head:10001"
    monkeypatch.setenv("TDA_EXECUTOR", "ray")
    assert isinstance(make_executor(), RayExecutor)
    monkeypatch.setenv("TDA_EXECUTOR", "dask")
    with pytest.raises(ConfigError, match="not one of local, ray"):
        make_executor()
    with pytest.raises(ConfigError, match="needs the Ray executor"):
        make_executor("local", ray_address="ray://head:10001")
    with pytest.raises(ConfigError):
        RayExecutor(workers=0)
    parsed = build_parser().parse_args(
        ["train", "--dataset", "digits", "--model", "logreg", "--executor", "ray", "--ray-address", "auto"]
    )
    assert parsed.executor == "ray" and parsed.ray_address == "auto"
