"""Attribution page: exact (unrolled) proponents / opponents of the picked query, computed on click with a
progress bar, then loaded from the workspace."""

from __future__ import annotations

from tda_explorer.attributors.unrolled.exact import KIND

from .test_pages import app_at, prepared, rerun  # noqa: F401  (module-scoped fixture)


def test_exact_scores_on_demand_then_cached(prepared, monkeypatch):  # noqa: F811
    at = app_at(prepared, monkeypatch, "attribution")
    assert not prepared["ws"].list(KIND)
    button = next(b for b in at.button if b.label == "Compute exact scores")
    button.click()
    rerun(at, "attribution")
    text = " ".join(m.value for m in at.markdown)
    assert "Proponents" in text and "Opponents" in text
    assert any(c.value.startswith("computed · seeds [0]") for c in at.caption)
    assert len(prepared["ws"].list(KIND)) == 1
    rerun(at, "attribution")  # the same query again: no button, loaded from the workspace
    assert not [b for b in at.button if b.label == "Compute exact scores"]
    assert any(c.value.startswith("loaded from the workspace") for c in at.caption)
