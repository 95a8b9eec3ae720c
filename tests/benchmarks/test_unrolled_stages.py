"""The two-stage tables render: source_dtda's table from a stored run made before its unrolled column
("-" there, not a KeyError), and unrolled_stages' fresh- vs fixed-seed table."""

from __future__ import annotations

import pytest

from benchmarks import source_dtda, unrolled_stages


def lds(mean: float) -> dict:
    return {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01}


def test_source_dtda_table_of_a_run_without_the_unrolled_column():
    old = {k: lds(0.5) for k in ("source", "source (L=1)", "influence", "trak")}
    new = old | {"unrolled": lds(0.586)}
    result = {
        "scenarios": {
            "early": {"test_acc": 0.9, "methods": old},
            "two-stage": {"test_acc": 0.917, "methods": new},
        },
        "meta": {"mode": "full", "seconds": 10.0},
    }
    rows = [line for line in source_dtda.markdown(result).splitlines() if line.startswith("| early")]
    assert rows == ["| early | 0.900 | " + " | ".join(["0.500 [0.490, 0.510]"] * 4) + " | - | +0.000 |"]
    assert "| 0.586 [0.576, 0.596] | +0.000 |" in source_dtda.markdown(result)


def test_unrolled_stages_table():
    row = {
        "lds_fresh": lds(0.383),
        "lds_fixed": lds(0.474),
        "seconds": 5.3,
        "cpu_seconds": 2.6,
        "load_1m": 12.3,
    }
    result = {
        "test_acc": 0.99,
        "truths": {"fresh": {"seconds": 0.1}, "fixed": {"seconds": 12.6, "load_1m": 12.5}},
        "methods": {"unrolled": row},
        "meta": {"mode": "quick", "n_train": 1000, "n_query": 100, "n_subsets": 50, "seconds": 73.0,
                 "load_1m_end": 12.4},
    }  # fmt: skip
    text = unrolled_stages.markdown(result)
    assert "`source_dtda --quick` (N = 1,000, 100 queries, M = 50 half subsets" in text
    assert "| unrolled | 0.383 [0.373, 0.393] | 0.474 [0.464, 0.484] | 5.3 | 2.6 | 12.3 |" in text


def test_source_dtda_refuses_a_partial_run_into_the_stored_results(capsys, tmp_path, monkeypatch):
    """`--scenarios` with the default --out would replace the stored mode entry (dropping the other
    scenarios' rows and the d-TDA blocks): refused before anything runs."""
    monkeypatch.setattr(source_dtda, "run_benchmark", lambda *a, **k: pytest.fail("must not run"))
    with pytest.raises(SystemExit) as exc:
        source_dtda.main(["--full", "--scenarios", "two-stage"])
    assert exc.value.code == 2 and "--out <another file>" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the default path spelled out is the same file
        source_dtda.main(["--full", "--scenarios", "early", "--out", str(source_dtda.RESULTS)])
    ran = []
    monkeypatch.setattr(source_dtda, "run_benchmark", lambda *a, **k: ran.append(a) or {})
    monkeypatch.setattr(source_dtda, "store_result", lambda *a, **k: None)
    monkeypatch.setattr(source_dtda, "markdown", lambda result: "")
    assert source_dtda.main(["--full", "--scenarios", "two-stage", "--out", str(tmp_path / "x.json")]) == 0
    assert ran and ran[0][3] == ("two-stage",)
