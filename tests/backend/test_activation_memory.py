"""Memory bounds from activations (issue 16 item 7): per-example gradient chunks and curvature batches are
sized by what one example's forward saves for backward, and the results do not depend on that sizing."""

from __future__ import annotations

import torch
from torch import nn

import tda_explorer.backend.curvature as curvature
import tda_explorer.backend.grads as grads
from tda_explorer.backend.curvature import KroneckerCurvature
from tda_explorer.backend.grads import activation_bytes, example_grads, forward_saved_bytes
from tda_explorer.models import MLPConfig, build_model

CPU = torch.device("cpu")


class Wide(nn.Module):
    """An MLP with a wide hidden layer whose activations dwarf its head's gradient (like a text encoder's)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4096), nn.Tanh(), nn.Linear(4096, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_saved_bytes_count_activations_not_weights():
    torch.manual_seed(0)
    model = Wide().double()
    saved = forward_saved_bytes(model, torch.randn(5, 4, dtype=torch.float64))
    # tanh outputs (4096 + 8) and the inputs of the three Linears (4 + 4096 + 8), float64; weights excluded
    assert 8 * (4096 + 8) <= saved <= 8 * 2 * (4096 + 4096 + 8 + 8 + 4)
    assert activation_bytes(lambda p, x: (x * 2).sum(), {}, [], torch.ones(3)) == 0  # nothing to save


class Scaled(nn.Module):
    """Frozen wide layers around one trainable scale: few parameters, large per-example activations."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.reduce = nn.Linear(4, 4096), nn.Linear(4096, 8)
        for p in (*self.expand.parameters(), *self.reduce.parameters()):
            p.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.reduce(torch.tanh(self.expand(x) * self.scale)))


def test_gradient_chunks_shrink_with_activations_and_give_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    model = Scaled().double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    sizes = []
    original = grads.chunk_size_for

    def spy(*args, **kwargs):
        sizes.append(original(*args, **kwargs))
        return sizes[-1]

    monkeypatch.setattr(grads, "chunk_size_for", spy)
    budget, params = 2**20, ["scale", "head."]
    got = example_grads(model, x, y, params=params, memory_bytes=budget, dtype=torch.float64, device=CPU)
    assert original(28, 8, budget) > 40 > sizes[-1] >= 1  # the gradients alone would fit in one chunk
    want = example_grads(model, x, y, params=params, chunk_size=40, dtype=torch.float64, device=CPU)
    torch.testing.assert_close(got, want)


def test_curvature_sub_batches_give_the_same_factors(monkeypatch):
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(6,)), (5,), 3).double()
    x = torch.randn(50, 5, dtype=torch.float64)

    def fit():
        curv = KroneckerCurvature(
            model, seed=3, batch_size=16, fisher_samples=2, dtype=torch.float64, device=CPU
        )
        return curv.fit(x)

    full = fit()
    assert full._sub_batch(x) == 16
    monkeypatch.setattr(curvature, "DEFAULT_MEMORY_BYTES", 1)  # one example per forward + backward
    small = fit()
    assert small._sub_batch(x) == 1
    for name, f in full.factors_.items():
        g = small.factors_[name]
        torch.testing.assert_close(g.eigenvalues, f.eigenvalues)
        torch.testing.assert_close(g.q_a.abs(), f.q_a.abs())
