"""The benchmark harness on a tiny suite: JSON and Markdown are well-formed and hold the run's own numbers."""

from __future__ import annotations

import dataclasses
import json
import math

import dattri  # noqa: F401  - the test extra (requirements-bench.txt); `make test` installs it
import numpy as np
import pytest

from benchmarks.report import write_report
from benchmarks.run import _extrapolate, main, run_suite
from benchmarks.suites import GROUPS, SUITES, Method, Suite, influence_row
from tda_explorer.training import TrainConfig


def tiny_suite() -> Suite:
    """digits, first 240 train / 30 queries, logreg trained 4 epochs, M=6 half subsets, two methods."""
    return dataclasses.replace(
        SUITES["quick-digits-logreg"],  # its dataset and model, cut down
        name="tiny",
        description="test suite",
        train=TrainConfig(lr=0.1, weight_decay=1e-3, epochs=4, batch_size=32, checkpoints=2).to_dict(),
        lds={"n_subsets": 6, "alpha": 0.5, "seeds": [0], "subset_seed": 0},
        n_train=240,
        n_query=30,
        methods=(Method("grad_dot", "grad_dot", {"params": "all"}, peer="grad_dot"), influence_row("exact")),
        targets={"influence/exact": 0.0},
        isolate=True,
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    suite = tiny_suite()
    doc = run_suite(suite, **_quiet_run(root))
    return suite, doc, root


def _quiet_run(root) -> dict:
    """run_suite keywords for a tiny in-process run under `root`, with no log."""
    return dict(
        results_dir=root / "results",
        workspace=root / "ws",
        threads=1,
        isolate=False,
        workers=1,
        log=lambda m: None,
    )


def test_json_is_well_formed_and_complete(bench):
    suite, doc, root = bench
    on_disk = json.loads((root / "results" / "tiny.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))  # what was returned is what was written
    assert on_disk["config"] == suite.to_dict() and Suite.from_dict(on_disk["config"]) == suite
    assert on_disk["machine"]["torch_threads"] == 1 and on_disk["machine"]["cpu_count_logical"] >= 1
    assert on_disk["preparation"]["truth"]["n_subsets"] == 6
    assert [r["label"] for r in on_disk["rows"]] == ["grad_dot", "influence/exact"]
    for row in on_disk["rows"]:
        for side in ("ours", "dattri"):
            res = row[side]
            assert res["status"] == "ok", res
            assert res["seconds"] > 0 and res["peak_rss_mb"] >= 0 and res["threads"] == 1
            assert res["load_1m_before"] >= 0 and res["date"]
            lds = res["lds"]
            assert -1 <= lds["ci_low"] <= lds["mean"] <= lds["ci_high"] <= 1 and lds["n_query"] == 30
        mis = row["ours"]["mislabel"]
        assert 0 <= mis["auc"] <= 1 and 0 <= mis["baseline"]["auc"] <= 1 and mis["n_flipped"] == 24
        assert math.isclose(row["time_ratio"], row["ours"]["seconds"] / row["dattri"]["seconds"])
    # dattri's explicit IF got our damping (weight decay + our damping), so both solve the same system
    exact = on_disk["rows"][1]
    info = exact["ours"]["solve_info"][0]
    assert math.isclose(exact["dattri"]["damping"], exact["ours"]["weight_decay"] + info["damping"])
    assert exact["dattri"]["settings"]["damping"] == exact["dattri"]["damping"]


def test_numbers_come_from_the_run(bench):
    suite, doc, root = bench
    from tda_explorer.evaluation import lds_score, load_lds_truth
    from tda_explorer.store import Workspace

    truth = load_lds_truth(doc["preparation"]["truth_key"], Workspace(root / "ws"))
    for row in doc["rows"]:
        for side in ("ours", "dattri"):
            scores = np.load(
                root / "ws" / "bench_scores" / "tiny" / f"{row['label'].replace('/', '_')}.{side}.npy"
            )
            assert scores.shape == (30, 240)
            assert math.isclose(lds_score(scores, truth).mean, row[side]["lds"]["mean"], rel_tol=1e-9)
    # Grad-Dot is the same computation in both libraries
    gd = doc["rows"][0]
    assert abs(gd["ours"]["lds"]["mean"] - gd["dattri"]["lds"]["mean"]) < 0.02


def test_markdown_table_shows_the_json_numbers(bench):
    _, doc, root = bench
    md = write_report(root / "results", root / "RESULTS.md").read_text()
    assert "## tiny" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert header.count("|") - 1 == 12 and "time ours/theirs" in header
    assert all(r.count("|") == header.count("|") for r in rows)
    for row in doc["rows"]:
        lds = row["ours"]["lds"]
        cell = f"{lds['mean']:.3f} [{lds['ci_low']:.3f}, {lds['ci_high']:.3f}]"
        line = next(r for r in rows if r.startswith(f"| {row['label']} "))
        assert cell in line and f"{row['time_ratio']:.2f}" in line
        assert f"{row['ours']['mislabel']['auc']:.3f}" in line
    assert "own training loss (baseline" in md and f"{doc['baseline']['auc']:.3f}" in md
    assert "influence/exact: LDS >= 0.0: met" in md


def test_rerun_reuses_cached_rows_and_only_recomputes(bench):
    suite, doc, root = bench
    kw = _quiet_run(root)
    again = run_suite(suite, **kw)
    assert [r["ours"]["date"] for r in again["rows"]] == [r["ours"]["date"] for r in doc["rows"]]
    forced = run_suite(suite, only=["grad_dot"], force=True, peers=False, **kw)
    assert forced["rows"][0]["ours"]["seconds"] != doc["rows"][0]["ours"]["seconds"]
    assert forced["rows"][1]["ours"] == doc["rows"][1]["ours"]  # untouched row kept
    with pytest.raises(SystemExit, match="no row"):
        run_suite(suite, only=["nope"], **kw)


def test_registry_and_cli_wiring(tmp_path):
    assert set(GROUPS["full"]) == {"mnist5k-logreg", "mnist5k-mlp"} and GROUPS["quick"]
    for suite in SUITES.values():
        assert Suite.from_dict(json.loads(json.dumps(suite.to_dict()))) == suite
    logreg = {m.label for m in SUITES["mnist5k-logreg"].methods}
    assert {"influence/exact", "trak-10", "influence/ekfac", "repsim"} <= logreg
    assert "influence/exact" not in {m.label for m in SUITES["mnist5k-mlp"].methods}
    assert SUITES["mnist5k-logreg"].seeds == tuple(range(10))
    assert main(["--report", "--results-dir", str(tmp_path / "results")]) == 0
    assert "No results yet" in (tmp_path / "RESULTS.md").read_text()


def test_extrapolation_from_probe_points():
    assert math.isclose(_extrapolate([(10, 2.0), (30, 4.0)], 5000), 4.0 + 0.1 * 4970)
    assert math.isclose(_extrapolate([(16, 3.0), (32, 2.0)], 64), 4.0)  # noisy: proportional fallback
