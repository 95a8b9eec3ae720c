"""The README's Python snippets run verbatim as plain scripts ("Your own model" prints proponents; the
multi-seed example spawns worker processes, which a script without a `__main__` guard would break)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_your_own_model_snippet_runs_as_a_script(tmp_path):
    text = README.read_text()
    block = re.search(r"<!-- your-own-model -->\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its 'Your own model' snippet"
    code = block.group(1)
    after_training = code[code.index("run = import_run") :].strip().splitlines()
    assert len(after_training) <= 10, "from a trained module to proponents should stay short"
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = dict(os.environ, TDA_WORKSPACE=str(tmp_path / "ws"), PYTHONPATH=str(README.parent))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    match = re.search(r"supporting: \[(.*)\]\nopposing: \[(.*)\]", out.stdout)
    assert match and match.group(1).count("digits-") == 5 and match.group(2).count("digits-") == 5


@pytest.mark.slow
def test_readme_python_example_runs_as_a_script(tmp_path):
    block = re.search(r"<!-- python-example -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert block and 'if __name__ == "__main__":' in block.group(1)
    script = tmp_path / "example.py"
    script.write_text(block.group(1))
    env = dict(os.environ, TDA_WORKSPACE=str(tmp_path / "ws"), PYTHONPATH=str(README.parent), TDA_WORKERS="2")
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(500, 4000)" in out.stdout
