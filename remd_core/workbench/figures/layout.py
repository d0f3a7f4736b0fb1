"""``finish``: the one layout pass of every figure (see the package docstring)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from .text import CHAR_WIDTH, FONT_SIZE, LINE_HEIGHT, MAX_HEIGHT, MAX_WIDTH, MIN_HEIGHT, MIN_WIDTH, PANEL_HEIGHT, PANEL_WIDTH, TITLE_SIZE, TOP_PAD, _wrap, title_lines, visible_text, wrap_title
from .grid import _drop_empty_facets, _key, subplots, visible_subplots
from .axes import _is_shared, _place_shared_titles, _separate_columns, _separate_rows, _shared_titles


def finish(fig, width: int | None = None, height: int | None = None):
    """Lay out ``fig`` (plotly or matplotlib) in place and return it; see the module docstring.
    ``width``/``height`` (plotly, px) override the figure's own size. Applying it twice changes
    nothing the first pass did not."""
    if hasattr(fig, "to_plotly_json"):
        return _finish_plotly(fig, width, height)
    if hasattr(fig, "savefig"):
        return _finish_matplotlib(fig)
    raise TypeError(f"finish() takes a plotly or matplotlib figure, not {type(fig).__name__}")


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
