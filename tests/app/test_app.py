"""AppTest: the skeleton app loads, trains a tiny run, computes Grad-Dot, and shows supporting examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
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
    app.switch_page(f"pages/{page}.py")
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
    app.selectbox[0].set_value("digits")
    app.selectbox[1].set_value("logreg")
    app.number_input[1].set_value(3)
    app.button[0].click()
    app.run()
    assert not app.exception, app.exception
    assert "Current run" in " ".join(m.value for m in app.markdown)
    app.button[1].click()  # compute grad_dot
    app.run()
    assert not app.exception, app.exception
    assert any("grad_dot" in s.value for s in app.success)
    app.switch_page("pages/attribution.py")
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Attribution"
    captions = " ".join(m.value for m in app.markdown)
    assert "Supporting" in captions and "Opposing" in captions
