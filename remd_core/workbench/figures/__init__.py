"""The one layout pass every figure of the workbench goes through (``layout.finish``), and the figures the
library draws (``library``). ``text``, ``grid`` and ``axes`` are the layout's parts.

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

from .axes import AxisTitle, axis_titles
from .grid import Subplot, subplots, visible_subplots
from .layout import finish
from .library import LOSS_CURVES, compare_figure, loss_curves, oscillation_figure
from .text import (AXIS_TITLE_SIZE, CHAR_WIDTH, FONT_SIZE, LINE_HEIGHT, TITLE_SIZE, title_chars, title_lines,
                   visible_text, wrap_title)

__all__ = ["AXIS_TITLE_SIZE", "CHAR_WIDTH", "FONT_SIZE", "LINE_HEIGHT", "LOSS_CURVES", "TITLE_SIZE", "AxisTitle",
           "Subplot", "axis_titles", "compare_figure", "finish", "loss_curves", "oscillation_figure", "subplots",
           "title_chars", "title_lines", "visible_subplots", "visible_text", "wrap_title"]
