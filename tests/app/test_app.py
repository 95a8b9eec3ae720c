"""AppTest: the skeleton app loads, trains a tiny run, computes Grad-Dot, and shows supporting examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("TDA_DEMO", "0")  # an empty workspace stays empty (the demo has its own test)
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def test_app_loads_with_empty_workspace(app):
    app.run()
    assert not app.exception
    assert app.title[0].value == "Setup"
    assert any("No run yet" in i.value for i in app.sidebar.info)


@pytest.mark.parametrize("page", ["attribution", "dtda", "map", "mislabels", "pruning", "evaluation"])
def test_every_page_asks_for_a_run_when_there_is_none(app, page):
    app.run()
    app.switch_page(f"views/{page}.py")
    app.run()
    assert not app.exception, app.exception
    assert [i.value for i in app.main.info] == ["Train a run on the Setup page first."]
    assert not app.get("plotly_chart") and not app.dataframe


def test_setup_page_without_a_run_shows_only_the_training_form(app):
    app.run()
    assert not app.main.info  # no "train first" box on the page where you train
    assert not [m for m in app.multiselect if m.label == "Attributors"]


@pytest.mark.slow
def test_train_attribute_and_view(app):
    app.run()
    _train(app, 1)
    assert "Current run" in " ".join(m.value for m in app.markdown)
    next(m for m in app.multiselect if m.label == "Attributors").set_value(["grad_dot"])
    app.run()
    next(b for b in app.button if b.label.startswith("Compute")).click()
    app.run()
    assert not app.exception, app.exception
    assert any("grad_dot" in s.value and "Computed in" in s.value for s in app.success)
    # the same click again reuses the stored scores and says so
    next(b for b in app.button if b.label.startswith("Compute")).click()
    app.run()
    assert any("Reused from cache (computed " in s.value for s in app.success), [s.value for s in app.success]
    app.switch_page("views/attribution.py")
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Attribution"
    captions = " ".join(m.value for m in app.markdown)
    assert "Supporting" in captions and "Opposing" in captions


def _train(app, seeds: int) -> None:
    next(s for s in app.selectbox if s.label == "Dataset").set_value("digits")
    next(s for s in app.selectbox if s.label == "Model").set_value("logreg")
    next(n for n in app.number_input if n.label == "Seeds").set_value(seeds)
    next(n for n in app.number_input if n.label.startswith("Epochs")).set_value(2)
    next(b for b in app.button if b.label.startswith("Train")).click()
    app.run()
    assert not app.exception, app.exception


def test_two_trainings_in_one_session_select_the_new_run(app):
    """Issue 17: once a run existed, a second "Train" raised StreamlitWidgetAlreadyInstantiatedError
    (the page assigned the key owned by the sidebar's run picker)."""
    app.run()
    _train(app, 2)
    first = app.session_state["run_key"]
    assert first and app.sidebar.selectbox[0].value == first
    _train(app, 3)
    second = app.session_state["run_key"]
    assert second != first
    assert app.sidebar.selectbox[0].value == second  # the sidebar lists and shows the new run at once
    assert f"Current run **{second}**" in " ".join(m.value for m in app.markdown)
    assert "seeds [0, 1, 2]" in " ".join(m.value for m in app.markdown)
    # picking the first run in the sidebar is what the pages show next
    app.sidebar.selectbox[0].set_value(first)
    app.run()
    assert not app.exception, app.exception
    assert app.session_state["run_key"] == first
    assert f"Current run **{first}**" in " ".join(m.value for m in app.markdown)


def test_first_start_prepares_the_demo(tmp_path, monkeypatch):
    """Issue 17: `make run` on an empty workspace opens on a ready demo (here a tiny stand-in for speed)."""
    import tda_explorer.demo as demo

    monkeypatch.setattr(demo, "DEMO_DATASET", "digits")
    monkeypatch.setattr(demo, "DEMO_ARCH", "logreg")
    monkeypatch.setattr(demo, "DEMO_SEEDS", 2)
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TDA_DEMO", raising=False)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    run_key = at.session_state["run_key"]
    assert run_key and at.sidebar.selectbox[0].value == run_key
    at.switch_page("views/attribution.py")
    at.run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Supporting" in text and "trak" in text
    at.switch_page("views/dtda.py")
    at.run()
    assert not at.exception, at.exception
    assert not at.info  # two seeds: d-TDA is offered, not "train more seeds"


def test_setup_estimates_training_from_runs_measured_here(app):
    app.run()
    _train(app, 1)
    estimate = [c.value for c in app.caption if c.value.startswith("Training new seeds takes about")]
    assert estimate and "1 seed(s) ×" in estimate[0] and "measured on this machine" in estimate[0]


def test_bring_my_model_imports_a_run_and_selects_it(app, tmp_path, monkeypatch):
    """Issue 16: Setup's "Bring my model" takes a factory + weights, imports, and shows the run at once."""
    import torch

    (tmp_path / "usernets_app.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernets_app

    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(usernets_app.build().state_dict(), tmp_path / f"w{seed}.pt")
    app.run()
    next(s for s in app.selectbox if s.label == "Dataset").set_value("digits")
    importer = next(b for b in app.button if b.label == "Import")
    next(t for t in app.text_input if t.label == "Factory").set_value("usernets_app:build")
    importer.click()
    app.run()
    assert any("at least one weights file" in e.value for e in app.error)  # says what is missing
    next(t for t in app.text_area if t.label.startswith("…or weight files")).set_value(
        f"{tmp_path / 'w0.pt'}\n{tmp_path / 'w1.pt'}"
    )
    next(b for b in app.button if b.label == "Import").click()
    app.run()
    assert not app.exception, app.exception
    key = app.session_state["run_key"]
    assert key and app.sidebar.selectbox[0].value == key
    text = " ".join(m.value for m in app.markdown)
    assert f"Current run **{key}**" in text and "imported" in text and "seeds [0, 1]" in text
