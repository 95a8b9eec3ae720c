"""TDA Explorer: training data attribution — which training examples made my model do this?

The compute core. It never imports streamlit; the app in `app.py`/`views/` is a
thin layer over it, and everything here is usable from Python and the CLI alone.
"""

from __future__ import annotations

__version__ = "0.1.0"
