"""LoRA ensembles of the text model (issue 16 item 9): members are independent LoRA fine-tunes of the run's
final model, whose own adapters stay frozen as part of the shared base."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.ensemble_lora import add_lora
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.errors import ConfigError
from tda_explorer.models import TextConfig, prepare_inputs
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run

pytestmark = pytest.mark.slow  # ~12 s: a text run and two LoRA fine-tunes

MODEL = TextConfig(max_length=32, lora_rank=2, lora_layers=1)
TRAIN = TrainConfig(
    optimizer="adam", lr=2e-3, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=16, checkpoints=1
)


@pytest.fixture(scope="module")
def text_lora(tmp_path_factory, tiny_sst2):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    run = train_run(tiny_sst2, MODEL, TRAIN, [0], ws, LocalExecutor(1))
    settings = dict(base="grad_dot", base_settings={"params": "lora"}, kind="lora", n_adapters=2, rank=2)
    ens = make_attributor("ensemble", workspace=ws, lora_epochs=1, **settings).fit(run, tiny_sst2.train)
    return run, ens, tiny_sst2


def test_members_train_new_adapters_and_head_on_a_frozen_base(text_lora):
    run, ens, _ = text_lora
    base = run.model()
    own = {n: p for n, p in base.named_parameters() if "lora_" in n}
    members = ens.bases_[0].models_
    for member in members:
        trainable = {n for n, p in member.named_parameters() if p.requires_grad}
        assert trainable == set(ParamSubset.resolve(member, "lora").names)
        assert "head.weight" in trainable and not trainable & set(own)
        assert all(".query." not in n and ".value." not in n for n in trainable)  # the run's own targets
        params = dict(member.named_parameters())
        for n, p in own.items():  # the run's adapters are the base's, unchanged
            torch.testing.assert_close(params[n], p)
        assert member.frozen_layers() == base.frozen_layers() == 5  # bottom states stay cacheable
    a, b = (dict(m.named_parameters()) for m in members)
    name = next(n for n in a if "lora_B" in n and n not in own)
    assert not torch.equal(a[name], b[name])


def test_scores_are_the_members_mean_gradient_dot(text_lora):
    _, ens, splits = text_lora
    queries, train = splits.test.subset(range(3)), splits.train.subset(range(5))
    scores = ens.score(splits.test)
    assert scores.shape == (len(splits.test), len(splits.train)) and torch.isfinite(scores).all()

    def loop_grads(model, examples):
        names = ParamSubset.resolve(model, "lora").names
        params = dict(model.named_parameters())
        x = prepare_inputs(model, examples.inputs)
        rows = []
        for i in range(len(examples)):
            loss = F.cross_entropy(model(x[i : i + 1]), examples.labels[i : i + 1])
            rows.append(
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [params[n] for n in names])])
            )
        return torch.stack(rows)

    want = torch.stack([loop_grads(m, queries) @ loop_grads(m, train).T for m in ens.bases_[0].models_]).mean(
        0
    )
    torch.testing.assert_close(scores[:3, :5], want, atol=1e-4, rtol=1e-3)
    self_inf = ens.self_influence()
    assert self_inf.shape == (len(splits.train),) and torch.isfinite(self_inf).all()


def test_targets_with_the_runs_own_adapters_are_refused(text_lora):
    run, _, _ = text_lora
    model = run.model()
    own = next(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
    with pytest.raises(ConfigError, match="already carry"):
        add_lora(model, 2, 4.0, [own], 0)
    with pytest.raises(ConfigError, match="kind=.lora."):
        make_attributor("ensemble", base="grad_dot", kind="dropout").fit(run, text_lora[2].train)
