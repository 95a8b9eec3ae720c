"""LoRA fine-tuning of the text model on a tiny SST-2 subset, and every attributor on the result."""

from __future__ import annotations

import time

import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.models import TextConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, default_train_config, train_model, train_run

TINY_MODEL = TextConfig(max_length=48, lora_rank=4, lora_layers=2)
TINY_TRAIN = TrainConfig(optimizer="adam", lr=2e-3, momentum=0.0, weight_decay=0.0, epochs=2, batch_size=16)


def test_lora_finetune_on_a_tiny_subset_runs_in_under_a_minute(tiny_sst2):
    # Model build, frozen states and 2 epochs on 48 sentences take ~5 CPU seconds. The limit is on CPU
    # time: on a shared machine the wall time depends on everyone else's load.
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_model(TINY_MODEL, TINY_TRAIN, tiny_sst2.train, seed=0, eval_sets={"test": tiny_sst2.test})
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cpu < 60, f"tiny LoRA fine-tune took {cpu:.1f} CPU s ({wall:.1f} s wall)"
    assert len(result.epoch_losses) == 2 and all(torch.isfinite(torch.tensor(result.epoch_losses)))
    assert result.epoch_losses[1] < result.epoch_losses[0]
    state = result.final_state
    trained = [n for n in state if "lora_" in n or n.startswith("head.")]
    assert trained and all(n.split(".")[5] in ("4", "5") for n in trained if "lora_" in n)
    assert not any("base_layer" in n for n in state)  # frozen pretrained weights are not checkpointed
    assert result.eval_logits["test"].shape == (len(tiny_sst2.test), 2)


def test_training_is_seeded():
    # Reproducibility of the LoRA init + data order (encoder dropout is off).
    from tda_explorer.data.example_set import ExampleSet

    texts = ("good fun", "bad , boring", "a delight", "awful mess", "great acting", "terrible plot")
    data = ExampleSet(
        tuple(f"t{i}" for i in range(6)), texts, torch.tensor([1, 0, 1, 0, 1, 0]), ("neg", "pos"), "text"
    )
    cfg = TrainConfig(optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=3)
    model = TextConfig(max_length=8, lora_rank=2, lora_layers=1)
    a, b = (train_model(model, cfg, data, seed=3) for _ in range(2))
    for k, v in a.final_state.items():
        assert torch.equal(v, b.final_state[k]), k


def test_default_text_training_config_is_the_measured_one():
    cfg = default_train_config("text")
    assert cfg.optimizer == "adam" and cfg.epochs >= 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_sst2):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    cfg = TrainConfig(**{**TINY_TRAIN.to_dict(), "checkpoints": 2})
    return train_run(tiny_sst2, TINY_MODEL, cfg, [0, 1], ws, LocalExecutor(1)), tiny_sst2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("grad_dot", {"params": "lora"}),
        ("grad_cos", {"params": "lora"}),
        ("tracin", {"params": "lora"}),
        ("influence", {"solver": "ekfac", "params": "lora", "seeds": "all"}),
        ("influence", {"solver": "kfac", "params": "lora"}),
        ("trak", {"proj_dim": 64, "params": "lora"}),
        ("repsim", {}),
    ],
)
def test_every_attributor_scores_text(tiny_run, method, settings):
    run, splits = tiny_run
    attributor = make_attributor(method, **settings).fit(run, splits.train)
    scores = attributor.score(splits.test)
    assert scores.shape == (len(splits.test), len(splits.train)) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0
    self_inf = attributor.self_influence()
    assert self_inf.shape == (len(splits.train),) and torch.isfinite(self_inf).all()
