"""Text examples render as Markdown with label, score and the verbatim (escaped) sentence."""

from __future__ import annotations

import torch

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.viz import example_markdown
from tda_explorer.viz.render import escape_markdown


def test_example_markdown_shows_label_score_id_and_escaped_text():
    es = ExampleSet(
        ("sst2-train-7",),
        ("it 's $ 5 * worth - [every] _penny_ : # 1 .",),
        torch.tensor([1]),
        ("negative", "positive"),
        "text",
    )
    md = example_markdown(es, 0, score=-1.25e-3, flagged=True)
    head, body = md.split("  \n> ")
    assert head.startswith("**positive** · `-0.00125` · ⚑ flagged · *sst2\\-train\\-7*")
    assert "\\$ 5 \\* worth \\- \\[every\\] \\_penny\\_ \\: \\# 1 \\." in body
    assert example_markdown(es, 0).startswith("**positive** · *sst2")  # no score for a query


def test_escape_markdown_keeps_plain_words_and_joins_lines():
    assert escape_markdown("a fine\nfilm") == "a fine film"
