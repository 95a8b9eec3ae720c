"""Renderers of single examples for the viewers (no Streamlit here).

`example_image` returns `uint8 [H, W]` (grayscale) or `[H, W, 3]` arrays upscaled with nearest
neighbour so 8x8 and 28x28 digits are legible; `example_text` returns the (shortened) sentence;
`example_caption` a one-line label/score caption; `example_markdown` a text example as a Markdown
block (label and score first, then the escaped sentence), for lists of text examples.
"""

from __future__ import annotations

import numpy as np

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.viz.text import escape_markdown


def example_image(examples: ExampleSet, index: int, size: int = 112) -> np.ndarray:
    """Image `index` as uint8 `[size', size']` or `[size', size', 3]` (integer upscaling, nearest)."""
    x = examples.inputs[index].detach().cpu().numpy()  # [C, H, W] in [0, 1]
    img = np.clip(x * 255.0, 0, 255).astype(np.uint8)
    img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    factor = max(1, size // max(img.shape[0], img.shape[1]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def example_text(examples: ExampleSet, index: int, max_chars: int = 300) -> str:
    """Text of example `index`, cut at `max_chars` with an ellipsis."""
    t = examples.inputs[index]
    return t if len(t) <= max_chars else t[: max_chars - 1] + "…"


def example_features(examples: ExampleSet, index: int, max_items: int = 8) -> str:
    """A short `f0=…, f1=…` rendering of a tabular example."""
    x = examples.inputs[index].tolist()
    shown = ", ".join(f"x{i}={v:.3g}" for i, v in enumerate(x[:max_items]))
    return shown + (", …" if len(x) > max_items else "")


def example_caption(
    examples: ExampleSet, index: int, score: float | None = None, flagged: bool = False
) -> str:
    """`"id · label 7 · score +1.2e-03"` (with a flag mark when flagged)."""
    label = examples.class_names[int(examples.labels[index])]
    parts = [examples.ids[index], f"label {label}"]
    if score is not None:
        parts.append(f"score {score:+.3g}")
    if flagged:
        parts.append("⚑ flagged")
    return " · ".join(parts)


def example_markdown(
    examples: ExampleSet, index: int, score: float | None = None, flagged: bool = False, max_chars: int = 300
) -> str:
    """A text example as Markdown: `**label** · score · ⚑ · id` on one line, the sentence quoted below.

    The sentence is escaped (SST-2 has `$`, `*`, `-` ...), so it shows verbatim.
    """
    label = examples.class_names[int(examples.labels[index])]
    head = [f"**{escape_markdown(label)}**"]
    if score is not None:
        head.append(f"`{score:+.3g}`")
    if flagged:
        head.append("⚑ flagged")
    head.append(f"*{escape_markdown(examples.ids[index])}*")
    return " · ".join(head) + "  \n> " + escape_markdown(example_text(examples, index, max_chars))
