"""SIGKILL in the middle of long work, then a rerun: it resumes from finished shards and gives the same result.

Three sharded computations run in a real child process that the test kills with SIGKILL part-way:
featurization (`scale.featurize`), LDS ground truth by subset retraining (`compute_lds_truth`) and
AirRep's training data (`generate_airrep_data`). After the kill every visible artifact is complete (a
meta file, arrays that load) and the final result is absent; the next `Workspace` open removes the dead
writer's temp files. A rerun reuses the shards saved before the kill (not rewritten) and computes the
rest; its result equals, bit for bit, an uninterrupted run in a fresh workspace.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tda_explorer.store import META_FILE, Workspace, load_array
from tda_explorer.training.trainer import single_thread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]
REPO = Path(__file__).resolve().parents[2]

WORK = r"""
import hashlib, time
import numpy as np
from tda_explorer.data import load_digits_splits
from tda_explorer.models import LogRegConfig, MLPConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_model


def work(mode, root, pause):
    ws = Workspace(root)
    digits = load_digits_splits(seed=0)
    fast = TrainConfig(optimizer="sgd", lr=0.1, epochs=2, batch_size=64, checkpoints=1)

    def progress(done, total, msg):
        print(f"PROGRESS {done} {total}", flush=True)
        time.sleep(pause)

    def digest(*arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    if mode == "featurize":
        from tda_explorer.scale.featurize import FeatureConfig, featurize
        cfg = MLPConfig(hidden=(32,))
        state = train_model(cfg, fast, digits.train, seed=0).final_state
        out = featurize(cfg, state, digits.train, FeatureConfig(projection_dim=32, shard_size=100), ws,
                        LocalExecutor(1), progress)
        return digest(np.asarray(out.array))
    if mode == "lds":
        from tda_explorer.evaluation.lds import LDSConfig, compute_lds_truth
        truth = compute_lds_truth(digits.train, digits.test, LogRegConfig(), fast,
                                  LDSConfig(n_subsets=10, seeds=(0,), shard_size=2), ws, LocalExecutor(1),
                                  progress)
        return digest(truth.masks, truth.losses, truth.logits)
    from tda_explorer.attributors.airrep.data import AirRepDataConfig, generate_airrep_data
    data = generate_airrep_data(digits.train, digits.val, (LogRegConfig(), fast),
                                AirRepDataConfig(n_subsets=10, subset_seed=1, seeds=(0,), shard_size=2),
                                workspace=ws, executor=LocalExecutor(1), progress=progress)
    return digest(data.masks, data.seed_losses, data.labels)
"""
CHILD = (
    WORK
    + r"""
import json, sys
import torch
torch.set_num_threads(1)
print("RESULT " + json.dumps({"digest": work(sys.argv[1], sys.argv[2], float(sys.argv[3]))}), flush=True)
"""
)

SHARD_KINDS = {"featurize": "feature_shard", "lds": "lds_shard", "airrep": "airrep_shard"}
FINAL_KINDS = {"featurize": "features", "lds": "lds_truth", "airrep": "airrep_data"}
KILL_AFTER = {"featurize": 3, "lds": 5, "airrep": 5}  # finished jobs reported before the kill


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("TDA_WORKSPACE", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _reference(mode: str, root: Path) -> str:
    """An uninterrupted run in this process (single-threaded like the child); its result digest."""
    namespace: dict = {}
    exec(compile(WORK, "<resume-work>", "exec"), namespace)
    with single_thread():
        return namespace["work"](mode, str(root), 0.0)


def _run(mode: str, root: Path) -> str:
    """Run the child to completion; return its result digest."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(root), "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])["digest"]


def _run_and_kill(mode: str, root: Path) -> None:
    """Start the child, wait for `KILL_AFTER[mode]` progress reports, then SIGKILL it a moment later."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(root), "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        seen = 0
        while seen < KILL_AFTER[mode]:
            line = proc.stdout.readline()
            assert line, f"child ended before the kill: {proc.stderr.read()[-3000:]}"
            # whole jobs only: in-process jobs also report fractions of themselves (epochs)
            seen += line.startswith("PROGRESS ") and float(line.split()[1]).is_integer()
        time.sleep(random.Random(mode).uniform(0.0, 0.5))  # inside the pause, or the next job / write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _artifacts(root: Path, kind: str) -> dict[str, str]:
    """key -> created time of the visible artifacts of `kind`; each one is complete."""
    out = {}
    base = root / kind
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name.startswith("."):
            continue
        meta = json.loads((d / META_FILE).read_text())  # a visible artifact always has its meta file
        for f in d.glob("*.npy"):
            load_array(f)  # and arrays that load whole
        out[d.name] = meta["created"]
    return out


def _hidden(root: Path) -> list[str]:
    return [p.name for p in root.glob("*/.*")]


@pytest.mark.parametrize("mode", ["featurize", "lds", "airrep"])
def test_sigkill_then_rerun_resumes_and_matches(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "ws"
    _run_and_kill(mode, root)
    shards = _artifacts(root, SHARD_KINDS[mode])
    assert shards, "the kill came before any shard was saved"
    assert not _artifacts(root, FINAL_KINDS[mode]), "the kill came after the end"
    Workspace(root)  # the next open removes what the dead writer left
    assert _hidden(root) == []

    resumed = _run(mode, root)
    after = _artifacts(root, SHARD_KINDS[mode])
    assert {k: after[k] for k in shards} == shards, "shards saved before the kill were recomputed"
    assert len(after) > len(shards)
    assert len(_artifacts(root, FINAL_KINDS[mode])) == 1
    assert resumed == _reference(mode, tmp_path / "fresh"), (
        "the resumed result differs from an uninterrupted run"
    )
