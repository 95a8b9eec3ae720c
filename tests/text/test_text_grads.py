"""Per-example gradients through the HF BERT layers (torch.func vmap) and K-FAC layers of the LoRA adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.backend.curvature import KroneckerCurvature
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import find_layers
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig, TextConfig, build_model, prepare_inputs

TEXTS = [
    "a gripping , beautifully acted film .",
    "dull and far too long .",
    "the plot is thin but the performances are a joy to watch from start to finish .",
    "not worth it .",
]
LABELS = torch.tensor([1, 0, 1, 0])


def lora_model(lora_layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(TextConfig(max_length=24, lora_rank=2, lora_layers=lora_layers), (), 2).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    return m


def loop_grads(model: torch.nn.Module, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Reference: one autograd.grad per example, `[n, p]`."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), LABELS[i : i + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize(("lora_layers", "path"), [(2, "states"), (2, "tokens"), (6, "tokens")])
def test_vmap_grads_over_lora_and_head_match_a_loop_of_autograd(lora_layers, path):
    model = lora_model(lora_layers).double()
    x = prepare_inputs(model, TEXTS) if path == "states" else model.tokenize(TEXTS)
    assert (x.dtype == torch.float32) == (path == "states")
    x = x.double() if x.is_floating_point() else x
    subset = ParamSubset.resolve(model, "lora")
    assert all("lora_" in n or n.startswith("head.") for n in subset.names)
    assert sum("lora_" in n for n in subset.names) == 4 * lora_layers  # A and B of query and value per layer
    got = example_grads(model, x, LABELS, params="lora", dtype=torch.float64, chunk_size=3)
    want = loop_grads(model, x, subset.names)
    assert got.shape == (4, subset.numel)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-11), (got - want).abs().max()
    assert ParamSubset.resolve(model, "all").names == subset.names  # only LoRA + head require grad


def test_both_input_paths_give_the_same_gradients():
    model = lora_model(2)
    a = example_grads(model, model.tokenize(TEXTS), LABELS, params="lora")
    b = example_grads(model, prepare_inputs(model, TEXTS), LABELS, params="lora")
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_lora_spec_needs_lora_parameters():
    with pytest.raises(ConfigError, match="LoRA"):
        ParamSubset.resolve(build_model(MLPConfig(hidden=(4,)), (3,), 2), "lora")


def test_kfac_layers_are_the_lora_matrices_not_the_frozen_base():
    model = lora_model(2)
    subset = ParamSubset.resolve(model, "lora")
    layers = find_layers(model, subset)
    names = [i.name for i in layers]
    assert len(names) == 9 and names[-1] == "head"
    assert all(n.endswith(("lora_A.default", "lora_B.default")) for n in names[:-1])
    assert not any(n.endswith("base_layer") for n in names)
    a = next(i for i in layers if i.name.endswith("query.lora_A.default"))
    assert (a.d_out, a.d_in, a.has_bias) == (2, 384, False)


def test_ekfac_fits_on_lora_layers_and_inverts():
    model = lora_model(2)
    x = prepare_inputs(model, TEXTS)
    curv = KroneckerCurvature(model, "lora", corrected=True, batch_size=2).fit(x)
    g = example_grads(model, x, LABELS, params="lora")
    ihvp = curv.inverse_hvp(g)
    assert ihvp.shape == g.shape and torch.isfinite(ihvp).all()
    quad = curv.quadratic(g)
    assert torch.allclose(quad, (ihvp * g).sum(1), rtol=1e-3) and (quad > 0).all()
