"""The app latency benchmark: its caption parser, and a two-selection measurement on a small run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.app_latency import fragment_ms, measure, prepare


def test_fragment_ms_reads_the_pages_own_caption():
    at = SimpleNamespace(
        caption=[
            SimpleNamespace(value="true 3 · predicted 3"),
            SimpleNamespace(value="server time for this view: 42 ms"),
        ]
    )
    assert fragment_ms(at) == 42.0
    assert fragment_ms(SimpleNamespace(caption=[])) is None


@pytest.mark.slow
def test_measure_times_each_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path))  # restored after the test (measure sets it)
    monkeypatch.chdir(tmp_path)
    run_key, score_key = prepare("grad_dot", "logreg", dataset="digits", workspace=tmp_path)
    timing = measure(run_key, score_key, 2, workspace=tmp_path)
    assert len(timing["page_rerun_ms"]) == 2 and all(t > 0 for t in timing["page_rerun_ms"])
    assert all(f is not None and f >= 0 for f in timing["fragment_ms"])


def test_journey_markdown_flags_a_step_over_budget():
    from benchmarks.app_latency import journey_markdown

    journey = {
        "steps": [
            {
                "step": "demo",
                "seconds": 20.9,
                "budget_s": 60.0,
                "within_budget": True,
                "estimated_s": 12.8,
                "estimated_at_load_s": 19.2,
                "load_1min": 3.0,
            },
            {"step": "d-TDA", "seconds": 77.6, "budget_s": 60.0, "within_budget": False},
        ],
        "budget_s": 60.0,
        "all_within_budget": False,
        "load_average_before": [8.0, 0, 0],
        "load_average_after": [9.0, 0, 0],
    }
    text = "\n".join(journey_markdown(journey))
    assert "NOT all within budget" in text and "| d-TDA | 77.6 | – | – | – | **no** |" in text
    assert "| demo | 20.9 | 12.8 | 19.2 | 3.0 | yes |" in text
    assert "idle-machine estimate / measured: 0.61 to 0.61 over the 1 estimated steps" in text
    assert journey_markdown(None) == []
