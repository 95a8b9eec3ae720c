"""AppTest of the background steps (appjobs): the estimate is shown before a long step, a running step shows
its progress to a second launch instead of starting again, and Cancel stops it leaving the app usable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import appjobs
import tda_explorer.estimates as estimates

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("TDA_DEMO", "0")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(estimates, "ASK_ABOVE_S", 0.0)  # every step counts as long: the question is asked
    monkeypatch.setattr(appjobs, "WAIT_S", 0.0)  # a page run draws the progress once and returns

    def new():
        return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)

    return new


def _ask_to_train(at: AppTest, epochs: int = 200, seeds: int = 3) -> None:
    next(s for s in at.selectbox if s.label == "Dataset").set_value("digits")
    next(s for s in at.selectbox if s.label == "Model").set_value("logreg")
    next(n for n in at.number_input if n.label == "Seeds").set_value(seeds)
    next(n for n in at.number_input if n.label.startswith("Epochs")).set_value(epochs)
    next(b for b in at.button if b.label.startswith("Train")).click()
    at.run()
    assert not at.exception, at.exception


def _training_job() -> appjobs.Job:
    return next(j for j in appjobs.running() if j.label.startswith("Training"))


def _wait_for(condition, timeout: float = 90.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < end, "timed out"
        time.sleep(0.2)


def test_estimate_then_start_progress_second_launch_and_cancel(session):
    at = session()
    at.run()
    _ask_to_train(at)
    warning = " ".join(w.value for w in at.warning)
    assert "is estimated at about" in warning and "Training 3 seed(s)" in warning
    assert not appjobs.running() and not at.session_state["run_key"]  # nothing started before the answer
    next(b for b in at.button if b.label == "Start").click()
    at.run()
    assert not at.exception, at.exception
    job = _training_job()
    bars = [p for p in at.get("progress")]
    assert bars and "Training 3 seed(s)" in bars[0].proto.text
    assert any(b.label == "Cancel" for b in at.button)

    other = session()  # a second session launching the same training sees the running one
    other.run()
    _ask_to_train(other)
    assert [j for j in appjobs.running() if j.label.startswith("Training")] == [job]
    assert other.get("progress") and not other.warning

    _wait_for(lambda: job.done >= 1)  # one seed finished (and stored): cancelling keeps it
    at.run()  # the same session re-opening Setup: progress again, with the Cancel button
    next(b for b in at.button if b.label == "Cancel").click()
    at.run()
    job.thread.join(60)
    assert job.status == "cancelled"
    at.run()
    assert not at.exception, at.exception
    assert any("cancelled after" in i.value for i in at.info)
    at.switch_page("views/dtda.py")  # the app stays usable: other pages draw
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value.startswith("Distributional")


def test_a_short_step_starts_without_asking(session, monkeypatch):
    monkeypatch.setattr(estimates, "ASK_ABOVE_S", 1e9)
    monkeypatch.setattr(appjobs, "WAIT_S", None)  # wait for the end, as the app does
    at = session()
    at.run()
    _ask_to_train(at, epochs=2, seeds=1)
    assert not at.exception, at.exception
    assert not at.warning
    assert at.session_state["run_key"]  # trained and selected in the same click


def test_upload_without_a_file_yet_draws_and_asks_for_one(session):
    """Choosing "Upload a table" shows the uploader (the training step's key needs no file yet), and Train
    without a file says what to do."""
    at = session()
    at.run()
    at.radio[0].set_value("Upload a table")
    at.run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label.startswith("Train")).click()
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["Choose a file (or give a path) first."]
