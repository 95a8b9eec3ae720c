"""escape_markdown / escape_html: user text renders as the literal characters, never as markup."""

from __future__ import annotations

import html
import re

import pytest

from tda_explorer.viz.text import escape_html, escape_markdown

markdown_it = pytest.importorskip("markdown_it")

ATTACKS = [
    "[click me](http://evil.example/x)",
    "![pixel](http://evil.example/track.png)",
    "*bold* and **strong** and _under_ and __dunder__",
    "`code` and ``more``",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "# heading",
    "- item",
    "1. item",
    "> quote",
    "a | b |\n|---|---|",
    "~~strike~~",
    "$x^2$ and $$y$$",
    ":red[alarm] :material/home: :smile:",
    "&lt;script&gt; &#91;x&#93;",
    "back\\slash\\[x](y)",
    "<http://autolink.example>",
    "line one\n\nline two\r\n\tindented",
    "=cmd|' /C calc'!A0",
    "plain text 007 3.50",
]


def _render(markdown: str) -> str:
    return markdown_it.MarkdownIt("commonmark").enable("table").enable("strikethrough").render(markdown)


@pytest.mark.parametrize("text", ATTACKS)
def test_escaped_markdown_renders_as_the_literal_text(text: str) -> None:
    out = _render(escape_markdown(text))
    assert re.fullmatch(r"<p>.*</p>\n", out, flags=re.S), out  # one plain paragraph, nothing else
    inner = out[len("<p>") : -len("</p>\n")]
    assert "<" not in inner.replace("&lt;", "")  # no tag of any kind: no a, img, em, code, script
    assert html.unescape(inner) == " ".join(text.split())


@pytest.mark.parametrize("text", ATTACKS)
def test_escaped_markdown_inside_a_caption_stays_one_emphasis(text: str) -> None:
    out = _render(f"*{escape_markdown(text)}*")
    assert out.startswith("<p><em>") and out.endswith("</em></p>\n") and out.count("<em>") == 1
    assert "<a " not in out and "<img" not in out and "<script" not in out


def test_escape_markdown_keeps_plain_words_and_accepts_any_value() -> None:
    assert escape_markdown("a fine\nfilm") == "a fine film"
    assert escape_markdown(7) == "7" and escape_markdown("ab\x00c") == "abc"


@pytest.mark.parametrize("text", ATTACKS)
def test_escape_html(text: str) -> None:
    out = escape_html(text)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out
    assert html.unescape(out) == " ".join(text.split())
