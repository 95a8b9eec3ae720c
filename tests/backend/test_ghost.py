"""Ghost dot products equal inner products of materialised per-example gradients."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.backend.ghost import ghost_factors, ghost_supported
from tda_explorer.backend.grads import example_grads
from tda_explorer.models import CNNConfig, LogRegConfig, MLPConfig, build_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def float64(monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")


@pytest.mark.parametrize("params", ["all", "head"])
@pytest.mark.parametrize("config", [LogRegConfig(), MLPConfig(hidden=(7, 5))], ids=["logreg", "mlp"])
@pytest.mark.parametrize("objective", ["loss", "margin"])
def test_ghost_dot_and_norm_equal_materialised_gradients(config, params, objective):
    torch.manual_seed(0)
    model = build_model(config, (1, 4, 4), 3).double().eval()
    xq, yq = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    xt, yt = torch.randn(9, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gq = example_grads(model, xq, yq, params=params, objective=objective, device=CPU)
    gt = example_grads(model, xt, yt, params=params, objective=objective, device=CPU)
    fq = ghost_factors(model, xq, yq, params, objective, batch_size=4)
    ft = ghost_factors(model, xt, yt, params, objective, batch_size=4)
    torch.testing.assert_close(fq.dot(ft).double(), (gq @ gt.T).float().double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ft.sqnorm(), gt.square().sum(1), rtol=1e-10, atol=1e-12)
    cos = torch.nn.functional.normalize(gq, dim=1) @ torch.nn.functional.normalize(gt, dim=1).T
    torch.testing.assert_close(fq.normalized().dot(ft.normalized()).double(), cos.float().double())
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype


def test_ghost_is_refused_for_convolutions():
    cnn = build_model(CNNConfig(), (1, 8, 8), 3)
    assert not ghost_supported(cnn, "all")
    assert ghost_supported(build_model(MLPConfig(hidden=(7,)), (1, 4, 4), 3), "all")


def test_dense_chunks_dot_with_dense_vectors_and_group_sums(monkeypatch):
    import tda_explorer.backend.ghost as ghost

    torch.manual_seed(1)
    model = build_model(MLPConfig(hidden=(7, 5)), (1, 4, 4), 3).double().eval()
    x, y = torch.randn(11, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (11,))
    g = example_grads(model, x, y, params="all", device=CPU)
    f = ghost_factors(model, x, y, "all")
    torch.testing.assert_close(f.dense(), g)
    torch.testing.assert_close(f.dense(3, 8), g[3:8])
    torch.testing.assert_close(f.normalized().dense(), torch.nn.functional.normalize(g, dim=1))
    v = torch.randn(4, g.shape[1], dtype=torch.float64)
    monkeypatch.setattr(ghost, "DENSE_CHUNK_BYTES", g.shape[1] * 8 * 3)  # three train examples per chunk
    monkeypatch.setattr(ghost, "MIN_CHUNK_ROWS", 1)
    assert f.chunk_rows() == 3
    torch.testing.assert_close(f.dot_dense(v).double(), (v @ g.T).float().double())
    mask = torch.rand(3, 11) > 0.5
    torch.testing.assert_close(f.group_sum(mask), mask.double() @ g)


@pytest.mark.parametrize("params", ["all", "head"])
def test_sketch_of_factors_equals_sjlt_of_materialised_gradients(monkeypatch, params):
    """`factors.sketch(P)` = `P(dense gradients)` for a count-sketch projector, also in small chunks."""
    import tda_explorer.backend.ghost as ghost
    from tda_explorer.backend.projection import RandomProjector

    torch.manual_seed(2)
    model = build_model(MLPConfig(hidden=(7, 5)), (1, 4, 4), 3).double().eval()
    x, y = torch.randn(13, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (13,))
    g = example_grads(model, x, y, params=params, objective="margin", device=CPU)
    f = ghost_factors(model, x, y, params, "margin")
    proj = RandomProjector(g.shape[1], 10, seed=4, kind="sjlt", block_rows=30)
    want = proj(g)
    monkeypatch.setattr(ghost, "DENSE_CHUNK_BYTES", 8 * 17 * 3)  # a few examples per chunk
    monkeypatch.setattr(ghost, "MIN_CHUNK_ROWS", 1)
    torch.testing.assert_close(f.sketch(proj), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f.normalized().sketch(proj), proj(torch.nn.functional.normalize(g, dim=1)))
    with pytest.raises(Exception, match="sjlt"):
        f.sketch(RandomProjector(g.shape[1], 10, kind="gaussian"))
