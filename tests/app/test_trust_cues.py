"""AppTest for the trust cues: an unmeasured attributor offers a quick check that, once clicked, shows its
measured LDS; the Attribution page suggests the best measured attributor and switches to it; the Pruning
page defaults to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tda_explorer.attributors.scores import compute_scores
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.evaluation.trust import best_attributor, measure_stored, measured_lds
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("trust_ws"))
    splits = load_dataset(DatasetSpec("digits"))
    cfg = TrainConfig(lr=0.1, epochs=2, batch_size=64, checkpoints=1)
    run = train_run(splits, LogRegConfig(), cfg, [0], ws, LocalExecutor(1))
    dot = compute_scores(run, splits, "grad_dot", {"params": "head"}, "test", ws)
    cos = compute_scores(run, splits, "grad_cos", {"params": "head"}, "test", ws)
    return {"ws": ws, "run": run, "splits": splits, "dot": dot, "cos": cos}


def open_page(prepared, monkeypatch, page: str) -> AppTest:
    monkeypatch.setenv("TDA_WORKSPACE", str(prepared["ws"].root))
    monkeypatch.setenv("TDA_DEMO", "0")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_quick_check_then_best_attributor_is_suggested_and_used(prepared, monkeypatch):
    ws, run = prepared["ws"], prepared["run"]
    at = open_page(prepared, monkeypatch, "attribution")
    assert not [c for c in at.caption if c.value.startswith("Best measured")]
    check = [b for b in at.button if b.label.startswith("Quick check (20 subsets, ~")]
    assert len(check) == 1 and check[0].label.endswith(" s)")
    check[0].click()
    at.run()
    assert not at.exception, at.exception
    shown = at.selectbox(key="_w_score_key").value
    measured = measured_lds(run, ws)
    assert shown in measured and measured[shown].n_subsets == 20
    assert any(c.value.startswith(measured[shown].label()) for c in at.caption)
    assert not [b for b in at.button if b.label.startswith("Quick check")]
    # The other attributor is now measured on the stored truth (no retraining); the best is suggested.
    measure_stored(run, prepared["splits"], ws)
    best = best_attributor(run, ws)
    other = next(k for k in (prepared["dot"].key, prepared["cos"].key) if k != best.score_key)
    at.selectbox(key="_w_score_key").set_value(other)
    at.run()
    line = next(c.value for c in at.caption if c.value.startswith("Best measured on this run"))
    assert best.label() in line and best.method in line
    next(b for b in at.button if b.label == "Switch to it").click()
    at.run()
    assert at.selectbox(key="_w_score_key").value == best.score_key
    assert any(c.value.startswith("Best measured") and c.value.endswith("(shown)") for c in at.caption)

    pruning = open_page(prepared, monkeypatch, "pruning")
    picker = next(s for s in pruning.selectbox if s.label.startswith("Attributor"))
    assert picker.value is not None and best.method in picker.format_func(picker.value)
    assert best.label() in picker.format_func(picker.value)
