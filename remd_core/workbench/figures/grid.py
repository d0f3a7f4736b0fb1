"""The grid of a plotly figure's subplots: which exist, which hold data, and dropping the empty ones."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .text import SHARED


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

def _is_shared(annotation) -> bool:
    return (annotation.name or "").split(" ")[0] == SHARED
