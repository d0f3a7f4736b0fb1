"""The one layout pass every figure of the workbench goes through, and the figures the library draws.

``finish(fig)`` takes a plotly or a matplotlib figure, lays it out in place and returns it, so that a
figure reads at a glance whatever its text and however many facets it has:

- a fixed canvas (``width`` x ``height`` px for plotly: the size of the saved PNG and of the view in a
  notebook alike), grown with the number of facet rows and columns when the caller set none;
- a title that fits the canvas: plotly titles are wrapped at word boundaries into lines of at most
  ``title_chars(width, size)`` characters (subtitles in ``<sup>`` count at their smaller size) and
  the top margin grows with the lines; matplotlib titles are wrapped until their rendered extent
  lies within their axes (``suptitle`` within the figure);
- no facet without data: a facet row or column with no data is removed and the others take its
  room; a single empty cell of a facet grid draws nothing (no axes, no ticks), and the tick labels
  that the grid showed only on that cell move to its nearest neighbour with data;
- one axis title per shared axis: facets that repeat one x title along a row of the grid (or one y
  title down a column) get it once, centred under (beside) them, instead of one overlapping copy
  per facet; adjacent panels whose axis titles or tick labels would overlap (a right-hand y axis
  beside the next panel's left one, a row's x tick labels over the next row) are moved apart, and an
  axis that shares its range with no other shows its own tick labels;
- facet labels wrapped to their facet's width; a line with a single point gets a marker (a lone
  point of a line trace is otherwise not drawn).

The checks the tests make are functions here too (``title_lines``, ``subplots``, ``axis_titles``),
so that the rule the layout follows and the rule the tests assert are the same.

``record.save_figure`` calls ``finish`` before it writes the PNG (and, for plotly, the self-contained
HTML), so a notebook that builds a figure with ``plotly.express`` and saves it shows and saves the
laid-out figure: the notebook displays the same object after saving it. Library figures call it
themselves: ``oscillation_figure`` (batch and probe losses side by side), ``compare_figure``, and
the widget views (``widgets.margin_view``, ``widgets.gamma_view``).

Text widths are estimated, not measured, for plotly (its fonts are rendered later, in the browser or
kaleido): ``CHAR_WIDTH`` em per character, an upper bound for the Latin text of our titles in the
sans-serif fonts plotly falls back on.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # no backend chosen here: a notebook keeps its inline one
import numpy as np
import pandas as pd

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


# --------------------------------------------------------------------------------------------------
# entry point


def finish(fig, width: int | None = None, height: int | None = None):
    """Lay out ``fig`` (plotly or matplotlib) in place and return it; see the module docstring.
    ``width``/``height`` (plotly, px) override the figure's own size. Applying it twice changes
    nothing the first pass did not."""
    if hasattr(fig, "to_plotly_json"):
        return _finish_plotly(fig, width, height)
    if hasattr(fig, "savefig"):
        return _finish_matplotlib(fig)
    raise TypeError(f"finish() takes a plotly or matplotlib figure, not {type(fig).__name__}")


# --------------------------------------------------------------------------------------------------
# text helpers


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


# --------------------------------------------------------------------------------------------------
# plotly: the grid of subplots


@dataclass
class Subplot:
    """One plotly subplot: its primary x and y axis names (``"x2"``, ``"y2"``), their domains in
    paper units, and whether any trace on it holds a finite value."""

    x: str
    y: str
    x_domain: tuple[float, float]
    y_domain: tuple[float, float]
    has_data: bool


def _layout_key(axis: str) -> str:
    """``"x2"`` -> ``"xaxis2"``."""
    return f"{axis[0]}axis{axis[1:]}"


def _axis_name(key: str) -> str:
    """``"xaxis2"`` -> ``"x2"``."""
    return key[0] + key[5:]


def _axes(fig, letter: str) -> dict[str, object]:
    names = [k for k in fig.layout.to_plotly_json() if re.fullmatch(f"{letter}axis\\d*", k)]
    if not names:
        names = [f"{letter}axis"]
    return {_axis_name(k): fig.layout[k] for k in names}


def _domain(axis) -> tuple[float, float]:
    return tuple(float(v) for v in (axis.domain or (0.0, 1.0)))


def _has_values(values) -> bool:
    """Whether ``values`` hold a finite number or a non-empty category."""
    if values is None:
        return False
    items = pd.Series(np.asarray(values, dtype=object).ravel())
    numbers = pd.to_numeric(items, errors="coerce").to_numpy(dtype=np.float64)
    return bool(np.isfinite(numbers).any() or items.map(lambda v: isinstance(v, str) and v != "").any())


def _trace_has_data(trace) -> bool:
    if trace.type in ("heatmap", "contour", "histogram2d", "histogram2dcontour") and trace.z is not None:
        return _has_values(trace.z)
    if trace.type == "image":
        return trace.z is not None or bool(trace.source)
    present = [v for v in (getattr(trace, "x", None), getattr(trace, "y", None)) if v is not None]
    return bool(present) and all(_has_values(v) for v in present)


def _base_y(fig, y: str) -> str:
    """A secondary y axis (``overlaying``) belongs to the subplot of the axis it overlays."""
    try:
        overlay = fig.layout[_layout_key(y)].overlaying
    except (KeyError, ValueError):
        return y
    return overlay if overlay and overlay != "free" else y


def subplots(fig) -> list[Subplot]:
    """The subplots of a plotly figure (one per primary x axis and the y axis it is anchored to)."""
    xs, ys = _axes(fig, "x"), _axes(fig, "y")
    with_data = set()
    for trace in fig.data:
        if not hasattr(trace, "xaxis"):
            continue
        if _trace_has_data(trace):
            with_data.add((trace.xaxis or "x", _base_y(fig, trace.yaxis or "y")))
    out = []
    for x, axis in xs.items():
        if getattr(axis, "overlaying", None):
            continue
        y = axis.anchor if axis.anchor and axis.anchor != "free" else "y"
        if y not in ys:
            continue
        out.append(Subplot(x, y, _domain(axis), _domain(ys[y]), (x, y) in with_data))
    return out


def visible_subplots(fig) -> list[Subplot]:
    """The subplots drawn: those whose axes are not hidden."""
    return [s for s in subplots(fig) if fig.layout[_layout_key(s.x)].visible is not False]


def _key(domain: tuple[float, float]) -> tuple[float, float]:
    return (round(domain[0], 4), round(domain[1], 4))


def _respace(intervals: list[tuple[float, float]], keep: list[tuple[float, float]]) -> dict:
    """New domains for the ``keep`` intervals (sorted) spread over the span of ``intervals`` with
    the same gap between them as before."""
    intervals = sorted(intervals)
    gaps = [b[0] - a[1] for a, b in zip(intervals, intervals[1:])]
    gap = min(gaps) if gaps else 0.0
    lo, hi = intervals[0][0], intervals[-1][1]
    n = len(keep)
    size = (hi - lo - gap * (n - 1)) / n
    return {old: (lo + i * (size + gap), lo + i * (size + gap) + size) for i, old in enumerate(sorted(keep))}


def _drop_empty_facets(fig) -> None:
    """Remove facet rows and columns without data; hide the axes of single empty cells."""
    cells = subplots(fig)
    if len(cells) < 2:
        return
    rows = {_key(c.y_domain) for c in cells}
    cols = {_key(c.x_domain) for c in cells}
    keep_rows = {r for r in rows if any(c.has_data for c in cells if _key(c.y_domain) == r)}
    keep_cols = {k for k in cols if any(c.has_data for c in cells if _key(c.x_domain) == k)}
    if not keep_rows or not keep_cols:
        return
    new_rows = _respace(list(rows), list(keep_rows)) if keep_rows != rows else {r: r for r in rows}
    new_cols = _respace(list(cols), list(keep_cols)) if keep_cols != cols else {k: k for k in cols}
    if keep_rows != rows or keep_cols != cols:
        _move_facet_labels(fig, rows, cols, new_rows, new_cols)
    for cell in cells:
        xa, ya = fig.layout[_layout_key(cell.x)], fig.layout[_layout_key(cell.y)]
        r, k = _key(cell.y_domain), _key(cell.x_domain)
        if r not in keep_rows or k not in keep_cols:
            for axis in (xa, ya):
                axis.visible = False
            continue
        xa.domain, ya.domain = new_cols[k], new_rows[r]
        for overlay in _axes(fig, "y").values():
            if overlay.overlaying == cell.y:
                overlay.domain = new_rows[r]
        if not cell.has_data:
            xa.visible = ya.visible = False
    _restore_tick_labels(fig)


def _move_facet_labels(fig, rows, cols, new_rows, new_cols) -> None:
    """Facet labels (paper-anchored annotations without arrows) follow their row or column; those
    of a removed row or column go."""
    kept = []
    for a in fig.layout.annotations:
        if _is_shared(a) or a.showarrow is not False or a.xref != "paper" or a.yref != "paper":
            kept.append(a)
            continue
        if a.textangle == 90:  # a row label, centred on its row
            row = next((r for r in rows if abs((r[0] + r[1]) / 2 - a.y) < 1e-3), None)
            if row is not None:
                if row not in new_rows:
                    continue
                a.y = sum(new_rows[row]) / 2
        else:  # a column label, centred over its column
            col = next((k for k in cols if abs((k[0] + k[1]) / 2 - a.x) < 1e-3), None)
            if col is not None:
                if col not in new_cols:
                    continue
                a.x = sum(new_cols[col]) / 2
            row = next((r for r in rows if abs(r[1] - a.y) < 1e-3), None)  # wrapped facets: label on its row
            if row is not None and row in new_rows and a.y < 0.999:
                a.y = new_rows[row][1]
        kept.append(a)
    fig.layout.annotations = kept


def _restore_tick_labels(fig) -> None:
    """In each column the lowest cell with data shows x tick labels, in each row the leftmost one
    shows y tick labels, when the grid showed them on one cell only (shared facet axes); an axis
    that shares its range with no other (``matches`` unset, as after ``update_xaxes(matches=None)``)
    shows its own tick labels."""
    cells = [c for c in visible_subplots(fig) if c.has_data]
    if len(cells) > 1:
        for letter in ("x", "y"):
            axes = _axes(fig, letter)
            shared = {a.matches for a in axes.values() if a.matches} | {n for n, a in axes.items() if a.matches}
            for c in cells:
                name = getattr(c, letter)
                if name not in shared and axes[name].showticklabels is False:
                    axes[name].showticklabels = True
    for letter, line_of, order in (("x", lambda c: _key(c.x_domain), lambda c: c.y_domain[0]),
                                   ("y", lambda c: _key(c.y_domain), lambda c: c.x_domain[0])):
        groups: dict = {}
        for c in cells:
            groups.setdefault(line_of(c), []).append(c)
        for group in groups.values():
            axes = [fig.layout[_layout_key(getattr(c, letter))] for c in group]
            if any(a.showticklabels is not False for a in axes):
                continue
            first = min(group, key=order)
            fig.layout[_layout_key(getattr(first, letter))].showticklabels = True


# --------------------------------------------------------------------------------------------------
# plotly: axis titles


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


def _is_shared(annotation) -> bool:
    return (annotation.name or "").split(" ")[0] == SHARED


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


# --------------------------------------------------------------------------------------------------
# plotly: the whole figure


def _grid_shape(fig) -> tuple[int, int]:
    cells = visible_subplots(fig) or subplots(fig)
    return max(1, len({_key(c.y_domain) for c in cells})), max(1, len({_key(c.x_domain) for c in cells}))


def _facet_label_lines(fig, width: float) -> int:
    """Wrap column facet labels to their column's width; returns the most lines any of them has."""
    cells = visible_subplots(fig)
    margin = fig.layout.margin
    plot_w = width - (margin.l or 80) - (margin.r or 80)
    most = 0
    for a in fig.layout.annotations:
        if _is_shared(a) or a.showarrow is not False or a.textangle == 90 or a.yanchor != "bottom":
            continue
        col = next((c for c in cells if abs((c.x_domain[0] + c.x_domain[1]) / 2 - (a.x or 0)) < 1e-3), None)
        if col is None:
            continue
        chars = int((col.x_domain[1] - col.x_domain[0]) * plot_w / (CHAR_WIDTH * FONT_SIZE))
        text = re.sub(r"<br\s*/?>", " ", a.text or "")
        if len(visible_text(text)) > chars:
            a.text = "<br>".join(_wrap(text, chars))
        most = max(most, len(re.split(r"<br\s*/?>", a.text)))
    return most


def _mark_lone_points(fig) -> None:
    """A line trace with a single point draws nothing: give such traces markers."""
    for trace in fig.data:
        if trace.type not in ("scatter", "scattergl") or "markers" in (trace.mode or "lines"):
            continue
        y = pd.to_numeric(pd.Series(np.asarray(trace.y if trace.y is not None else [], dtype=object).ravel()),
                          errors="coerce")
        if int(np.isfinite(y.to_numpy(dtype=np.float64)).sum()) == 1:
            trace.mode = "lines+markers"


def _finish_plotly(fig, width, height):
    _drop_empty_facets(fig)
    _mark_lone_points(fig)
    rows, cols = _grid_shape(fig)
    width = int(width or fig.layout.width or min(MAX_WIDTH, max(MIN_WIDTH, 300 + PANEL_WIDTH * cols)))
    height = int(height or fig.layout.height or min(MAX_HEIGHT, max(MIN_HEIGHT, 170 + PANEL_HEIGHT * rows)))
    fig.update_layout(width=width, height=height)
    margin = fig.layout.margin
    for side, default in (("l", 80), ("r", 80), ("b", 80)):
        if getattr(margin, side) is None:
            setattr(margin, side, default)
    _shared_titles(fig, width, height)
    labels = _facet_label_lines(fig, width)
    size = fig.layout.title.font.size or TITLE_SIZE
    if fig.layout.title.text:
        fig.layout.title.text = wrap_title(fig.layout.title.text, width, size)
        fig.layout.title.update(yref="container", y=1 - TOP_PAD / height, yanchor="top")
        fig.layout.title.font.size = size
    title_px = sum(LINE_HEIGHT * s for _, s in title_lines(fig))
    margin.t = math.ceil(TOP_PAD + title_px + 14 + labels * LINE_HEIGHT * FONT_SIZE) if title_px else max(
        30, math.ceil(20 + labels * LINE_HEIGHT * FONT_SIZE))
    _separate_columns(fig, width)
    _separate_rows(fig, height)
    _place_shared_titles(fig)
    return fig


# --------------------------------------------------------------------------------------------------
# matplotlib


def _fit_text(text_artist, limit_px: float, renderer) -> None:
    """Wrap a matplotlib ``Text`` until its rendered width is within ``limit_px``."""
    text = text_artist.get_text()
    if not text or text_artist.get_window_extent(renderer).width <= limit_px:
        return
    flat = " ".join(text.split())
    text_artist.set_text(flat)
    chars = len(flat)
    while text_artist.get_window_extent(renderer).width > limit_px and chars > 8:
        chars = int(chars * 0.85)
        text_artist.set_text("\n".join(_wrap(flat, chars)))


def _finish_matplotlib(fig):
    for ax in list(fig.axes):
        if not ax.has_data() and ax.axison and not ax.texts and not ax.get_label() == "<colorbar>":
            fig.delaxes(ax)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    gridded = [ax for ax in axes if ax.get_subplotspec() is not None]
    if len(gridded) >= 2:
        for letter in ("x", "y"):
            labels = [getattr(ax, f"get_{letter}label")() for ax in gridded]
            if labels[0] and len(set(labels)) == 1:
                getattr(fig, f"sup{letter}label")(labels[0])
                for ax in gridded:
                    getattr(ax, f"set_{letter}label")("")
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()
    for ax in axes:
        limit = ax.get_window_extent(renderer).width
        for title in (ax.title, ax._left_title, ax._right_title):
            _fit_text(title, limit, renderer)
    if fig._suptitle is not None:
        _fit_text(fig._suptitle, 0.96 * fig.bbox.width, renderer)
    engine = fig.get_layout_engine()
    if engine is None or type(engine).__name__ == "TightLayoutEngine":
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# the figures the library draws


LOSS_CURVES = {"batch": "batch loss (each training batch)", "probe": "probe loss (fixed probe set)"}


def loss_curves(runs) -> pd.DataFrame:
    """The per-head loss curves of several fits in one long frame: ``model, subset, head, curve,
    step, progress, loss``. ``runs`` maps ``(model, subset)`` to a fit's result (``.history``) or its
    history frame. ``curve`` is ``"batch"`` for ``loss_<head>`` (every step) and ``"probe"`` for
    ``probe_loss_<head>`` (probe steps only; the NaN rows between probes are dropped). ``progress`` =
    step / steps of that run (as ``studies.stacked_histories``), so runs of different lengths share
    one x axis. Heads: every ``loss_<head>`` except the fused one, with a finite value in that run."""
    frames = []
    for (model, subset), result in runs.items():
        h = getattr(result, "history", result)
        progress = (h["step"] - h["step"].min() + 1) / len(h)
        heads = [c.removeprefix("loss_") for c in h if c.startswith("loss_") and c not in ("loss_fused", "loss_extra")]
        for head in heads:
            for curve, column in (("batch", f"loss_{head}"), ("probe", f"probe_loss_{head}")):
                if column not in h:
                    continue
                loss = pd.to_numeric(h[column], errors="coerce")
                keep = np.isfinite(loss.to_numpy(dtype=np.float64))
                if not keep.any():
                    continue
                frames.append(pd.DataFrame({"model": model, "subset": subset, "head": head, "curve": curve,
                                            "step": h["step"][keep], "progress": progress[keep],
                                            "loss": loss[keep]}))
    columns = ["model", "subset", "head", "curve", "step", "progress", "loss"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def oscillation_figure(runs, title: str):
    """Fig. 2a-c: the loss of every unimodal head of every run, one facet row per (model, head) that
    exists (a unimodal model has only its own head), coloured by training subset; the batch loss
    and, where the runs logged a probe (``TrainConfig.probe_every``), the probe loss in a column
    beside it. A plotly figure, laid out by ``finish``."""
    import plotly.express as px

    curves = loss_curves(runs)
    if curves.empty:
        raise ValueError("no run has a loss_<head> column with data")
    alone = curves["model"] == curves["head"]
    curves["run"] = np.where(alone, curves["model"] + " alone", curves["model"] + ": " + curves["head"] + " head")
    order = curves.assign(fused=~alone).drop_duplicates("run").sort_values(["head", "fused", "model"])
    panels = [LOSS_CURVES[c] for c in LOSS_CURVES if c in set(curves["curve"])]
    curves["panel"] = curves["curve"].map(LOSS_CURVES)
    fig = px.line(curves, x="progress", y="loss", color="subset", facet_row="run",
                  facet_col="panel" if len(panels) > 1 else None,
                  category_orders={"run": list(order["run"]), "panel": panels, "subset": ["all", "head", "tail"]},
                  labels={"progress": "fraction of training", "loss": "training MSE (standardised MD)",
                          "subset": "trained on"},
                  title=title)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_traces(line_width=1)
    fig.update_traces(mode="lines+markers", marker_size=3,
                      selector=lambda t: f"panel={LOSS_CURVES['probe']}" in (t.hovertemplate or ""))
    return finish(fig)


def compare_figure(results: pd.DataFrame, y_test: np.ndarray, y_train: np.ndarray, title: str, path: Path) -> Path:
    """Three panels: test R^2 per recipe and model (mean and SD over seeds), predicted vs true on
    the test split for the first seed, and the training label distribution (the long tail)."""
    label = results["recipe"] + np.where(results["model"].isin(["fusion"]), "", " [" + results["model"] + "]")
    results = results.assign(label=label)
    stats = results.groupby("label", sort=False)["test_r2"].agg(["mean", "std"]).fillna(0.0)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    ax.barh(stats.index[::-1], stats["mean"][::-1], xerr=stats["std"][::-1], color="#4c72b0")
    for i, v in enumerate(stats["mean"][::-1]):
        ax.text(v, i, f" {v:.3f}", va="center")
    ax.set_xlabel("test R$^2$ (mean $\\pm$ SD over seeds)")
    ax.set_title(f"test R$^2$, seeds {sorted(results['seed'].unique().tolist())}")
    ax = axes[1]
    first = results[results["seed"] == results["seed"].min()]
    for _, row in first.iterrows():
        ax.scatter(y_test, row["test_predictions"], s=8, alpha=0.5, label=row["label"])
    lo, hi = float(np.min(y_test)), float(np.max(y_test))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true label")
    ax.set_ylabel("prediction")
    ax.set_title(f"test predictions, seed {results['seed'].min()}")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.hist(y_train, bins=40, color="#8172b2")
    ax.set_xlabel("label")
    ax.set_ylabel("training samples")
    ax.set_title(f"training labels: median {np.median(y_train):.2f}")
    fig.suptitle(title)
    finish(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
