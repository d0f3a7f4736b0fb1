"""The layout every figure goes through (``workbench.figures.finish``): properties, not pixels.

A title fits its canvas, no facet is drawn without data, facets that share an axis show its title
once, adjacent axis titles do not overlap, and the oscillation figure sets the probe loss beside the
batch loss. Plotly text widths are the helper's estimate (``CHAR_WIDTH``); matplotlib's are measured.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
import pytest  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from remd_core.workbench import figures  # noqa: E402
from remd_core.workbench.figures import (AXIS_TITLE_SIZE, LINE_HEIGHT, axis_titles, finish,  # noqa: E402
                                         oscillation_figure, subplots, title_chars, title_lines, visible_subplots)
from remd_core.workbench.record import save_figure  # noqa: E402
from remd_core.workbench.widgets import gamma_view, margin_view  # noqa: E402

SCALE = "profile smoke, seed 0, 1 epochs, resnet18 x0.125, 80 eyes"
LONG = f"Unimodal-head losses on all / head / tail data ({SCALE})"


def assert_title_fits(fig):
    width = fig.layout.width
    lines = title_lines(fig)
    assert lines, "the figure has a title"
    for text, size in lines:
        assert len(text) <= title_chars(width, size), f"{text!r} is longer than a {width} px canvas holds"
    top = figures.text.TOP_PAD + sum(LINE_HEIGHT * size for _, size in lines)
    assert fig.layout.margin.t >= top, "the top margin holds every title line"


def words(markup: str) -> list[str]:
    return figures.visible_text(markup.replace("<br>", " ")).split()


def oscillation_frame():
    """Per-step unimodal-head losses as ``studies.stacked_histories`` returns them: the fundus model
    has only its fundus head, the oct model only its oct head, MMPareto both."""
    rows = []
    for model, heads in (("fundus", ["fundus"]), ("oct", ["oct"]), ("mmpareto", ["fundus", "oct"])):
        for subset in ("all", "head", "tail"):
            for head in heads:
                for step in range(6):
                    rows.append({"model": model, "subset": subset, "head": head, "progress": (step + 1) / 6,
                                 "loss": 1 + 0.1 * np.sin(step)})
    return pd.DataFrame(rows)


def fit_history(heads, steps=12, probe_every=3, probes=True):
    """A fit's history: ``loss_fused`` and ``loss_<head>`` every step, ``probe_loss_<head>`` every
    ``probe_every`` steps and NaN between (``diagnosis.probe``)."""
    rng = np.random.default_rng(0)
    h = pd.DataFrame({"step": np.arange(steps), "epoch": 1, "loss_fused": rng.random(steps)})
    for head in heads:
        h[f"loss_{head}"] = rng.random(steps)
        if probes:
            h[f"probe_loss_{head}"] = np.where(np.arange(steps) % probe_every == 0, rng.random(steps), np.nan)
            h[f"probe_loss_{head}_head"] = h[f"probe_loss_{head}"] / 2
    return h


def subset_runs(probes=True):
    return {(model, subset): fit_history(heads, probes=probes)
            for model, heads in (("fundus", ["fundus"]), ("oct", ["oct"]), ("mmpareto", ["fundus", "oct"]))
            for subset in ("all", "head", "tail")}


# ---------------------------------------------------------------------------------------------- titles


@pytest.mark.parametrize("width", [None, 520, 1200])
def test_a_plotly_title_longer_than_the_canvas_is_wrapped_to_fit(width):
    fig = px.line(x=[0, 1], y=[1, 2], title=LONG + "<br><sup>full sweep outputs/sweep-fusion_fails: profile testbed, "
                                                   "12 epochs, seeds 0, 1, 2, and a long tail of words</sup>",
                  width=width)
    finish(fig)
    assert_title_fits(fig)
    assert words(fig.layout.title.text) == words(LONG + " full sweep outputs/sweep-fusion_fails: profile testbed, "
                                                        "12 epochs, seeds 0, 1, 2, and a long tail of words")
    assert title_lines(fig)[-1][1] < figures.TITLE_SIZE, "the subtitle stays small"


def test_a_short_title_is_left_alone():
    fig = finish(px.line(x=[0, 1], y=[1, 2], title="Loss slices"))
    assert fig.layout.title.text == "Loss slices" and len(title_lines(fig)) == 1


def test_notebook_01_oscillation_title_is_not_cut_at_the_canvas_edge():
    """The reported defect: at 700 px the title ended at "resnet18 x0"."""
    fig = px.line(oscillation_frame(), x="progress", y="loss", color="subset", facet_row="model",
                  facet_col="head", title=LONG, height=700)
    finish(fig)
    assert_title_fits(fig)
    assert "x0.125, 80 eyes)" in fig.layout.title.text


def test_matplotlib_titles_lie_within_the_figure_and_their_axes():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_title("a panel title far longer than the panel that it stands over, by some way")
    fig.suptitle(LONG + " " + LONG)
    finish(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for text in [fig._suptitle, *(ax.title for ax in axes)]:
        extent = text.get_window_extent(renderer)
        assert extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0 and extent.y1 <= box.y1
    for ax in axes:
        assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width + 1
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert all(suptitle.y0 >= ax.title.get_window_extent(renderer).y1 - 1 for ax in axes), "no overlap"
    plt.close(fig)


@pytest.mark.parametrize("view", ["margin", "gamma"])
def test_widget_views_go_through_the_helper(view):
    if view == "margin":
        fig, _, _ = margin_view(np.linspace(-2, 2, 16), 0.4, 0.0005, 100, 208, 208)
    else:
        fig, _ = gamma_view(np.abs(np.sin(np.arange(50))) + 0.5, 1.5, 0.5, 5.0, 5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        extent = ax.title.get_window_extent(renderer)
        assert extent.x0 >= fig.bbox.x0 and extent.x1 <= fig.bbox.x1
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- facets


def test_a_facet_grid_draws_no_facet_without_data():
    """Notebook 01's old grid (model x head): the fundus model has no oct head, the oct model no
    fundus head; those cells draw nothing, and each row and column keeps its tick labels."""
    fig = px.line(oscillation_frame(), x="progress", y="loss", color="subset", facet_row="model",
                  facet_col="head", title=LONG)
    assert any(not s.has_data for s in subplots(fig))
    finish(fig)
    drawn = visible_subplots(fig)
    assert drawn and all(s.has_data for s in drawn)
    assert len(drawn) == 4
    for s in drawn:  # a row shows y tick labels somewhere, a column x tick labels somewhere
        row = [c for c in drawn if c.y_domain == s.y_domain]
        col = [c for c in drawn if c.x_domain == s.x_domain]
        assert any(fig.layout[figures.grid._layout_key(c.y)].showticklabels is not False for c in row)
        assert any(fig.layout[figures.grid._layout_key(c.x)].showticklabels is not False for c in col)


def test_a_facet_column_without_data_is_removed_and_the_others_take_its_room():
    frame = oscillation_frame()
    fig = px.line(frame, x="progress", y="loss", color="subset", facet_col="head",
                  category_orders={"head": ["fundus", "oct", "no-such-head"]})
    assert len(subplots(fig)) == 3
    span = (min(s.x_domain[0] for s in subplots(fig)), max(s.x_domain[1] for s in subplots(fig)))
    finish(fig)
    drawn = visible_subplots(fig)
    assert len(drawn) == 2 and all(s.has_data for s in drawn)
    assert (min(s.x_domain[0] for s in drawn), max(s.x_domain[1] for s in drawn)) == pytest.approx(span)
    labels = [a.text for a in fig.layout.annotations if not figures.grid._is_shared(a)]
    assert labels == ["head=fundus", "head=oct"]


# ---------------------------------------------------------------------------------------------- axis titles


def outcome_figure(n_outcomes=4):
    """Notebook 06's outcome figure: one facet per outcome, one x title per facet before."""
    rows = [{"outcome": f"outcome {i}", "label": f"setting {j}", "diff": 0.01 * (i - j)}
            for i in range(n_outcomes) for j in range(3)]
    return px.scatter(pd.DataFrame(rows), x="diff", y="label", facet_col="outcome", facet_col_wrap=4,
                      labels={"diff": "difference in test R² (95 % paired interval)", "label": ""},
                      title="When does fusion fail?<br><sup>this run's sweep</sup>", width=1200)


def test_facets_that_share_an_x_axis_show_its_title_once():
    fig = outcome_figure()
    before = [t for t in axis_titles(fig) if t.letter == "x"]
    assert len(before) == 4
    finish(fig)
    x_titles = [t for t in axis_titles(fig) if t.letter == "x"]
    assert len(x_titles) == 1 and x_titles[0].shared
    assert x_titles[0].text == "difference in test R² (95 % paired interval)"
    assert len(x_titles[0].axes) == 4, "it stands for every facet of the row"
    (note,) = [a for a in fig.layout.annotations if figures.grid._is_shared(a)]
    xs = [s.x_domain for s in visible_subplots(fig)]
    assert note.x == pytest.approx((min(d[0] for d in xs) + max(d[1] for d in xs)) / 2), "centred under the row"
    assert fig.layout.margin.b >= -note.yshift + LINE_HEIGHT * AXIS_TITLE_SIZE, "inside the canvas"


def test_facets_that_share_a_y_axis_show_its_title_once():
    fig = px.line(oscillation_frame(), x="progress", y="loss", facet_row="model", color="subset",
                  labels={"loss": "training MSE (standardised MD)"})
    assert len([t for t in axis_titles(fig) if t.letter == "y"]) == 3
    finish(fig)
    y_titles = [t for t in axis_titles(fig) if t.letter == "y"]
    assert len(y_titles) == 1 and y_titles[0].shared
    assert [t for t in axis_titles(fig) if t.letter == "x"] and len(
        [t for t in axis_titles(fig) if t.letter == "x"]) == 1


def test_a_right_hand_axis_title_does_not_overlap_the_next_panels_y_title():
    """Notebook 03's gamma figure: a secondary y axis ("gamma_t") on the left panel beside the right
    panel's own y title ("gamma_t"); they were drawn on top of each other."""
    fig = make_subplots(rows=1, cols=2, specs=[[{"secondary_y": True}, {}]])
    fig.add_scatter(x=np.arange(50), y=np.linspace(0.4, 2, 50), row=1, col=1)
    fig.add_scatter(x=np.arange(50), y=np.linspace(0.5, 4.5, 50), row=1, col=1, secondary_y=True)
    fig.add_scatter(x=np.linspace(0.4, 2, 50), y=np.linspace(0.5, 4.5, 50), mode="markers", row=1, col=2)
    fig.update_yaxes(title_text="paper sharpness s_t", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="gamma_t", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="gamma_t", row=1, col=2)
    finish(fig)
    left, right = sorted(subplots(fig), key=lambda s: s.x_domain[0])
    plot_w = fig.layout.width - fig.layout.margin.l - fig.layout.margin.r
    gap_px = (right.x_domain[0] - left.x_domain[1]) * plot_w
    title_px = LINE_HEIGHT * AXIS_TITLE_SIZE
    tick_px = 3 * figures.CHAR_WIDTH * figures.FONT_SIZE  # "4.5", "0.5": at least three characters each
    assert gap_px >= 2 * (title_px + tick_px)


def test_facets_with_axes_of_their_own_show_their_ticks_clear_of_the_next_row():
    """Notebook 02's embeddings: facets with independent axes (``matches=None``) each show their
    tick labels, and the rows move apart so that a row's x tick labels do not run into the next."""
    frame = oscillation_frame().assign(progress=lambda f: f["progress"] * np.where(f["head"] == "oct", 10, 1))
    fig = px.scatter(frame, x="progress", y="loss", facet_row="head", facet_col="subset", height=650)
    fig.update_xaxes(matches=None)
    fig.update_yaxes(matches=None)
    finish(fig)
    cells = visible_subplots(fig)
    for c in cells:
        assert fig.layout[figures.grid._layout_key(c.x)].showticklabels is not False
        assert fig.layout[figures.grid._layout_key(c.y)].showticklabels is not False
    lower, upper = sorted({c.y_domain for c in cells})
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert (upper[0] - lower[1]) * plot_h >= LINE_HEIGHT * figures.FONT_SIZE


def test_axis_titles_that_differ_stay_on_their_axes():
    fig = make_subplots(rows=1, cols=2)
    fig.add_scatter(x=[0, 1], y=[0, 1], row=1, col=1)
    fig.add_scatter(x=[0, 1], y=[0, 1], row=1, col=2)
    fig.update_xaxes(title_text="iteration", row=1, col=1)
    fig.update_xaxes(title_text="sharpness", row=1, col=2)
    finish(fig)
    assert sorted((t.text, t.shared) for t in axis_titles(fig)) == [("iteration", False), ("sharpness", False)]


def test_matplotlib_panels_that_repeat_a_label_show_it_once_and_empty_panels_go():
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax in axes[:2]:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("fraction of training")
    axes[2].set_xlabel("fraction of training")  # an empty panel
    finish(fig)
    assert len(fig.axes) == 2
    assert all(ax.get_xlabel() == "" for ax in fig.axes)
    assert fig._supxlabel is not None and fig._supxlabel.get_text() == "fraction of training"
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- oscillation figure


def test_oscillation_figure_sets_probe_and_batch_losses_side_by_side():
    fig = oscillation_figure(subset_runs(), LONG)
    cells = visible_subplots(fig)
    assert all(s.has_data for s in cells) and len(cells) == len(subplots(fig))
    rows = sorted({s.y_domain for s in cells})
    cols = sorted({s.x_domain for s in cells})
    assert len(rows) == 4, "fundus alone, mmpareto: fundus head, oct alone, mmpareto: oct head"
    assert len(cols) == 2
    labels = {a.text for a in fig.layout.annotations if not figures.grid._is_shared(a)}
    assert {figures.LOSS_CURVES["batch"], figures.LOSS_CURVES["probe"]} <= labels
    assert {"fundus alone", "oct alone", "mmpareto: fundus head", "mmpareto: oct head"} <= labels
    batch_axes = {s.x for s in cells if s.x_domain == cols[0]}
    probe_axes = {s.x for s in cells if s.x_domain == cols[1]}
    for trace in fig.data:
        n = len(trace.x)
        if trace.xaxis in batch_axes:
            assert n == 12, "a batch-loss point for every step"
        else:
            assert trace.xaxis in probe_axes and n == 4, "a probe-loss point every 3 steps, no NaN rows"
    assert_title_fits(fig)
    assert [t.text for t in axis_titles(fig) if t.letter == "x"] == ["fraction of training"]
    assert [t.text for t in axis_titles(fig) if t.letter == "y"] == ["training MSE (standardised MD)"]


def test_oscillation_figure_without_probes_has_one_column():
    fig = oscillation_figure(subset_runs(probes=False), LONG)
    assert len({s.x_domain for s in visible_subplots(fig)}) == 1
    assert len({s.y_domain for s in visible_subplots(fig)}) == 4


def test_loss_curves_keep_only_the_heads_a_run_has():
    runs = {("fundus", "all"): fit_history(["fundus"]).assign(loss_oct=np.nan, probe_loss_oct=np.nan)}
    curves = figures.loss_curves(runs)
    assert set(curves["head"]) == {"fundus"} and set(curves["curve"]) == {"batch", "probe"}
    assert curves["loss"].notna().all()


# ---------------------------------------------------------------------------------------------- the helper itself


def test_finish_twice_changes_nothing_the_first_pass_did_not():
    fig = outcome_figure()
    once = finish(fig).to_plotly_json()
    twice = finish(fig).to_plotly_json()
    assert once["layout"] == twice["layout"]


def test_finish_sets_a_size_that_grows_with_the_facets():
    one = finish(px.line(x=[0, 1], y=[0, 1]))
    four = finish(outcome_figure())
    assert one.layout.width and one.layout.height
    many = finish(px.line(oscillation_frame(), x="progress", y="loss", facet_row="model"))
    assert many.layout.height > one.layout.height
    assert four.layout.width == 1200, "a size the caller set is kept"


def test_save_figure_saves_the_laid_out_figure(tmp_path):
    fig = px.line(x=[0, 1], y=[1, 2], title=LONG)
    png, html = save_figure(fig, "long", tmp_path)
    assert "<br>" in fig.layout.title.text, "the figure shown after saving is the one saved"
    assert png.exists() and html.exists()


def test_finish_refuses_what_is_not_a_figure():
    with pytest.raises(TypeError):
        finish("not a figure")
