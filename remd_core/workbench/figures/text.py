"""Text on a plotly canvas: the size constants and the title wrapping ``finish`` and the tests share."""

from __future__ import annotations

import re
import textwrap


CHAR_WIDTH = 0.58      # mean glyph width in em (conservative for Arial / Open Sans / Liberation Sans)
LINE_HEIGHT = 1.3      # plotly's line spacing for multi-line text, in em of the text's font
FONT_SIZE = 12         # plotly's default font size (tick labels, legends, facet labels)
TITLE_SIZE = 17        # plotly's default title size (1.4 x the font size)
AXIS_TITLE_SIZE = 14   # plotly's default axis-title size
SUP_SCALE = 0.7        # plotly draws <sup> text at 70 % of its line's size
MIN_WIDTH, MAX_WIDTH = 700, 1400       # plotly canvas, px
PANEL_WIDTH, PANEL_HEIGHT = 250, 210   # per facet column / row when the caller sets no size
MIN_HEIGHT, MAX_HEIGHT = 450, 1600
TOP_PAD = 16           # px above the title
SHARED = "shared-axis-title"           # first word of the name of an annotation that carries a shared axis title


def visible_text(markup: str) -> str:
    """``markup`` without its HTML tags, as plotly draws it."""
    return re.sub(r"<[^>]+>", "", markup or "")


def title_chars(width: float, size: float) -> int:
    """The most characters of ``size`` px text one title line may hold on a ``width`` px canvas:
    plotly starts the title at 5 % of the width; 20 px are kept free at the right edge."""
    return max(10, int((0.95 * width - 20) / (CHAR_WIDTH * size)))


def _wrap(text: str, chars: int) -> list[str]:
    """``text`` (plotly markup allowed) in lines of at most ``chars`` visible characters, broken at
    spaces outside tags; a word longer than a line stays whole."""
    if "<" not in text:
        return textwrap.wrap(text, max(1, chars), break_long_words=False, break_on_hyphens=False) or [text]
    lines, line = [], ""
    for word in re.split(r" (?![^<]*>)", text):
        joined = f"{line} {word}" if line else word
        if line and len(visible_text(joined)) > chars:
            lines.append(line)
            joined = word
        line = joined
    return [*lines, line]


def title_lines(fig) -> list[tuple[str, float]]:
    """The lines a plotly figure's title is drawn as: ``(visible text, font size px)`` per line."""
    text = fig.layout.title.text or ""
    size = fig.layout.title.font.size or TITLE_SIZE
    lines = []
    for line in re.split(r"<br\s*/?>", text, flags=re.I):
        sup = bool(re.fullmatch(r"\s*<sup>.*</sup>\s*", line, flags=re.S))
        lines.append((visible_text(line), size * SUP_SCALE if sup else size))
    return lines if text else []


def wrap_title(markup: str, width: float, size: float) -> str:
    """``markup`` (a plotly title: lines split by ``<br>``, a line wrapped whole in ``<sup>`` is a
    subtitle) with each line wrapped to ``title_chars`` at its own size."""
    out = []
    for line in re.split(r"<br\s*/?>", markup, flags=re.I):
        sup = re.fullmatch(r"\s*<sup>(.*)</sup>\s*", line, flags=re.S)
        if sup:
            out += [f"<sup>{part}</sup>" for part in _wrap(sup.group(1), title_chars(width, size * SUP_SCALE))]
        elif len(visible_text(line)) > title_chars(width, size):
            out += _wrap(line, title_chars(width, size))
        else:
            out.append(line)
    return "<br>".join(out)
