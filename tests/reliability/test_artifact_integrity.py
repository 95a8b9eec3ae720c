"""Issue 20 items 10-11 end to end: seeds >= 1 everywhere, `runs` survives a bad run, inconsistent or
damaged artifacts of a real run raise ArtifactError (never IndexError/KeyError/ZeroDivisionError)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tda_explorer.attributors.scores import load_scores
from tda_explorer.cli import main
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.models import LogRegConfig
from tda_explorer.store import META_FILE, Workspace, save_array
from tda_explorer.store.integrity import meta_digest
from tda_explorer.training import LocalExecutor, TrainConfig, check_run_seeds, load_run, train_run

FAST = TrainConfig(optimizer="sgd", lr=0.1, epochs=1, batch_size=128, checkpoints=2)


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0)


@pytest.fixture
def trained(tmp_path: Path, splits):
    ws = Workspace(tmp_path / "ws")
    run = train_run(splits, LogRegConfig(), FAST, [0], ws, LocalExecutor(1))
    return ws, run


def _edit_meta(directory: Path, edit, *, reseal: bool = True) -> None:
    """Edit a meta.json as a consistent writer would (re-sealed), so only the content check can object."""
    file = directory / META_FILE
    meta = json.loads(file.read_text())
    edit(meta)
    if reseal:
        meta["meta_sha256"] = meta_digest(meta)
    file.write_text(json.dumps(meta))


# --- item 10: seeds -----------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [[], (), 0.5, [1, 1], [-1], [True], ["0"]])
def test_check_run_seeds_refuses(seeds) -> None:
    with pytest.raises(ConfigError):
        check_run_seeds(seeds)


def test_check_run_seeds_accepts() -> None:
    assert check_run_seeds([0, 3]) == (0, 3) and check_run_seeds(np.int64(2)) == (2,)
    assert check_run_seeds(range(2)) == (0, 1)


def test_train_run_refuses_no_seeds_before_any_work(tmp_path: Path, splits) -> None:
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match="at least one seed"):
        train_run(splits, LogRegConfig(), FAST, [], ws, LocalExecutor(1))
    assert ws.list_runs() == []


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_cli_train_seeds_below_one_is_a_usage_error(tmp_path: Path, capsys, value: str) -> None:
    argv = ["--workspace", str(tmp_path), *"train --dataset digits --model logreg --seeds".split(), value]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "--seeds" in capsys.readouterr().err


# --- item 10: `runs` lists every readable run and names the unreadable ones -------------------------


def _fake_run(ws: Workspace, name: str, seeds: list[int], extra: dict | None) -> str:
    cfg = {"dataset": {"name": name}, "model": {"arch": "logreg"}, "train": {}, "seeds": seeds}
    with ws.write("runs", cfg, extra=extra):
        pass
    return ws.key("runs", cfg)


def test_runs_listing_survives_bad_runs(tmp_path: Path, capsys) -> None:
    ws = Workspace(tmp_path / "ws")
    good_extra = {"metrics": {"0": {"test_acc": 0.5}}, "input_shape": [4], "n_classes": 2}
    good = _fake_run(ws, "good", [0], good_extra)
    no_seeds = _fake_run(ws, "noseeds", [], {"metrics": {}, "input_shape": [4], "n_classes": 2})
    no_extra = _fake_run(ws, "noextra", [0], {})
    _edit_meta(ws.path("runs", no_extra), lambda m: m.pop("extra"))
    broken = _fake_run(ws, "broken", [1], good_extra)
    (ws.path("runs", broken) / META_FILE).write_text("{ not json")
    bad_metrics = _fake_run(ws, "badmetrics", [2], {**good_extra, "metrics": {"2": 0.5}})
    no_acc = _fake_run(ws, "noacc", [3], {**good_extra, "metrics": {"3": {"test_acc": None}}})  # NaN -> null

    assert main(["--workspace", str(ws.root), "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line for line in lines}
    assert "test_acc=0.5000" in by_key[good] and "unreadable" not in by_key[good]
    for key, reason in [
        (no_seeds, "at least one seed"),
        (no_extra, "no extra"),
        (broken, "Cannot read"),
        (bad_metrics, "metrics"),
    ]:
        assert "unreadable" in by_key[key] and reason in by_key[key], by_key[key]
    assert "test_acc=n/a" in by_key[no_acc] and "unreadable" not in by_key[no_acc]
    with pytest.raises(ArtifactError, match="at least one seed"):
        load_run(no_seeds, ws)
    with pytest.raises(ArtifactError, match="no extra"):
        load_run(no_extra, ws)


# --- item 10: inconsistent model and score metadata -------------------------------------------------


def _models_dir(ws: Workspace) -> Path:
    (d,) = [p for p in (ws.root / "models").iterdir() if not p.name.startswith(".")]
    return d


@pytest.mark.parametrize("reseal", [True, False])
def test_models_meta_listing_fewer_checkpoints_than_files(trained, reseal: bool) -> None:
    ws, run = trained
    assert len(run.checkpoints[0]) == 2
    d = _models_dir(ws)
    if reseal:
        _edit_meta(d, lambda m: m["extra"]["checkpoints"].pop())
    else:  # an artifact from before checksums: only the consistency check can see it
        _edit_meta(d, lambda m: (m["extra"]["checkpoints"].pop(), m.pop("meta_sha256")), reseal=False)
    with pytest.raises(ArtifactError) as info:
        load_run(run.key, ws)
    msg = str(info.value)
    if reseal:
        assert "lists 1 checkpoint(s)" in msg and "2 checkpoint file(s)" in msg and "delete" in msg


def test_models_meta_without_extra(trained) -> None:
    ws, run = trained
    _edit_meta(_models_dir(ws), lambda m: m.pop("extra"))
    with pytest.raises(ArtifactError, match="no checkpoint list"):
        load_run(run.key, ws)


def test_flipped_checkpoint_bytes_refuse_to_load_the_run(trained) -> None:
    ws, run = trained
    ckpt = _models_dir(ws) / "ckpt1.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as info:
        load_run(run.key, ws)
    assert "ckpt1.pt" in str(info.value) and "checksum" in str(info.value)


@pytest.mark.parametrize(
    "scores", [np.zeros((2, 5), np.float32), np.zeros((3, 4), np.float32), np.zeros(15, np.float32)]
)
def test_scores_of_the_wrong_shape(tmp_path: Path, scores: np.ndarray) -> None:
    ws = Workspace(tmp_path / "ws")
    cfg = {"run": "r", "method": {"method": "grad_dot"}, "split": "test"}
    extra = {"query_ids": ["q0", "q1", "q2"], "train_ids": [f"t{i}" for i in range(5)], "seconds": 1.0}
    with ws.write("scores", cfg, extra=extra) as d:
        save_array(d, "scores", scores)
        save_array(d, "self_influence", np.zeros(5, np.float32))
    with pytest.raises(ArtifactError) as info:
        load_scores(ws, cfg)
    assert "scores.npy has shape" in str(info.value) and "[3, 5]" in str(info.value)
