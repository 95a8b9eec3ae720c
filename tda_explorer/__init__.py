"""TDA Explorer: training data attribution — which training examples made my model do this?

The compute core. It never imports streamlit; the app in `app.py`/`views/` is a
thin layer over it, and everything here is usable from Python and the CLI alone.

Entry points for your own model (imported lazily, so `import tda_explorer` stays light):
`import_run`, `import_hf_run`, `load_run`, `register_factory` (see README, "Your own model").
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "import_run": "tda_explorer.training.imported",
    "import_hf_run": "tda_explorer.training.imported_hf",
    "load_run": "tda_explorer.training.loading",
    "register_factory": "tda_explorer.models.imported",
    "UserTrainFn": "tda_explorer.training.imported",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tda_explorer' has no attribute {name!r}")
