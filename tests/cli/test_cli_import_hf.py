"""`python -m tda_explorer import --hf-model DIR`: a tiny Hugging Face folder + a user text table -> a run key
that `runs` lists as imported and `attribute` scores."""

from __future__ import annotations

import pandas as pd
import pytest

from tda_explorer.cli import main
from tests.hf_tiny import sentences, tiny_model, tiny_splits


@pytest.mark.slow
def test_cli_imports_a_hugging_face_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny_model(tmp_path / "bert", splits=tiny_splits())
    texts, labels = sentences(40, seed=3)
    table = tmp_path / "reviews.csv"
    pd.DataFrame({"text": texts, "label": ["positive" if y else "negative" for y in labels]}).to_csv(table)
    ws = str(tmp_path / "ws")
    data = ["--dataset", "text", "--path", str(table), "--data-option", "text_column=text"]
    data += ["--data-option", "label_column=label"]
    assert main(["--workspace", ws, "import", *data, "--hf-model", str(folder), "--max-length", "16"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["--workspace", ws, "runs"]) == 0
    assert key in capsys.readouterr().out
    assert main(["--workspace", ws, "attribute", "--run", key, "--method", "grad_dot"]) == 0
    assert "grad_dot: scores 4 queries x 32 train" in capsys.readouterr().out
    assert main(["--workspace", ws, "import", *data, "--hf-model", str(folder), "--factory", "a:b"]) == 2
    assert "--hf-model takes no --factory" in capsys.readouterr().err
