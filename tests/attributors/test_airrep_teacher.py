"""AirRep distilled from a teacher: labels = summed teacher scores, cached, disjoint from the LDS subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep import AirRepDataConfig, normalise_labels
from tda_explorer.attributors.airrep import teacher as teacher_mod
from tda_explorer.attributors.airrep.teacher import TEACHER_KIND, teacher_airrep_data, teacher_effects
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import LDSConfig, subset_masks
from tda_explorer.models import LogRegConfig, build_model
from tda_explorer.store import Workspace

from .conftest import make_run
from .test_airrep import TINY_TRAIN


@pytest.fixture(scope="module")
def tiny():
    """40 training digits, 12 label queries (validation), a LogReg run with random weights."""
    s = load_digits_splits()
    torch.manual_seed(0)
    state = {
        k: v.detach().clone() for k, v in build_model(LogRegConfig(), (1, 8, 8), 10).state_dict().items()
    }
    run = make_run(LogRegConfig(), TINY_TRAIN, {0: [state]}, (1, 8, 8), 10)
    return s.train.subset(range(40)), s.val.subset(range(12)), run


def test_labels_are_the_sum_of_teacher_scores_over_members(tmp_path, tiny):
    train, val, _ = tiny
    scores = np.random.default_rng(0).normal(size=(len(val), len(train)))
    cfg = AirRepDataConfig(n_subsets=9, alpha=0.3)
    data = teacher_airrep_data(scores, train, val, {"teacher": "random"}, cfg, workspace=Workspace(tmp_path))
    assert data.masks.shape == (9, 40) and data.masks.sum(1).tolist() == [12] * 9
    for q in range(len(val)):
        for j in range(9):  # the teacher's predicted effect of S_j, summed member by member
            want = sum(scores[q, i] for i in range(40) if data.masks[j, i])
            assert data.losses[j, q] == pytest.approx(-want, abs=1e-12)
    np.testing.assert_allclose(teacher_effects(scores, data.masks), -data.losses.T, atol=1e-12)
    np.testing.assert_array_equal(data.labels, normalise_labels(data.losses))
    # A subset of larger summed score (more help) gets a larger label.
    q = 3
    order = np.argsort(-data.losses[:, q])
    assert (np.diff(data.labels[q, order]) >= 0).all()


def test_distilled_attributor_uses_the_teachers_scores_and_caches_them(tmp_path, tiny):
    train, val, run = tiny
    ws = Workspace(tmp_path)
    settings = {
        "encoder": {"dim": 8, "hidden": 16, "image_backbone": "mlp"},
        "data": {"n_subsets": 16},
        "training": {"epochs": 2, "subsets_per_step": 4, "queries_per_step": 6, "patience": 2},
    }
    teacher = make_attributor("grad_dot")
    air = make_attributor("airrep", workspace=ws, label_queries=val, teacher=teacher, **settings)
    air.fit(run, train)  # no executor: nothing is retrained
    assert not ws.list("airrep_shard") and len(ws.list(TEACHER_KIND)) == 1
    want = -(teacher.score(val).double() @ torch.from_numpy(air.data_.masks).double().T).numpy().T
    np.testing.assert_allclose(air.data_.losses, want, rtol=1e-6, atol=1e-9)
    assert air.artifact_extra_["airrep"]["teacher"] == "grad_dot"
    # Cached: a second fit with an unfitted teacher never fits nor scores it.
    lazy = make_attributor("grad_dot")
    lazy.fit = lazy.score = None  # would raise TypeError if called
    again = make_attributor("airrep", workspace=ws, label_queries=val, teacher=lazy, **settings)
    again.fit(run, train)
    assert again.data_.key == air.data_.key
    torch.testing.assert_close(again.train_embeddings_, air.train_embeddings_)


def test_teacher_subsets_are_disjoint_from_the_evaluation_subsets(tmp_path, tiny, monkeypatch):
    train, val, _ = tiny
    scores = np.zeros((len(val), len(train)))
    cfg = AirRepDataConfig(n_subsets=200, alpha=0.5, eval_n_subsets=100, eval_alpha=0.5)
    data = teacher_airrep_data(scores, train, val, {"t": 0}, cfg, workspace=Workspace(tmp_path / "a"))
    evaluation = subset_masks(len(train), LDSConfig(n_subsets=100, alpha=0.5, subset_seed=0))
    assert not (data.masks[:, None, :] == evaluation[None]).all(-1).any()
    # If the training subsets were the evaluation ones, the data is refused (not silently made).
    monkeypatch.setattr(teacher_mod, "training_subset_masks", lambda n, c: evaluation[:5])
    with pytest.raises(ConfigError, match="identical"):
        teacher_airrep_data(scores, train, val, {"t": 0}, cfg, workspace=Workspace(tmp_path / "b"))
    with pytest.raises(ConfigError, match="subset_seed"):
        AirRepDataConfig(subset_seed=0, eval_subset_seed=0)


def test_bad_teacher_scores_are_refused(tmp_path, tiny):
    train, val, _ = tiny
    ws = Workspace(tmp_path)
    with pytest.raises(ConfigError, match="expected"):
        teacher_airrep_data(np.zeros((3, 40)), train, val, {}, AirRepDataConfig(n_subsets=4), workspace=ws)
    bad = np.zeros((len(val), len(train)))
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        teacher_airrep_data(bad, train, val, {}, AirRepDataConfig(n_subsets=4), workspace=ws)
    with pytest.raises(ConfigError, match="training examples"):
        teacher_airrep_data(bad, train, train.subset(range(3)), {}, workspace=ws)


def test_max_steps_cuts_encoder_training_and_keeps_old_keys(tmp_path, tiny):
    from tda_explorer.attributors.airrep import EncoderConfig, RankTrainConfig, train_encoder
    from tda_explorer.attributors.airrep.train import ENCODER_KIND

    train, val, _ = tiny
    ws = Workspace(tmp_path)
    scores = np.random.default_rng(1).normal(size=(len(val), len(train)))
    data = teacher_airrep_data(scores, train, val, {"t": 1}, AirRepDataConfig(n_subsets=20), workspace=ws)
    enc = EncoderConfig(dim=4, hidden=8, image_backbone="mlp")
    # 16 training subsets / 4 per step x 10 queries / 5 per step = 8 steps an epoch; 3 epochs would be 24.
    cfg = RankTrainConfig(epochs=3, subsets_per_step=4, queries_per_step=5, patience=3, max_steps=11)
    trained = train_encoder(data, train, val, enc, cfg, workspace=ws)
    assert ws.meta(ENCODER_KIND, trained.key)["extra"]["steps"] == 11
    assert [h["epoch"] for h in trained.history] == [-1, 0, 1]  # the second epoch cut after 3 steps
    assert "max_steps" not in RankTrainConfig().to_dict()  # encoders trained before keep their keys
    with pytest.raises(ConfigError, match="max_steps"):
        RankTrainConfig(max_steps=0)
