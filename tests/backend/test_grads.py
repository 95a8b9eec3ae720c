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
