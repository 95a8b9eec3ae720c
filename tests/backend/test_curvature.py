"""K-FAC / EK-FAC: factors and corrected eigenvalues against brute force from per-example gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tda_explorer.backend.curvature import KroneckerCurvature
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import find_layers, flat_to_layer, layer_to_flat
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.models import CNNConfig, MLPConfig, build_model

CPU = torch.device("cpu")


def sampled_labels(model, x, seed):
    """The labels KroneckerCurvature samples (one batch, same generator)."""
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), -1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ekfac_matches_brute_force(arch):
    torch.manual_seed(0)
    cfg = MLPConfig(hidden=(5,)) if arch == "mlp" else CNNConfig(channels=(2,), dense=4)
    model = build_model(cfg, (1, 4, 4), 3).double()
    x = torch.randn(30, 1, 4, 4, dtype=torch.float64)
    curv = KroneckerCurvature(
        model, damping=0.0, weight_decay=0.01, seed=5, batch_size=64, dtype=torch.float64, device=CPU
    )
    curv.fit(x)
    y = sampled_labels(model, x, 5)
    grads = example_grads(model, x, y, dtype=torch.float64, device=CPU)  # sampled-label gradients [n, p]
    layers = find_layers(model, ParamSubset.resolve(model))
    assert [i.kind for i in layers] == (
        ["linear", "linear"] if arch == "mlp" else ["conv2d", "linear", "linear"]
    )
    dense_h = torch.zeros(grads.shape[1], grads.shape[1], dtype=torch.float64)
    for info in layers:
        f = curv.factors_[info.name]
        g = flat_to_layer(grads, info)  # [n, d_out, d_in]
        # corrected eigenvalues: E_n[(Q_S^T G_n Q_A)^2] in the K-FAC eigenbasis (not its transpose)
        torch.testing.assert_close(
            f.eigenvalues, (f.q_s.T @ g @ f.q_a).square().mean(0), rtol=1e-9, atol=1e-12
        )
        # dense EK-FAC block (row-major vec) mapped to flat-gradient coordinates
        q = torch.kron(f.q_s, f.q_a)
        block = q @ torch.diag(f.eigenvalues.flatten()) @ q.T
        pos = torch.arange(grads.shape[1], dtype=torch.float64)[None]
        flat_idx = flat_to_layer(pos, info).reshape(-1).long()  # flat position of each [d_out, d_in] entry
        dense_h[flat_idx[:, None], flat_idx[None, :]] = block
    v = torch.randn(4, grads.shape[1], dtype=torch.float64)
    want = torch.linalg.solve(dense_h + 0.01 * torch.eye(len(dense_h), dtype=torch.float64), v.T).T
    torch.testing.assert_close(curv.inverse_hvp(v), want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(curv.quadratic(v), (want * v).sum(1), rtol=1e-8, atol=1e-10)


def test_kfac_factors_match_covariances_for_linear_layers():
    torch.manual_seed(1)
    model = build_model(MLPConfig(hidden=(4,)), (5,), 3).double()
    x = torch.randn(25, 5, dtype=torch.float64)
    curv = KroneckerCurvature(
        model, corrected=False, damping=0.0, seed=2, batch_size=100, dtype=torch.float64, device=CPU
    )
    curv.fit(x)
    y = sampled_labels(model, x, 2)
    grads = example_grads(model, x, y, dtype=torch.float64, device=CPU)
    info = find_layers(model, ParamSubset.resolve(model))[-1]  # the head: a = [h, 1], ds = p - onehot
    with torch.no_grad():
        h = torch.cat([model.features(x), torch.ones(25, 1, dtype=torch.float64)], 1)
    ds = flat_to_layer(grads, info)[:, :, -1]  # bias gradient = ds
    a_cov, s_cov = h.T @ h / 25, ds.T @ ds / 25
    f = curv.factors_[info.name]
    want = torch.outer(torch.linalg.eigvalsh(s_cov), torch.linalg.eigvalsh(a_cov)).clamp_min(0)
    torch.testing.assert_close(f.eigenvalues, want.clamp_min(0), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(
        f.q_a @ torch.diag(torch.diagonal(f.q_a.T @ a_cov @ f.q_a)) @ f.q_a.T, a_cov, rtol=1e-8, atol=1e-10
    )


def test_damping_heuristic_and_layout_roundtrip():
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(3,)), (4,), 2).double()
    curv = KroneckerCurvature(model, damping_factor=0.1, dtype=torch.float64, device=CPU)
    with pytest.raises(NotFittedError):
        curv.inverse_hvp(torch.zeros(1, 23, dtype=torch.float64))
    curv.fit(torch.randn(20, 4, dtype=torch.float64))
    for f in curv.factors_.values():
        assert f.damping == pytest.approx(0.1 * float(f.eigenvalues.mean()))
    g = torch.randn(3, ParamSubset.resolve(model).numel, dtype=torch.float64)
    out = torch.empty_like(g)
    for info in curv.layers:
        layer_to_flat(flat_to_layer(g, info), info, out)
    torch.testing.assert_close(out, g)


def test_uncovered_parameters_are_named():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.scale = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin(x) * self.scale

    with pytest.raises(ConfigError, match="scale"):
        KroneckerCurvature(Scaled(), device=CPU)
    with pytest.raises(ConfigError, match="weight and bias"):
        KroneckerCurvature(Scaled(), params=["lin.weight"], device=CPU)
