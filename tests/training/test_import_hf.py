"""`import_hf_run`: Hugging Face folders (and peft adapters on them) built offline in the test, imported by
folder, attributed with grad_dot (against hand-made autograd gradients), influence and TRAK."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import tda_explorer
from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.scores import compute_scores
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.models import HFConfig, prepare_inputs
from tda_explorer.store import Workspace
from tda_explorer.training import TrainConfig, load_run
from tests.hf_tiny import tiny_adapter, tiny_model, tiny_splits

FINETUNE = TrainConfig(optimizer="adam", lr=1e-2, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=8)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "default-ws"))


class _Folders(dict):
    """The test's folders, each built on first use (the quick loop builds only what it needs)."""

    def __init__(self, root) -> None:
        super().__init__(splits=tiny_splits(), ws=Workspace(root / "ws"))
        self.root = root

    def __missing__(self, key):
        splits, root = self["splits"], self.root
        if key == "bert":
            value = [tiny_model(root / f"bert{s}", seed=s, splits=splits) for s in (0, 1)]
        elif key == "adapter":
            value = [
                tiny_adapter(self["bert"][0], root / f"adapter{s}", seed=s, splits=splits) for s in (0, 1)
            ]
        elif key == "distilbert":
            value = tiny_model(root / "distilbert", arch="distilbert", splits=splits)
        else:
            raise KeyError(key)
        self[key] = value
        return value


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return _Folders(tmp_path_factory.mktemp("hf"))


def _hand_grads(model, examples, names):
    """Per-example loss gradients by plain autograd, one example at a time, `[n, p]`."""
    params = dict(model.named_parameters())
    x = prepare_inputs(model, examples.inputs)
    rows = []
    for i in range(len(examples)):
        loss = F.cross_entropy(model(x[i : i + 1]), examples.labels[i : i + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_import_by_folder_is_a_reusable_run(hf):
    splits, ws = hf["splits"], hf["ws"]
    run = tda_explorer.import_hf_run(hf["bert"][0], splits, max_length=16, workspace=ws)
    assert isinstance(run.model_config, HFConfig) and run.imported["factory"] == "hf:bert0"
    assert run.seeds == (0,) and run.train_config is None and run.metrics[0]["train_acc"] >= 0.9
    from transformers import AutoModelForSequenceClassification

    ref = AutoModelForSequenceClassification.from_pretrained(str(hf["bert"][0]), local_files_only=True)
    model = run.model()
    x = model.tokenize(splits.test.inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(input_ids=x[:, 0], attention_mask=x[:, 1]).logits)
    again = tda_explorer.import_hf_run(str(hf["bert"][0]), splits, max_length=16, workspace=ws)
    assert again.key == run.key
    loaded = load_run(run.key, ws)
    assert loaded.model_config == run.model_config and loaded.imported == run.imported
    torch.testing.assert_close(loaded.predict(splits.test), run.predict(splits.test))


def test_grad_dot_on_the_head_equals_hand_made_gradients_and_influence_trak_are_finite(hf):
    splits, ws = hf["splits"], hf["ws"]
    run = tda_explorer.import_hf_run(hf["bert"], splits, max_length=16, workspace=ws)
    assert run.seeds == (0, 1)
    got = compute_scores(run, splits, "grad_dot", {"params": "head"}, workspace=ws).scores
    model = run.model(0)
    names = ("head.weight", "head.bias")
    want = _hand_grads(model, splits.test, names) @ _hand_grads(model, splits.train, names).T
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-4)
    shape = (len(splits.test), len(splits.train))
    for method, settings in (
        ("influence", {"solver": "ekfac", "params": "head"}),
        ("influence", {"solver": "exact", "params": "head"}),
        ("trak", {"proj_dim": 32, "params": "all"}),
    ):
        result = compute_scores(run, splits, method, settings, workspace=ws)
        assert result.scores.shape == shape and result.scores.dtype == "float32", (method, settings)
        assert torch.isfinite(torch.from_numpy(result.scores)).all() and abs(result.scores).sum() > 0


@pytest.mark.slow
def test_adapter_runs_attribute_over_lora_parameters(hf):
    splits, ws = hf["splits"], hf["ws"]
    run = tda_explorer.import_hf_run(
        hf["bert"][0], splits, adapter=hf["adapter"], max_length=16, workspace=ws
    )
    assert run.seeds == (0, 1) and run.model_config.adapter == str(hf["adapter"][0].resolve())
    state = run.checkpoints[1][-1].state
    weights = [k for k in state if k.endswith(("weight", "bias"))]  # the rest are buffers (position ids)
    assert weights and all(
        "lora_" in k or k.startswith("head.") for k in weights
    )  # the base stays in the folder
    got = compute_scores(run, splits, "grad_dot", {"params": "lora", "seeds": "all"}, workspace=ws).scores
    want = []
    for seed in run.seeds:
        model = run.model(seed)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any("lora_A" in n for n in names) and names[:2] == ["head.weight", "head.bias"]
        want.append(_hand_grads(model, splits.test, names) @ _hand_grads(model, splits.train, names).T)
    torch.testing.assert_close(torch.from_numpy(got), torch.stack(want).mean(0), atol=1e-5, rtol=1e-4)
    for method, settings in (
        ("influence", {"solver": "ekfac", "params": "lora"}),
        ("trak", {"proj_dim": 32, "params": "lora"}),
    ):
        scores = compute_scores(run, splits, method, settings, workspace=ws).scores
        assert scores.shape == (len(splits.test), len(splits.train))
        assert torch.isfinite(torch.from_numpy(scores)).all()


def test_distilbert_imports_and_attributes(hf):
    splits, ws = hf["splits"], hf["ws"]
    run = tda_explorer.import_hf_run(hf["distilbert"], splits, max_length=16, workspace=ws)
    scores = compute_scores(run, splits, "influence", {"solver": "ekfac", "params": "head"}, workspace=ws)
    assert scores.scores.shape == (len(splits.test), len(splits.train))
    assert torch.isfinite(torch.from_numpy(scores.scores)).all()


@pytest.mark.slow
def test_lora_ensemble_needs_a_recipe_and_fine_tunes_members_with_it(hf):
    splits, ws = hf["splits"], hf["ws"]
    bare = tda_explorer.import_hf_run(hf["bert"][0], splits, max_length=16, workspace=ws)
    settings = dict(base="grad_dot", base_settings={"params": "lora"}, kind="lora", n_adapters=2, rank=2)
    with pytest.raises(ConfigError, match="train_config=TrainConfig"):
        make_attributor("ensemble", workspace=ws, lora_epochs=1, **settings).fit(bare, splits.train)
    for adapter in (None, hf["adapter"][0]):
        run = tda_explorer.import_hf_run(
            hf["bert"][0], splits, adapter=adapter, max_length=16, train_config=FINETUNE, workspace=ws
        )
        ens = make_attributor("ensemble", workspace=ws, lora_epochs=1, **settings).fit(run, splits.train)
        scores = ens.score(splits.test)
        assert scores.shape == (len(splits.test), len(splits.train)) and torch.isfinite(scores).all()
        member = ens.bases_[0].models_[0]
        trainable = [n for n, p in member.named_parameters() if p.requires_grad]
        base_lora = {n for n, _ in run.model().named_parameters() if "lora_" in n}
        assert trainable[:2] == ["head.weight", "head.bias"] and not set(trainable) & base_lora
        assert all("lora_" in n for n in trainable[2:]) and len(trainable) > 2


def test_refusals_name_what_is_wrong(hf, tmp_path):
    splits, ws = hf["splits"], hf["ws"]
    three = DatasetSplits(
        *(
            s.__class__(s.ids, s.inputs, s.labels, ("negative", "positive", "other"), s.kind, s.name)
            for s in (splits.train, splits.val, splits.test)
        ),
        {"name": "three-classes"},
    )
    with pytest.raises(ConfigError, match="num_labels=2.*3 classes"):
        tda_explorer.import_hf_run(hf["bert"][0], three, workspace=ws)
    swapped = DatasetSplits(
        *(
            s.__class__(s.ids, s.inputs, 1 - s.labels, ("positive", "negative"), s.kind, s.name)
            for s in (splits.train, splits.val, splits.test)
        ),
        {"name": "swapped"},
    )
    with pytest.raises(ConfigError, match="another order"):
        tda_explorer.import_hf_run(hf["bert"][0], swapped, workspace=ws)
    with pytest.raises(ConfigError, match="architecture"):
        tda_explorer.import_hf_run([hf["bert"][0], hf["distilbert"]], splits, workspace=ws)
    with pytest.raises(ConfigError, match="not a folder"):
        tda_explorer.import_hf_run(tmp_path / "missing", splits, workspace=ws)
    copy = shutil.copytree(hf["bert"][0], tmp_path / "copy")
    run = tda_explorer.import_hf_run(copy, splits, max_length=16, workspace=ws)
    with pytest.raises(ConfigError, match="kind=.lora."):
        make_attributor("ensemble", base="grad_dot", kind="dropout").fit(run, splits.train)
    (copy / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(ConfigError, match="changed since"):
        run.model()
