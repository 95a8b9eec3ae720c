"""Figures and example renderers used by the app's pages (plotly / numpy only; never streamlit)."""

from __future__ import annotations

from tda_explorer.viz.render import (
    example_caption,
    example_features,
    example_image,
    example_markdown,
    example_text,
)

__all__ = ["example_caption", "example_features", "example_image", "example_markdown", "example_text"]
