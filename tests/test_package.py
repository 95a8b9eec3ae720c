"""House rules that a test can check."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_does_not_import_streamlit():
    code = (
        "import sys, tda_explorer, tda_explorer.cli, tda_explorer.attributors, tda_explorer.training, "
        "tda_explorer.store, tda_explorer.viz, tda_explorer.data, tda_explorer.models; "
        "assert 'streamlit' not in sys.modules, 'streamlit imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
