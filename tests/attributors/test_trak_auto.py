"""TRAK's `damping="auto"`: the held-out rule never touches the evaluation's ground truth, its fast
lambda sweep equals the attributor's own scores, and the fallback is `AUTO_FACTOR x trace / N`."""

from __future__ import annotations

import pytest
import torch

import tda_explorer.evaluation.lds as lds_module
from tda_explorer.attributors import make_attributor, trak_tuning
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import LDSConfig, compute_lds_truth
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor


def _fit_auto(run, train, val, ws):
    trak_tuning._MEMORY.clear()  # every fit recomputes or reloads its held-out losses
    att = make_attributor("trak", proj_dim=16, tune_subsets=4)
    att.workspace, att.validation = ws, val
    return att.fit(run, train)


def test_auto_never_reads_the_evaluation_ground_truth(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKERS", "1")
    run, train, queries = tiny_run
    val = queries.subset(range(6), name="val")
    ws = Workspace(tmp_path)
    before = _fit_auto(run, train, val, ws)
    assert before.tuning_.rule == "validation-lds" and before.tuning_.n_subsets == 4
    assert ws.list("lds_truth") == []  # tuning made no evaluation artifact

    # an evaluation ground truth on the same run, then every way to reach one raises
    compute_lds_truth(
        train, queries, run.model_config, run.train_config, LDSConfig(n_subsets=4), ws, LocalExecutor(1)
    )
    assert len(ws.list("lds_truth")) == 1

    def boom(*args, **kwargs):
        raise AssertionError("damping='auto' touched the LDS evaluation")

    for name in ("compute_lds_truth", "load_lds_truth", "_load", "lds_score", "lds_groups", "subset_masks"):
        monkeypatch.setattr(lds_module, name, boom)
    for method in ("open", "exists", "meta", "path"):
        original = getattr(Workspace, method)

        def guarded(self, kind, *args, _original=original, **kwargs):
            if kind in (lds_module.TRUTH_KIND, lds_module.SHARD_KIND):
                boom()
            return _original(self, kind, *args, **kwargs)

        monkeypatch.setattr(Workspace, method, guarded)
    after = _fit_auto(run, train, val, ws)
    assert after.tuning_.to_dict() == before.tuning_.to_dict()
    assert after.damping_ == before.damping_


@pytest.mark.parametrize("proj_dim", [16, 96])  # primal (k < N = 48) and dual
def test_spectral_sweep_equals_group_scores(tiny_run, proj_dim):
    run, train, queries = tiny_run
    groups = torch.rand(5, len(train), generator=torch.Generator().manual_seed(0)) < 0.5
    base = make_attributor("trak", proj_dim=proj_dim, damping=0.0).fit(run, train)
    parts, scales = [], []
    for m in base.models_:
        phi = base._train_features(m)
        gram = phi.T @ phi if not m.dual else phi @ phi.T
        parts.append(
            trak_tuning.spectral_parts(gram, m.dual, phi, base._features(m, queries), groups * base.q_)
        )
        scales.append(float(gram.diagonal().sum()) / len(train))
    for c in (0.1, 1.0):
        lam = c * scales[0]  # one absolute lambda for every model
        att = make_attributor("trak", proj_dim=proj_dim, damping=lam).fit(run, train)
        pred = sum((a / (s2 + lam)) @ g.T for s2, a, g in parts) / len(parts)
        torch.testing.assert_close(pred.float(), att.score_groups(queries, groups), rtol=1e-4, atol=1e-6)


def test_fallback_without_validation_split_and_settings(tiny_run):
    run, train, _ = tiny_run  # its dataset spec is empty: no validation split to hold out
    att = make_attributor("trak", proj_dim=16).fit(run, train)
    assert att.settings.damping == "auto"
    assert att.tuning_.rule == "fallback" and att.tuning_.factor == trak_tuning.AUTO_FACTOR
    phi = att._train_features(att.models_[0])
    expected = trak_tuning.AUTO_FACTOR * float(phi.square().sum()) / len(train)
    assert att.damping_[0] == pytest.approx(expected, rel=1e-6)
    assert att.artifact_extra_["trak_regularization"]["rule"] == "fallback"
    for bad in (
        {"damping": "gcv"},
        {"damping": -1.0},
        {"tune_subsets": 1},
        {"tune_subsets": -2},
    ):
        with pytest.raises(ConfigError):
            make_attributor("trak", **bad)


def test_refine_moves_the_argmax_to_the_parabola_vertex_between_its_neighbours():
    assert trak_tuning.refine({0.0: 0.1, 1.0: 0.5, 2.0: 0.6, 5.0: 0.6, 10.0: 0.4}) == pytest.approx(10**0.5)
    assert trak_tuning.refine({0.0: 0.7, 0.01: 0.5, 0.1: 0.4}) == 0.0  # plain TRAK best: kept
    assert trak_tuning.refine({0.0: 0.1, 1.0: 0.5, 5.0: 0.61}) == 5.0  # at the grid's end: kept
    assert 2.0 <= trak_tuning.refine({0.0: 0.1, 1.0: 0.5, 2.0: 0.6, 5.0: 0.55}) <= 5.0


def test_cached_scores_record_the_auto_choice(tmp_path, monkeypatch):
    """compute_scores hands TRAK the workspace and the validation split; the choice lands in the metadata."""
    from tda_explorer.attributors.scores import compute_scores
    from tda_explorer.models import LogRegConfig
    from tda_explorer.training import LocalExecutor, TrainConfig, train_run
    from tests.fixtures import digits_head

    monkeypatch.setenv("TDA_WORKERS", "1")
    splits = digits_head(120, 30, 10, tag=[120, 30])
    ws = Workspace(tmp_path)
    cfg = TrainConfig(optimizer="sgd", lr=0.2, weight_decay=1e-3, epochs=2, batch_size=32, checkpoints=1)
    run = train_run(splits, LogRegConfig(), cfg, (0,), ws, LocalExecutor(1))
    result = compute_scores(run, splits, "trak", {"proj_dim": 32, "tune_subsets": 4}, "test", ws)
    chosen = ws.meta("scores", result.key)["extra"]["trak_regularization"]
    assert chosen["rule"] == "validation-lds" and chosen["n_queries"] == 30 and len(chosen["lambdas"]) == 1
    assert len(ws.list("trak_tune")) == 1 and ws.list("lds_truth") == []


def test_influence_auto_damping_uses_the_held_out_signal_and_only_reshifts_eigenvalues(
    tiny_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("TDA_WORKERS", "1")
    run, train, queries = tiny_run
    trak_tuning._MEMORY.clear()
    auto = make_attributor("influence", solver="ekfac")
    auto.workspace, auto.validation = Workspace(tmp_path), queries.subset(range(6), name="val")
    monkeypatch.setattr(lds_module, "compute_lds_truth", lambda *a, **k: pytest.fail("read the LDS truth"))
    auto.fit(run, train)
    tuning = auto.solve_info_[0]["tuning"]
    assert tuning["rule"] == "validation-lds" and auto.artifact_extra_["influence_damping"] == [tuning]
    assert tuning["weight_decay"] in (run.weight_decay, 0.0)  # with the run's L2 shift or without it
    peaks = [max(t.values()) for t in (tuning["table"], tuning.get("table_other_weight_decay", {0: -1.0}))]
    assert peaks[0] >= peaks[1]  # the family with the better held-out grid point won
    fixed = make_attributor(
        "influence", solver="ekfac", damping_factor=tuning["factor"], weight_decay=tuning["weight_decay"]
    ).fit(run, train)
    torch.testing.assert_close(auto.score(queries), fixed.score(queries), rtol=1e-5, atol=1e-8)
    fallback = make_attributor("influence", solver="ekfac").fit(run, train)  # no validation split
    assert fallback.solve_info_[0]["tuning"]["rule"] == "fallback"


def test_heldout_losses_written_before_workspace_cached_are_found(tiny_run, tmp_path, monkeypatch):
    """A "trak_tune" artifact written by the earlier hand-written block (same config dict) is reused as is."""
    import numpy as np

    from tda_explorer.data.example_set import examples_fingerprint
    from tda_explorer.store import save_array

    run, train, queries = tiny_run
    val = queries.subset(range(6), name="val")
    masks = np.ones((4, len(train)), dtype=bool)
    cfg = {
        "model": run.model_config.to_dict(),
        "training": run.train_config.to_dict(),
        "train": examples_fingerprint(train),
        "val": examples_fingerprint(val),
        "subsets": [trak_tuning.TUNE_SUBSET_SEED, len(masks)],
    }
    ws = Workspace(tmp_path)
    sentinel = np.arange(4 * len(val), dtype=np.float64).reshape(4, len(val)) / 7
    with ws.write("trak_tune", cfg) as d:
        save_array(d, "losses", sentinel)
    monkeypatch.setattr(
        "tda_explorer.training.runs.retrain_on_subsets",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained instead of reusing the artifact")),
    )
    trak_tuning._MEMORY.clear()
    got = trak_tuning.heldout_losses(run, train, val, masks, ws)
    assert got.dtype == sentinel.dtype and np.array_equal(got, sentinel)
    assert [m["key"] for m in ws.list("trak_tune")] == [ws.key("trak_tune", cfg)]
