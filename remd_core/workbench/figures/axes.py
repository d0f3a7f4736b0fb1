"""Axis titles and spacing of a plotly figure's subplots: one title per shared axis, and panels moved
apart where their titles or tick labels would overlap."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .text import AXIS_TITLE_SIZE, CHAR_WIDTH, FONT_SIZE, LINE_HEIGHT, SHARED
from .grid import _axes, _is_shared, _domain, _key, _layout_key, subplots, visible_subplots


def _axis_values(fig, axis: str) -> list:
    """The data values on ``axis`` (``"x2"``, ``"y3"``) over every trace drawn against it."""
    letter = axis[0]
    values = []
    for trace in fig.data:
        if (getattr(trace, f"{letter}axis", None) or letter) != axis or not hasattr(trace, f"{letter}axis"):
            continue
        data = getattr(trace, letter, None)
        if data is not None:
            values.extend(np.asarray(data, dtype=object).ravel().tolist())
    return values


def _tick_label_chars(fig, axis: str) -> int:
    """An estimate of the longest tick label of ``axis``: category names as they are, numbers as
    plotly formats round ticks (a few significant digits and a sign)."""
    values = [v for v in _axis_values(fig, axis) if v is not None]
    if not values:
        return 4
    numbers = pd.to_numeric(pd.Series(values), errors="coerce")
    if numbers.isna().all():
        return max(len(str(v)) for v in values)
    finite = numbers[np.isfinite(numbers)]
    if finite.empty:
        return 4
    layout = fig.layout[_layout_key(axis)]
    if layout.type == "log":
        return max(3, len(f"{10 ** math.floor(math.log10(max(finite.abs().max(), 1e-12))):g}"))
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / 5))
    decimals = max(0, -math.floor(math.log10(step)))
    return max(len(f"{v:.{decimals}f}") for v in (lo, hi, (lo + hi) / 2)) + (1 if lo < 0 else 0)


def _rotated(fig, axis: str, cell_px: float) -> bool:
    values = [str(v) for v in _axis_values(fig, axis)]
    categories = list(dict.fromkeys(values))
    if not categories or not pd.to_numeric(pd.Series(values), errors="coerce").isna().all():
        return False
    return max(len(c) for c in categories) * CHAR_WIDTH * FONT_SIZE > cell_px / len(categories)


def _tick_extent(fig, axis: str, cell_px: float) -> float:
    """px the tick labels of ``axis`` take away from the plot (height for x, width for y)."""
    layout = fig.layout[_layout_key(axis)]
    if layout.showticklabels is False or layout.visible is False:
        return 0.0
    size = (layout.tickfont.size if layout.tickfont and layout.tickfont.size else FONT_SIZE)
    if axis[0] == "x":
        if _rotated(fig, axis, cell_px):
            return 0.6 * _tick_label_chars(fig, axis) * CHAR_WIDTH * size + size
        return LINE_HEIGHT * size + 2
    return _tick_label_chars(fig, axis) * CHAR_WIDTH * size + 4


@dataclass
class AxisTitle:
    """An axis title as drawn: ``letter`` ``"x"`` or ``"y"``, its text, the axes it stands for,
    and whether it is one annotation shared by several facets."""

    letter: str
    text: str
    axes: tuple[str, ...]
    shared: bool


def axis_titles(fig) -> list[AxisTitle]:
    """Every axis title a plotly figure draws: the titles of its visible axes and the shared ones."""
    out = []
    for letter in ("x", "y"):
        for name, axis in _axes(fig, letter).items():
            if axis.visible is not False and axis.title and axis.title.text:
                out.append(AxisTitle(letter, axis.title.text, (name,), False))
    for a in fig.layout.annotations:
        if _is_shared(a):
            _, letter, *axes = a.name.split()
            out.append(AxisTitle(letter, a.text, tuple(axes), True))
    return out


def _shared_titles(fig, width: float, height: float) -> None:
    """One annotation per x title repeated along a grid row (per y title repeated down a column)."""
    margin = fig.layout.margin
    plot_w = width - (margin.l or 80) - (margin.r or 80)
    plot_h = height - (margin.t or 100) - (margin.b or 80)
    cells = [c for c in visible_subplots(fig) if c.has_data]
    annotations = list(fig.layout.annotations)  # a second pass keeps the first pass's shared titles
    for letter in ("x", "y"):
        groups: dict = {}
        for c in cells:
            axis = fig.layout[_layout_key(getattr(c, letter))]
            text = axis.title.text if axis.title else None
            if not text:
                continue
            line = _key(c.y_domain) if letter == "x" else _key(c.x_domain)
            groups.setdefault((line, text), []).append(c)
        for (line, text), group in groups.items():
            if len(group) < 2:
                continue
            names = tuple(getattr(c, letter) for c in group)
            size = fig.layout[_layout_key(names[0])].title.font.size or AXIS_TITLE_SIZE
            if letter == "x":
                lo, hi = min(c.x_domain[0] for c in group), max(c.x_domain[1] for c in group)
                cell_px = (group[0].x_domain[1] - group[0].x_domain[0]) * plot_w
                shift = max(_tick_extent(fig, n, cell_px) for n in names) + 10
                note = dict(x=(lo + hi) / 2, y=line[0], xanchor="center", yanchor="top", yshift=-shift)
                needed = shift + LINE_HEIGHT * size + 8
                if (margin.b or 80) < needed:
                    margin.b = math.ceil(needed)
            else:
                lo, hi = min(c.y_domain[0] for c in group), max(c.y_domain[1] for c in group)
                cell_px = (group[0].y_domain[1] - group[0].y_domain[0]) * plot_h
                shift = max(_tick_extent(fig, n, cell_px) for n in names) + 10
                note = dict(x=line[0], y=(lo + hi) / 2, xanchor="right", yanchor="middle", xshift=-shift,
                            textangle=-90)
                needed = shift + LINE_HEIGHT * size + 8
                if (margin.l or 80) < needed:
                    margin.l = math.ceil(needed)
            for n in names:
                fig.layout[_layout_key(n)].title.text = None
            annotations.append(dict(text=text, xref="paper", yref="paper", showarrow=False,
                                    name=" ".join([SHARED, letter, *names]), font=dict(size=size), **note))
    fig.layout.annotations = annotations


def _separate_columns(fig, width: float) -> None:
    """Move adjacent columns apart where the right-hand axis of one and the left-hand axis of the
    next (tick labels and titles) need more room than the gap between them."""
    cells = visible_subplots(fig)
    cols = sorted({_key(c.x_domain) for c in cells})
    if len(cols) < 2:
        return
    margin = fig.layout.margin
    plot_w = width - (margin.l or 80) - (margin.r or 80)

    def side_px(col, side: str) -> float:
        px = 0.0
        for c in cells:
            if _key(c.x_domain) != col:
                continue
            for name, axis in _axes(fig, "y").items():
                on_cell = name == c.y or axis.overlaying == c.y
                if not on_cell or axis.visible is False or (axis.side or "left") != side:
                    continue
                title = axis.title.text if axis.title else None
                size = (axis.title.font.size if axis.title and axis.title.font.size else AXIS_TITLE_SIZE)
                px = max(px, _tick_extent(fig, name, 0.0) + (LINE_HEIGHT * size + 12 if title else 0))
        return px

    new = _spread(cols, [(side_px(a, "right") + side_px(b, "left") + 12) / plot_w for a, b in zip(cols, cols[1:])])
    if new is None:
        return
    for c in subplots(fig):
        if _key(c.x_domain) in new:
            fig.layout[_layout_key(c.x)].domain = new[_key(c.x_domain)]
    for a in fig.layout.annotations:
        if _is_shared(a) or a.xref != "paper" or a.showarrow is not False or a.textangle == 90:
            continue
        col = next((k for k in cols if abs((k[0] + k[1]) / 2 - (a.x or 0)) < 1e-3), None)
        if col is not None:
            a.x = sum(new[col]) / 2


def _separate_rows(fig, height: float) -> None:
    """Move adjacent rows apart where what hangs below the upper row (x tick labels and titles)
    and what stands on the lower one (its facet or subplot labels) need more room than the gap."""
    cells = visible_subplots(fig)
    rows = sorted({_key(c.y_domain) for c in cells})
    if len(rows) < 2:
        return
    margin = fig.layout.margin
    plot_w = fig.layout.width - (margin.l or 80) - (margin.r or 80)
    plot_h = height - (margin.t or 100) - (margin.b or 80)

    def below_px(row) -> float:
        px = 0.0
        for c in cells:
            axis = fig.layout[_layout_key(c.x)]
            if _key(c.y_domain) != row or axis.visible is False:
                continue
            title = axis.title.text if axis.title else None
            size = axis.title.font.size if axis.title and axis.title.font.size else AXIS_TITLE_SIZE
            cell_px = (c.x_domain[1] - c.x_domain[0]) * plot_w
            px = max(px, _tick_extent(fig, c.x, cell_px) + (LINE_HEIGHT * size + 10 if title else 0))
        return px

    def above_px(row) -> float:
        lines = [len(re.split(r"<br\s*/?>", a.text or "")) for a in fig.layout.annotations
                 if not _is_shared(a) and a.yref == "paper" and a.showarrow is False and a.textangle != 90
                 and a.yanchor == "bottom" and abs((a.y or 0) - row[1]) < 1e-3]
        size = max([FONT_SIZE] + [a.font.size or FONT_SIZE for a in fig.layout.annotations if a.font])
        return max(lines, default=0) * LINE_HEIGHT * size

    new = _spread(rows, [(below_px(upper) + above_px(lower) + 8) / plot_h for lower, upper in zip(rows, rows[1:])])
    if new is None:
        return
    for c in subplots(fig):
        if _key(c.y_domain) in new:
            domain = new[_key(c.y_domain)]
            fig.layout[_layout_key(c.y)].domain = domain
            for overlay in _axes(fig, "y").values():
                if overlay.overlaying == c.y:
                    overlay.domain = domain
    for a in fig.layout.annotations:
        if _is_shared(a) or a.yref != "paper" or a.showarrow is not False:
            continue
        if a.textangle == 90:
            row = next((r for r in rows if abs((r[0] + r[1]) / 2 - (a.y or 0)) < 1e-3), None)
            if row is not None:
                a.y = sum(new[row]) / 2
        elif a.yanchor == "bottom":
            row = next((r for r in rows if abs(r[1] - (a.y or 0)) < 1e-3), None)
            if row is not None:
                a.y = new[row][1]


def _spread(intervals: list[tuple[float, float]], needed: list[float]) -> dict | None:
    """New domains for ``intervals`` (sorted, paper units) whose gaps are at least ``needed``,
    over the same span and with equal sizes; None where the gaps suffice or no room is left."""
    gaps = [b[0] - a[1] for a, b in zip(intervals, intervals[1:])]
    if all(g >= n - 1e-9 for g, n in zip(gaps, needed)):
        return None
    gaps = [max(g, n) for g, n in zip(gaps, needed)]
    lo, hi = intervals[0][0], intervals[-1][1]
    size = (hi - lo - sum(gaps)) / len(intervals)
    if size <= 0.05:
        return None
    new, start = {}, lo
    for i, interval in enumerate(intervals):
        new[interval] = (start, start + size)
        start += size + (gaps[i] if i < len(gaps) else 0)
    return new


def _place_shared_titles(fig) -> None:
    """Centre every shared axis title on the axes it stands for, as they are now."""
    for a in fig.layout.annotations:
        if not _is_shared(a):
            continue
        _, letter, *names = a.name.split()
        x_domains = [_domain(fig.layout[_layout_key(n if letter == "x" else _anchor(fig, n))]) for n in names]
        y_domains = [_domain(fig.layout[_layout_key(_anchor(fig, n) if letter == "x" else n)]) for n in names]
        if letter == "x":
            a.x = (min(d[0] for d in x_domains) + max(d[1] for d in x_domains)) / 2
            a.y = min(d[0] for d in y_domains)
        else:
            a.x = min(d[0] for d in x_domains)
            a.y = (min(d[0] for d in y_domains) + max(d[1] for d in y_domains)) / 2


def _anchor(fig, axis: str) -> str:
    anchor = fig.layout[_layout_key(axis)].anchor
    return anchor if anchor and anchor != "free" else ("y" if axis[0] == "x" else "x")
