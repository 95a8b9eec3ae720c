"""`python -m tda_explorer import`: a factory module in the current folder + weight files -> a run key
that `runs` lists as imported and `attribute` scores; bad weights exit 2 with a one-line message."""

from __future__ import annotations

import textwrap

import torch

from tda_explorer.cli import main

MODULE = textwrap.dedent(
    """
    from torch import nn


    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    """
)


def test_cli_import_then_attribute(tmp_path, monkeypatch, capsys):
    (tmp_path / "usernets_cli.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernets_cli

    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(usernets_cli.build().state_dict(), tmp_path / f"w{seed}.pt")
    ws = str(tmp_path / "ws")
    argv = ["--workspace", ws, "import", "--dataset", "digits", "--factory", "usernets_cli:build"]
    assert main([*argv, "--weights", "w0.pt", "--weights", "w1.pt"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["--workspace", ws, "runs"]) == 0
    listing = capsys.readouterr().out
    assert key in listing and "imported usernets_cli:build" in listing
    assert main(["--workspace", ws, "attribute", "--run", key, "--method", "grad_dot"]) == 0
    assert "grad_dot: scores 250 queries x 1297 train" in capsys.readouterr().out

    torch.save({"0.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    assert main([*argv, "--weights", "bad.pt"]) == 2
    err = capsys.readouterr().err
    assert "error: weights[0]: the weights do not fit" in err and "missing" in err
