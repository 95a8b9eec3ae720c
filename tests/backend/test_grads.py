"""Per-example gradients (torch.func) equal a Python loop of `torch.autograd.grad`, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.models import CNNConfig, LogRegConfig, MLPConfig, build_model

CASES = {
    "logreg": (LogRegConfig(), (1, 8, 8)),
    "mlp": (MLPConfig(hidden=(7, 5)), (1, 8, 8)),
    "cnn": (CNNConfig(channels=(3,), dense=6), (1, 8, 8)),
}


def loop_grads(model, x, y, objective="loss"):
    out = []
    params = [p for p in model.parameters()]
    for i in range(len(y)):
        logits = model(x[i : i + 1])
        if objective == "loss":
            value = F.cross_entropy(logits, y[i : i + 1])
        else:
            others = logits[0].clone()
            others[y[i]] = float("-inf")
            value = logits[0, y[i]] - torch.logsumexp(others, 0)
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    return torch.stack(out)


@pytest.mark.parametrize("arch", sorted(CASES))
@pytest.mark.parametrize("objective", ["loss", "margin"])
def test_example_grads_match_autograd_loop(arch, objective):
    cfg, shape = CASES[arch]
    torch.manual_seed(0)
    model = build_model(cfg, shape, 4).double()
    x = torch.randn(9, *shape, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    got = example_grads(
        model, x, y, objective=objective, chunk_size=4, dtype=torch.float64, device=torch.device("cpu")
    )
    want = loop_grads(model, x, y, objective)
    assert got.shape == (9, ParamSubset.resolve(model).numel)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_chunks_are_bounded_by_saved_activations():
    """A model whose activations dwarf its trainable gradient (a transformer with LoRA) gets small chunks:
    the chunk holds ACTIVATION_COPIES copies of each example's saved activations (weights not counted), and
    the gradients do not depend on it."""
    from torch import nn

    from tda_explorer.backend.grads import (
        ACTIVATION_COPIES,
        chunk_size_for,
        iter_example_grads,
        saved_activation_bytes,
    )

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(8, 4096), nn.Tanh(), nn.Linear(4096, 3))
    for p in wide[0].parameters():
        p.requires_grad_(False)  # only the small head trains: the gradient is 12,291 numbers
    x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    params = {n: p for n, p in wide.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in wide.named_parameters() if not p.requires_grad}

    def loss(out, t):
        return torch.nn.functional.cross_entropy(out.unsqueeze(0), t.unsqueeze(0))

    act = saved_activation_bytes(wide, params, frozen, {}, x[0], y[0], loss)
    assert act >= 4096 * 4  # at least the tanh output the head's backward needs
    budget = 10 * (4 * 12_291 * 4 + ACTIVATION_COPIES * act)
    assert chunk_size_for(12_291, 4, budget, act) == 10 < chunk_size_for(12_291, 4, budget)
    starts = [s for s, _ in iter_example_grads(wide, x, y, "all", memory_bytes=budget, dtype=torch.float32)]
    assert starts == list(range(0, 40, 10))
    chunked = torch.cat(
        [g for _, g in iter_example_grads(wide, x, y, "all", memory_bytes=budget, dtype=torch.float32)]
    )
    one = torch.cat([g for _, g in iter_example_grads(wide, x, y, "all", chunk_size=1, dtype=torch.float32)])
    torch.testing.assert_close(chunked, one)
