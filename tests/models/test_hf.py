"""The Hugging Face classifier wrapper (`models.hf`): same logits as the folder's model, the head as
`head.*`, per-example gradients under vmap equal to a loop of autograd, adapters and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.errors import ConfigError
from tda_explorer.models import HFConfig, build_model, model_config_from_dict
from tests.hf_tiny import tiny_adapter, tiny_model, tiny_splits


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    bert = tiny_model(root / "bert")
    return {
        "bert": bert,
        "adapter": tiny_adapter(bert, root / "adapter"),
        "distilbert": tiny_model(root / "distilbert", arch="distilbert"),
    }


def _reference_logits(folder, adapter, tokens):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model.eval()(input_ids=tokens[:, 0], attention_mask=tokens[:, 1]).logits


@pytest.mark.parametrize("arch", ["bert", "distilbert", "adapter"])
def test_logits_equal_the_folders_model_and_head_is_the_final_linear(folders, arch):
    folder = folders["bert"] if arch == "adapter" else folders[arch]
    adapter = folders["adapter"] if arch == "adapter" else None
    cfg = HFConfig(folder=str(folder), adapter=None if adapter is None else str(adapter), max_length=12)
    assert model_config_from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg, (), 2).eval()
    texts = tiny_splits().test.inputs
    tokens = model.tokenize(texts)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(texts), 2, 12)
    with torch.no_grad():
        logits, feats = model(tokens), model.features(tokens)
    torch.testing.assert_close(logits, _reference_logits(folder, adapter, tokens), atol=1e-5, rtol=1e-5)
    assert isinstance(model.head, torch.nn.Linear) and feats.shape == (len(texts), model.head.in_features)
    torch.testing.assert_close(model.head(feats), logits)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["head.weight", "head.bias"]
    assert ParamSubset.resolve(model, "head").names == ("head.weight", "head.bias")


def _loop_grads(model, tokens, labels, names):
    """Per-example gradients by plain autograd, one example at a time: `[n, p]` (float64)."""
    model = model.double()
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(labels)):
        loss = F.cross_entropy(model(tokens[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(params[n]) if g is None else g).reshape(-1)
                    for n, g in zip(names, grads, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize(("arch", "spec"), [("bert", "head"), ("bert", "all"), ("distilbert", "all")])
def test_vmap_gradients_equal_a_loop_of_autograd(folders, arch, spec):
    model = build_model(HFConfig(folder=str(folders[arch]), max_length=12), (), 2).eval()
    data = tiny_splits().train
    tokens, labels = model.tokenize(data.inputs[:5]), data.labels[:5]
    subset = ParamSubset.resolve(model, spec)
    got = example_grads(model, tokens, labels, params=subset, dtype=torch.float64, chunk_size=2)
    want = _loop_grads(model, tokens, labels, subset.names)
    assert got.shape == (5, subset.numel)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)


def test_adapter_freezes_the_base_and_lora_subset_is_lora_plus_head(folders):
    cfg = HFConfig(folder=str(folders["bert"]), adapter=str(folders["adapter"]), max_length=12)
    model = build_model(cfg, (), 2).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    lora = ParamSubset.resolve(model, "lora")
    assert any("lora_A" in n for n in lora.names) and "head.weight" in lora.names
    data = tiny_splits().train
    tokens, labels = model.tokenize(data.inputs[:4]), data.labels[:4]
    got = example_grads(model, tokens, labels, params=lora, dtype=torch.float64)
    torch.testing.assert_close(got, _loop_grads(model, tokens, labels, lora.names), atol=1e-9, rtol=1e-7)
    with pytest.raises(ConfigError, match="lora"):
        ParamSubset.resolve(build_model(HFConfig(folder=str(folders["bert"])), (), 2), "lora")


def test_refusals_name_the_mismatch(folders, tmp_path):
    with pytest.raises(ConfigError, match="num_labels=2.*3 classes"):
        build_model(HFConfig(folder=str(folders["bert"])), (), 3)
    with pytest.raises(ConfigError, match="not a folder"):
        build_model(HFConfig(folder=str(tmp_path / "nowhere")), (), 2)
    with pytest.raises(ConfigError, match="changed"):
        build_model(HFConfig(folder=str(folders["bert"]), fingerprint="0" * 16), (), 2)
    with pytest.raises(ConfigError, match="folder"):
        HFConfig()
