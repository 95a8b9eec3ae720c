"""The per-method benchmarks' shared command line and results file."""

from __future__ import annotations

import json

from benchmarks.console import machine_info, mode_parser, store_result


def test_mode_parser_defaults_to_no_mode_and_two_workers():
    parser = mode_parser("demo", "training processes")
    assert vars(parser.parse_args([])) == {"mode": None, "workers": 2}
    assert vars(parser.parse_args(["--full", "--workers", "3"])) == {"mode": "full", "workers": 3}


def test_store_result_keeps_other_modes_and_the_kept_blocks(tmp_path):
    path = tmp_path / "sub" / "bench.json"
    store_result(path, "full", {"rows": [1]})
    store_result(path, "quick", {"rows": [2], "labels": {"a": 1}})
    store_result(path, "quick", {"rows": [3]}, keep=("labels",))  # labels carried over
    store_result(path, "quick", {"rows": [4], "labels": {"b": 2}}, keep=("labels",))  # a new block wins
    assert json.loads(path.read_text()) == {"full": {"rows": [1]}, "quick": {"rows": [4], "labels": {"b": 2}}}
    store_result(path, "full", {"rows": [5]})  # no keep: the entry is replaced whole
    assert json.loads(path.read_text())["full"] == {"rows": [5]}
    assert set(machine_info(2)) == {"cpus", "torch_threads", "workers", "python", "torch", "loadavg_end"}
