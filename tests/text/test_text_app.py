"""AppTest of the text path: pick SST-2 on the Setup page (a tiny split), train the LoRA text model,
compute attributors, and see the Attribution, Map and Mislabels pages render sentences."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tda_explorer.data import builtins, registry

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_sst2_app(tmp_path, monkeypatch, tiny_sst2):
    """The app over an empty workspace, with the built-in sst2 shrunk to 48 / 8 / 12 sentences (15% noise)."""
    tiny = functools.partial(builtins.load_sst2, n_train=48, n_val=8, n_test=12)
    monkeypatch.setitem(registry._LOADERS, "sst2", tiny)
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "app-ws"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    assert not at.exception, at.exception
    return at


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_text_path_end_to_end(tiny_sst2_app):
    at = go(tiny_sst2_app, "setup")
    next(s for s in at.selectbox if s.label == "Dataset").set_value("sst2")
    at.run()
    model = next(s for s in at.selectbox if s.label == "Model")
    assert model.options == ["text"]
    next(n for n in at.number_input if n.label.startswith("Epochs")).set_value(1)
    next(s for s in at.slider if s.label.startswith("Label noise")).set_value(0.15)
    next(b for b in at.button if b.label.startswith("Train")).click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    summary = " ".join(m.value for m in at.markdown)
    assert "sst2 · text" in summary

    methods = next(m for m in at.multiselect if m.label == "Attributors")
    assert methods.value == ["grad_cos"]  # the text default (benchmarks.text_labels: label agreement)
    methods.set_value(["grad_dot", "influence", "trak"])  # inside a form: applied on submit
    next(b for b in at.button if b.label.startswith("Compute")).click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.success) == 3, [s.value for s in at.success]

    at = go(at, "attribution")
    text = "\n".join(m.value for m in at.markdown)
    assert "Supporting" in text and "Opposing" in text
    # Training sentences are shown as text with their label and a score.
    blocks = [m.value for m in at.markdown if m.value.startswith(("**negative**", "**positive**"))]
    assert len(blocks) >= 2 * 8 + 1, blocks[:3]  # 8 per side + the query
    assert any("`+" in b or "`-" in b for b in blocks) and all("\n> " in b for b in blocks)

    at = go(at, "map")
    assert at.get("plotly_chart"), "the map is drawn"

    at = go(at, "mislabels")
    assert any(m.label == "ROC-AUC against the injected flips" for m in at.metric)
    listed = [m.value for m in at.markdown if m.value.startswith(("**negative**", "**positive**"))]
    assert len(listed) == 16
