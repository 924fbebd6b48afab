"""Stack Exchange HTML -> Markdown-ish text, in time linear in the input.

Dumps are untrusted: a regex such as ``<pre>(.*?)</pre>`` rescans to the end of the text
for every unclosed ``<pre>`` (quadratic: hours for a 1 MB record), and CPython 3.11's
``html.parser`` is quadratic on unclosed ``<a`` tags as well. Here one pass of a tag regex
whose every repetition stops at the next ``<`` or ``>`` (so no position is scanned twice)
walks the text; comments are cut with ``str.find``. Character references are unescaped
after numeric ones too long for ``int()`` (a ``ValueError`` in ``html.unescape``) are
replaced by U+FFFD.
"""

from __future__ import annotations

import html
import re

_HTML_HINT = re.compile(r"</?(p|pre|code|br|a|ul|ol|li|blockquote|h\d|em|strong)\b", re.I)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)[^<>]*>")
_BREAK_AFTER = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol"}
_LONG_CHARREF = re.compile(r"&#(?:[0-9]{8,}|[xX][0-9a-fA-F]{7,});?")
_BLANK_RUNS = re.compile(r"\n{3,}")
_FENCE = "\n```\n"


def unescape(s: str) -> str:
    """``html.unescape`` that cannot raise on ``&#`` + thousands of digits."""
    return html.unescape(_LONG_CHARREF.sub("\ufffd", s))


def _strip_comments(s: str) -> str:
    if "<!--" not in s:
        return s
    out, pos = [], 0
    while (i := s.find("<!--", pos)) != -1:
        out.append(s[pos:i])
        j = s.find("-->", i + 4)
        if j == -1:  # unclosed: the rest is a comment
            return "".join(out)
        pos = j + 3
    out.append(s[pos:])
    return "".join(out)


def html_to_text(s: str) -> str:
    """``<pre>`` blocks fenced, inline ``<code>`` in backticks, block ends as line breaks,
    other tags removed, entities unescaped; plain text passes through unchanged."""
    if not _HTML_HINT.search(s):
        return s.strip()
    s = _strip_comments(s)
    out: list[str] = []
    pre: list[str] | None = None  # the open <pre> block's pieces, else None
    pre_depth, pre_text, pos = 0, False, 0
    for m in _TAG.finditer(s):
        data = s[pos : m.start()]
        pos = m.end()
        if pre is not None:
            pre.append(data)
            pre_text = pre_text or (data != "" and not data.isspace())
        else:
            out.append(data)
        closing, tag = m.group(1) == "/", m.group(2).lower()
        if tag == "pre":
            if not closing:
                pre_depth += 1
                if pre is None:
                    pre, pre_text = [], False
            elif pre is not None:
                pre_depth -= 1
                if pre_depth == 0:
                    out.append(_fence(pre))
                    pre = None
        elif pre is not None:
            if tag == "code" and not closing and not pre_text:
                pre.clear()  # whitespace between <pre> and <code> is not code
            elif tag == "br":
                pre.append("\n")
        elif tag == "code":
            out.append("`")
        elif tag == "br" or (closing and tag in _BREAK_AFTER):
            out.append("\n")
    tail = s[pos:]
    if pre is not None:  # unclosed <pre>: fence what there is
        pre.append(tail)
        out.append(_fence(pre))
    else:
        out.append(tail)
    return _BLANK_RUNS.sub("\n\n", unescape("".join(out))).strip()


def _fence(pieces: list[str]) -> str:
    return _FENCE + "".join(pieces).strip("\n") + _FENCE
