"""Random projections: seeded, chunk-size independent, inner-product preserving; Kronecker (LoGra) form."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import find_layers, flat_to_layer
from tda_explorer.backend.projection import KroneckerProjector, RandomProjector, kronecker_features
from tda_explorer.errors import ConfigError
from tda_explorer.models import CNNConfig, MLPConfig, build_model


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sjlt"])
def test_projection_is_seeded_and_chunk_independent(kind):
    x = torch.randn(37, 2500, dtype=torch.float64)
    proj = RandomProjector(2500, 64, seed=3, kind=kind, block_rows=700)
    whole = proj(x)
    chunked = torch.cat([proj(x[s : s + 5]) for s in range(0, 37, 5)])
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)
    again = RandomProjector(2500, 64, seed=3, kind=kind, block_rows=700, cache_bytes=0)(x)
    torch.testing.assert_close(whole, again, rtol=1e-12, atol=1e-12)
    other = RandomProjector(2500, 64, seed=4, kind=kind, block_rows=700)(x)
    assert not torch.allclose(whole, other)
    torch.testing.assert_close(whole, x @ proj.matrix(torch.float64), rtol=1e-10, atol=1e-10)
    if kind == "rademacher":
        assert set(torch.unique(proj.matrix() * 8).tolist()) == {-1.0, 1.0}
    if kind == "sjlt":  # a count sketch: exactly one +-1 per input coordinate
        dense = proj.matrix()
        assert (dense.abs().sum(1) == 1).all() and set(torch.unique(dense).tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sjlt"])
def test_projection_preserves_inner_products_for_large_k(kind):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3000, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    px = RandomProjector(3000, 8192, seed=1, kind=kind)(x)
    # Johnson-Lindenstrauss: error ~ 1/sqrt(k) ~ 0.011 for unit vectors
    assert (px @ px.T - x @ x.T).abs().max() < 0.06


def test_sjlt_is_unbiased_over_seeds():
    """E[<xP, yP>] = <x, y>: the mean over 400 seeds of a small (k = 16) sketch is within 4 standard errors."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 200, generator=gen, dtype=torch.float64)
    est = torch.stack(
        [
            (lambda P: (x @ P) @ (y @ P))(RandomProjector(200, 16, seed=s, kind="sjlt").matrix(torch.float64))
            for s in range(400)
        ]
    )
    assert abs(est.mean() - x @ y) < 4 * est.std() / 20


def test_projection_rejects_bad_input():
    with pytest.raises(ConfigError):
        RandomProjector(10, 4, kind="sparse")
    with pytest.raises(ConfigError):
        RandomProjector(10, 4)(torch.zeros(2, 11))


def test_kronecker_projection_equals_dense_kronecker_matrix():
    a = torch.randn(5, 3, 7, dtype=torch.float64)  # [B, L, d_in]
    ds = torch.randn(5, 3, 4, dtype=torch.float64)  # [B, L, d_out]
    proj = KroneckerProjector(7, 4, k_in=6, k_out=3, seed=2, kind="gaussian")
    full = torch.einsum("blo,bli->boi", ds, a).reshape(5, -1)  # vec(G), row-major [d_out, d_in]
    torch.testing.assert_close(
        proj.project(a, ds), full @ proj.matrix(torch.float64).T, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_kronecker_features_equal_projected_full_layer_gradients(arch):
    torch.manual_seed(0)
    cfg = MLPConfig(hidden=(6,)) if arch == "mlp" else CNNConfig(channels=(2,), dense=5)
    model = build_model(cfg, (1, 4, 4), 3).double()
    x, y = torch.randn(7, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    subset = ParamSubset.resolve(model)
    feats = kronecker_features(model, x, y, k_in=5, k_out=2, seed=9, kind="gaussian", batch_size=3)
    grads = example_grads(model, x, y, dtype=torch.float64, device=torch.device("cpu"))
    from tda_explorer.backend.projection import block_seed

    expected = []
    for j, info in enumerate(find_layers(model, subset)):
        proj = KroneckerProjector(info.d_in, info.d_out, 5, 2, block_seed(9, j), "gaussian")
        expected.append(flat_to_layer(grads, info).reshape(7, -1) @ proj.matrix(torch.float64).T)
    torch.testing.assert_close(feats, torch.cat(expected, 1), rtol=1e-9, atol=1e-10)
