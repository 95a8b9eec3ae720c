"""Figures and example renderers used by the app's pages (plotly / numpy only; never streamlit)."""

from __future__ import annotations

from tda_explorer.viz.render import (
    example_caption,
    example_features,
    example_image,
    example_markdown,
    example_text,
)
from tda_explorer.viz.text import escape_html, escape_markdown

__all__ = [
    "escape_html",
    "escape_markdown",
    "example_caption",
    "example_features",
    "example_image",
    "example_markdown",
    "example_text",
]
