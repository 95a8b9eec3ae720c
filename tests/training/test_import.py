"""import_run: a model trained by a plain torch loop outside the package becomes an ordinary run whose
scores equal those of the same weights in a native run (float64), with clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tda_explorer import import_run, load_run
from tda_explorer.attributors import make_attributor
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig
from tda_explorer.store import Workspace
from tda_explorer.training import Checkpoint, TrainConfig, TrainedRun, retrain_on_subsets

HIDDEN = 12


def build_net() -> nn.Module:
    """The user's own model: not the package's MLP class, its own init."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 10))


def user_train(factory, examples, seed: int, epochs: int = 3) -> dict:
    """The user's loop: Adam, their own batch order and init (not the package's trainer)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = examples.inputs, examples.labels
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for b in range(0, len(y), 100):
            idx = order[b : b + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.state_dict()


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset(DatasetSpec("digits"))
    return splits


@pytest.fixture(scope="module")
def user_states(digits):
    return [user_train(build_net, digits.train, s) for s in (0, 1)]


@pytest.fixture(autouse=True)
def float64(monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")


def native_twin(states: list[dict]) -> TrainedRun:
    """The same weights as a native MLP run (the zoo's names: body.1 = first Linear, head = last)."""
    rename = {
        "1.weight": "body.1.weight",
        "1.bias": "body.1.bias",
        "3.weight": "head.weight",
        "3.bias": "head.bias",
    }
    ckpts = {s: [Checkpoint(state={rename[k]: v for k, v in st.items()})] for s, st in enumerate(states)}
    return TrainedRun(
        "native", {}, _TanhMLP(), TrainConfig(weight_decay=0.0), (0, 1), (1, 8, 8), 10, ckpts, {}
    )


class _TanhMLP(MLPConfig):
    """MLPConfig(hidden=(12,)) with tanh, built like the zoo's MLP (body = Flatten, Linear, act; head)."""

    def __init__(self) -> None:
        super().__init__(hidden=(HIDDEN,))


def _native_build(monkeypatch):
    from tda_explorer.models.build import build_model as original

    def build(cfg, input_shape, n_classes):
        if not isinstance(cfg, _TanhMLP):
            return original(cfg, input_shape, n_classes)
        model = original(MLPConfig(hidden=(HIDDEN,)), input_shape, n_classes)
        model.body[2] = nn.Tanh()
        return model

    monkeypatch.setattr("tda_explorer.training.trainer.build_model", build)


SETTINGS = {
    "grad_dot": {"params": "all"},
    "influence": {"solver": "exact", "params": "all", "damping": 0.5},
    "trak": {"proj_dim": 64, "proj_type": "rademacher"},
}


@pytest.mark.parametrize("method", ["grad_dot", "influence", "influence_ekfac", "trak"])
def test_imported_scores_equal_native(tmp_path, monkeypatch, digits, user_states, method):
    _native_build(monkeypatch)
    run = import_run(build_net, user_states, digits, workspace=Workspace(tmp_path))
    assert run.imported is not None and run.seeds == (0, 1) and run.model_config.head == "3"
    twin = native_twin(user_states)
    name, settings = (
        ("influence", {"solver": "ekfac", "params": "all"})
        if method == "influence_ekfac"
        else (method, SETTINGS[method])
    )
    train, queries = digits.train.subset(range(200)), digits.test.subset(range(15))
    got = make_attributor(name, **settings).fit(run, train).score(queries)
    want = make_attributor(name, **settings).fit(twin, train).score(queries)
    assert got.shape == (15, 200) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9 * float(want.abs().max()))
    assert float(got.abs().max()) > 0


def test_files_and_dicts_import_to_one_run(tmp_path, digits, user_states):
    ws = Workspace(tmp_path / "ws")
    torch.save(user_states[0], tmp_path / "a.pt")
    save_file({k: v.contiguous() for k, v in user_states[1].items()}, str(tmp_path / "b.safetensors"))
    from_files = import_run(
        build_net, [tmp_path / "a.pt", str(tmp_path / "b.safetensors")], digits, workspace=ws
    )
    from_dicts = import_run(build_net, user_states, digits, workspace=ws)
    assert from_files.key == from_dicts.key and len(ws.list_runs()) == 1
    loaded = load_run(from_files.key, ws)
    assert loaded.imported["factory"].endswith(":build_net") and loaded.train_config is None
    for s in (0, 1):
        for k, v in loaded.checkpoints[s][-1].state.items():
            assert torch.equal(v, user_states[s][k.removeprefix("body.")])
    # other weights: another run
    other = [{k: v + 1e-3 for k, v in st.items()} for st in user_states]
    assert import_run(build_net, other, digits, workspace=ws).key != from_files.key
    # a seed with a checkpoint trajectory carrying step / lr
    traj = import_run(
        build_net,
        [
            [
                {"state": user_states[1], "step": 10, "lr": 0.01},
                {"state": user_states[0], "step": 20, "lr": 0.001},
            ]
        ],
        digits,
        workspace=ws,
    )
    assert [c.step for c in traj.checkpoints[0]] == [10, 20] and traj.checkpoints[0][-1].lr == 0.001


def test_bad_imports_name_the_problem(tmp_path, digits, user_states):
    ws = Workspace(tmp_path)
    missing = {k: v for k, v in user_states[0].items() if k != "3.bias"}
    with pytest.raises(ConfigError, match=r"missing \['3.bias'\]"):
        import_run(build_net, [missing], digits, workspace=ws)
    wrong = dict(user_states[0], **{"1.weight": torch.zeros(5, 64)})
    with pytest.raises(ConfigError, match=r"1.weight: weights \(5, 64\) vs model \(12, 64\)"):
        import_run(build_net, [wrong], digits, workspace=ws)

    def three_classes() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    with pytest.raises(ConfigError, match=r"expected outputs \[8, 10\] \(logits"):
        import_run(three_classes, [three_classes().state_dict()], digits, workspace=ws)
    with pytest.raises(ConfigError, match="must take no arguments"):
        import_run(lambda width: build_net(), [user_states[0]], digits, workspace=ws)
    with pytest.raises(ConfigError, match="unsupported type"):
        (tmp_path / "w.txt").write_text("x")
        import_run(build_net, [tmp_path / "w.txt"], digits, workspace=ws)
    assert ws.list_runs() == []


def test_methods_that_need_a_recipe_say_what_to_provide(tmp_path, digits, user_states):
    run = import_run(build_net, user_states, digits, workspace=Workspace(tmp_path))
    with pytest.raises(ConfigError, match="tracin needs each checkpoint's lr"):
        make_attributor("tracin").fit(run, digits.train.subset(range(20)))
    with pytest.raises(ConfigError, match="train_config=TrainConfig"):
        run.require_recipe("LDS")
    assert run.weight_decay == 0.0


def test_user_train_fn_retrains_subsets(tmp_path, digits, user_states):
    train = digits.train.subset(range(300))
    run = import_run(build_net, user_states, digits, train_fn=user_train, workspace=Workspace(tmp_path))
    masks = np.zeros((2, len(train)), dtype=bool)
    masks[0, :150] = True
    masks[1, 100:] = True
    queries = digits.test.subset(range(5))
    logits = retrain_on_subsets(run.model_config, run.train_config, train, masks, [3], queries)
    for j, m in enumerate(masks):
        model = build_net()
        model.load_state_dict(user_train(build_net, train.subset(m), 3))
        with torch.no_grad():
            torch.testing.assert_close(logits[j, 0], model.eval()(queries.inputs))
    # the recipe is stored with the run: reloading in this process finds the registered loop
    again = load_run(run.key, Workspace(tmp_path))
    assert again.train_config.name.endswith(":user_train")


def build_dropout_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HIDDEN, 10)
    )


@pytest.mark.parametrize(
    "method, settings",
    [
        ("grad_dot", {}),
        ("grad_cos", {}),
        ("repsim", {}),
        ("influence", {"solver": "ekfac"}),
        ("influence", {"solver": "cg", "max_iter": 5}),
        ("influence", {"solver": "lissa", "max_iter": 5}),
        ("influence", {"solver": "kfac"}),
        ("trak", {"proj_dim": 32}),
        ("trak", {"proj_dim": 32, "checkpoints": "all"}),
        ("dtda", {}),
        ("ensemble", {"kind": "dropout", "n_masks": 2}),
        ("ensemble", {"kind": "lora"}),
        ("tracin", {}),
        ("source", {}),
        ("airrep", {}),
    ],
)
def test_every_method_works_on_weights_alone_or_says_what_to_provide(tmp_path, digits, method, settings):
    torch.manual_seed(0)
    states = [build_dropout_net().state_dict() for _ in range(2)]
    run = import_run(build_dropout_net, states, digits, workspace=Workspace(tmp_path))
    train, queries = digits.train.subset(range(60)), digits.test.subset(range(4))
    attributor = make_attributor(method, **settings)
    if getattr(attributor, "workspace", False) is None:
        attributor.workspace = Workspace(tmp_path)
    try:
        attributor.fit(run, train)
    except ConfigError as e:  # only the methods that need a recipe or a schedule may refuse
        assert method in ("tracin", "source", "airrep") or settings.get("kind") == "lora", e
        assert "train_config=TrainConfig" in str(e) or "checkpoint's" in str(e)
        return
    assert method not in ("tracin", "source", "airrep")
    scores = attributor.score(queries)
    assert scores.shape == (4, 60) and torch.isfinite(scores).all()
