"""The closed-form reverse step for Linear/ReLU chains (`unrolled.chain`) against autograd's double
backward (float64), with and without the recorded tape, and its replay step against the trainer's."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.attributors.unrolled import Trajectory
from tda_explorer.attributors.unrolled.chain import chain_train_step, linear_chain
from tda_explorer.attributors.unrolled.reverse import measurement_gradients, reverse_pass
from tda_explorer.models import CNNConfig, LogRegConfig, MLPConfig, build_model
from tda_explorer.training import TrainConfig
from tda_explorer.training.trainer import make_optimizer
from tda_explorer.training.weighted import train_step

from .conftest import as_examples
from .test_unrolled import blobs

CHAINS = {
    "mlp2_momentum": (
        MLPConfig(hidden=(8, 6)),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2, epochs=6, batch_size=8),
    ),
    "mlp_plain_sgd": (
        MLPConfig(hidden=(7,)),
        TrainConfig(optimizer="sgd", lr=0.2, momentum=0.0, weight_decay=0.0, epochs=6, batch_size=10),
    ),
    "mlp_adam": (
        MLPConfig(hidden=(8, 5)),
        TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-3, epochs=6, batch_size=8, warmup_steps=4),
    ),
    "logreg": (
        LogRegConfig(),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=6, batch_size=8),
    ),
}


@pytest.fixture(scope="module")
def data():
    x, y = blobs(46)
    return as_examples(x[:40], y[:40], "t", ("a", "b", "c")), as_examples(
        x[40:], y[40:], "q", ("a", "b", "c")
    )


def cotangents(traj: Trajectory, theta: torch.Tensor, queries) -> torch.Tensor:
    model = traj.models[-1]
    return measurement_gradients(model, traj.flat, theta, queries.inputs.double(), queries.labels)


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_closed_form_step_matches_autograd(case, data):
    train, queries = data
    mcfg, tcfg = CHAINS[case]
    taped = Trajectory(mcfg, tcfg, train, 0, torch.float64, every=4, tape_bytes=2**30)
    theta = taped.record()
    assert taped.chain is not None
    assert bool(taped.tapes) == (tcfg.optimizer != "adam")  # Adam replays (its moments are needed)
    cot = cotangents(taped, theta, queries)
    fast = reverse_pass(taped, cot)
    slow = reverse_pass(taped, cot, fast=False)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-13)
    untaped = Trajectory(mcfg, tcfg, train, 0, torch.float64, every=4, tape_bytes=0)
    assert torch.equal(untaped.record(), theta) and not untaped.tapes
    torch.testing.assert_close(reverse_pass(untaped, cot), slow, rtol=1e-10, atol=1e-13)


def test_chain_train_step_is_the_trainers_step_bit_for_bit(data):
    train, _ = data
    tcfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2, epochs=1, batch_size=8)
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(build_model(MLPConfig(hidden=(8, 6)), train.input_shape, train.n_classes).float())
    opts = [make_optimizer(tcfg, list(m.parameters())) for m in models]
    x, y = train.inputs.float(), train.labels
    layers = ["body.1", "body.3", "head"]
    for b in range(5):
        batch = torch.arange(8 * b, 8 * b + 8)
        train_step(models[0], opts[0], x, y, batch, 0.1)
        acts, logits = chain_train_step(models[1], opts[1], layers, x[batch], y[batch], 0.1)
        assert len(acts) == 3 and logits.shape == (8, 3)
    for p0, p1 in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p0, p1)


def test_linear_chain_recognises_only_plain_chains(data):
    train, _ = data
    mlp = build_model(MLPConfig(hidden=(8, 6)), train.input_shape, train.n_classes)
    names = tuple(n for n, _ in mlp.named_parameters())
    assert linear_chain(mlp, names) == ["body.1", "body.3", "head"]
    assert linear_chain(mlp, names[::-1]) is None  # another flat order
    cnn = build_model(CNNConfig(), (1, 8, 8), 3)
    assert linear_chain(cnn, tuple(n for n, _ in cnn.named_parameters())) is None
