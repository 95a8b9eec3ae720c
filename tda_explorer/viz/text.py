"""Escaping user text (ids, class names, notes, texts from a user's file) for display.

Anything a user's dataset provides is data, never markup: pass it through `escape_markdown` before
putting it into `st.markdown` / `st.caption` / a `*{...}*` caption, and through `escape_html` before
putting it into a plotly hover template or any HTML. Plain `st.text`, `st.code` and dataframes need
no escaping.

No streamlit import here (the package never imports it); the pages call these helpers.
"""

from __future__ import annotations

import html
import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")
"""CommonMark's ASCII punctuation that can start markup or an entity, plus Streamlit's own: `$` (math),
`:` (emoji shortcodes and `:red[...]` colour directives)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape_markdown(text: object) -> str:
    r"""`text` shown verbatim inside Markdown: special characters backslash-escaped, on one line.

    Escapes ``\ ` * _ { } [ ] ( ) # + - . ! | < > ~ $ : &`` so that links `[x](url)`, images
    `![x](url)`, emphasis, code spans, headings, lists, tables, HTML tags such as `<script>`, entities,
    Streamlit math `$...$` and `:colour[...]` directives all render as the literal characters. Runs of
    whitespace (including newlines, which would end a caption's emphasis or start a block) become one
    space; other control characters are dropped.

    Args:
        text: Any value; non-strings are converted with `str`.

    Returns:
        The escaped one-line string.

    Example:
        >>> print(escape_markdown("[x](u) *a*"))
        \[x\]\(u\) \*a\*
    """
    one_line = " ".join(_CONTROL.sub("", str(text)).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)


def escape_html(text: object) -> str:
    """`text` shown verbatim inside HTML (plotly hover labels, `unsafe_allow_html` blocks).

    `&`, `<`, `>`, `"` and `'` become entities; newlines become spaces (plotly uses `<br>` for breaks)
    and other control characters are dropped.

    Args:
        text: Any value; non-strings are converted with `str`.

    Returns:
        The escaped one-line string.
    """
    one_line = " ".join(_CONTROL.sub("", str(text)).split())
    return html.escape(one_line, quote=True)
