"""The progress callback every long step takes (the core never draws a bar itself)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""Progress callback: `(done, total, message)`; the CLI maps it to tqdm, the app to st.progress."""
