"""CLI smoke tests: --help for every subcommand, train -> runs -> attribute, clear user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tda_explorer.cli import build_parser, main

SUBCOMMANDS = ["train", "runs", "attribute"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_parser_knows_every_subcommand():
    text = build_parser().format_help()
    assert all(c in text for c in SUBCOMMANDS)


def test_train_runs_attribute_end_to_end(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert (
        main(
            [
                "--workspace",
                ws,
                "train",
                "--dataset",
                "digits",
                "--model",
                "logreg",
                "--seeds",
                "2",
                "--epochs",
                "3",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "stored in" in out and "seed 1: test acc" in out
    run_key = out.split()[1]
    assert main(["--workspace", ws, "runs"]) == 0
    assert run_key in capsys.readouterr().out
    assert (
        main(
            ["--workspace", ws, "attribute", "--run", run_key, "--method", "grad_dot", "--set", "params=head"]
        )
        == 0
    )
    assert "250 queries x 1297 train" in capsys.readouterr().out


def test_unknown_run_is_a_clear_error(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path), "attribute", "--run", "nope", "--method", "grad_dot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err


def test_module_entry_point_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tda_explorer", "--workspace", str(tmp_path), "runs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no runs yet" in proc.stdout
